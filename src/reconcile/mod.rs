//! The routing reconciler (`serve --reconcile-routing`): keeps every Memgraph HA cluster's
//! routing table external by itself, as the cluster changes (a LoadBalancer IP that arrives
//! late, scale-out, a Node that goes away, failover).
//!
//! Shell around `pass` (one cluster, pure decisions from the webhook's code) and `store`
//! (the watches): leader election on a Lease, a debounced queue of namespaces, a periodic
//! resync, and one task per cluster so that one cluster's failure never blocks another's.

mod pass;
pub mod store;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::decision::Config;
use crate::metrics::{Metrics, ReconcileLabels, ReconcileResult, RegistrationLabels};
use crate::report::Reporter;
pub use pass::{FAILED, PENDING, REFUSED, UPDATED};
use store::{Scope, Signal, Store};

/// How the reconciler reaches Memgraph over Bolt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BoltTls {
    /// Plain Bolt.
    Off,
    /// Bolt over TLS, the server verified against --reconcile-bolt-ca (or the system roots)
    /// under the name `<statefulset>.<namespace>.svc.cluster.local`.
    Verify,
    /// Bolt over TLS without verifying the server (self-signed certificates).
    SkipVerify,
}

#[derive(Args, Debug, Clone)]
pub struct ReconcileArgs {
    /// Keep the routing table of every Memgraph HA cluster external (3.8+: UPDATE CONFIG on
    /// the leader; older versions: Events saying what to run). Only the replica holding the
    /// Lease writes to Memgraph.
    #[arg(long, env = "MAI_RECONCILE_ROUTING")]
    pub reconcile_routing: bool,
    /// A full pass over every cluster this often, as a backstop for missed changes.
    #[arg(long, env = "MAI_RECONCILE_RESYNC_SECONDS", default_value_t = 300)]
    pub reconcile_resync_seconds: u64,
    /// Changes within this window are reconciled together.
    #[arg(long, env = "MAI_RECONCILE_DEBOUNCE_MS", default_value_t = 200)]
    pub reconcile_debounce_ms: u64,
    /// Time allowed for one pass over one cluster.
    #[arg(long, env = "MAI_RECONCILE_PASS_TIMEOUT_SECONDS", default_value_t = 30)]
    pub reconcile_pass_timeout_seconds: u64,
    /// The coordination.k8s.io Lease that elects the writer, in --reconcile-lease-namespace.
    #[arg(
        long,
        env = "MAI_RECONCILE_LEASE",
        default_value = "memgraph-address-injector-routing"
    )]
    pub reconcile_lease: String,
    /// The webhook's own namespace (the Deployment sets POD_NAMESPACE from the downward API).
    #[arg(
        long,
        env = "POD_NAMESPACE",
        default_value = "memgraph-address-injector"
    )]
    pub reconcile_lease_namespace: String,
    /// Seconds a Lease stays held without renewal: another replica takes over after it.
    #[arg(long, env = "MAI_RECONCILE_LEASE_SECONDS", default_value_t = 15)]
    pub reconcile_lease_seconds: u64,
    /// Memgraph user for Bolt (optional: Memgraph without authentication needs none).
    #[arg(long, env = "MAI_RECONCILE_BOLT_USER")]
    pub reconcile_bolt_user: Option<String>,
    /// File with the password (a Secret volume); read on every pass.
    #[arg(long, env = "MAI_RECONCILE_BOLT_PASSWORD_FILE")]
    pub reconcile_bolt_password_file: Option<PathBuf>,
    /// Bolt over TLS towards the coordinators.
    #[arg(
        long,
        env = "MAI_RECONCILE_BOLT_TLS",
        value_enum,
        default_value = "off"
    )]
    pub reconcile_bolt_tls: BoltTls,
    /// CA bundle that signed the coordinators' Bolt certificates (with --reconcile-bolt-tls verify).
    #[arg(long, env = "MAI_RECONCILE_BOLT_CA")]
    pub reconcile_bolt_ca: Option<PathBuf>,
    /// Budget of each Bolt step.
    #[arg(long, env = "MAI_RECONCILE_BOLT_TIMEOUT_MS", default_value_t = 5000)]
    pub reconcile_bolt_timeout_ms: u64,
    /// Replication port of data instances, for the statements reported on 3.0–3.7.
    #[arg(long, env = "MAI_REPLICATION_PORT", default_value_t = 20000)]
    pub reconcile_replication_port: u16,
    /// The namespaces of the Memgraph HA releases the reconciler serves (comma-separated):
    /// it sends Bolt credentials only to coordinator pods of StatefulSets in these.
    /// Required with --reconcile-routing.
    #[arg(long, env = "MAI_RECONCILE_NAMESPACES", value_delimiter = ',')]
    pub reconcile_namespaces: Vec<String>,
    /// Only pods with these labels are served (a kubectl-style label selector, e.g.
    /// `app.kubernetes.io/instance=memgraph-ha`); empty: every Memgraph HA pod.
    #[arg(long, env = "MAI_RECONCILE_POD_SELECTOR", default_value = "", value_parser = clap::value_parser!(crate::decision::nodes::NodeSelector))]
    pub reconcile_pod_selector: crate::decision::nodes::NodeSelector,
    /// Send Bolt credentials over plain Bolt or TLS without verification
    /// (--reconcile-bolt-tls off or skip-verify). Without it such a setup is refused at start.
    #[arg(long, env = "MAI_RECONCILE_ALLOW_INSECURE_CREDENTIALS")]
    pub reconcile_allow_insecure_credentials: bool,
    /// Passes running at once, over all clusters (each holds Bolt connections and a copy of
    /// its namespace's objects).
    #[arg(long, env = "MAI_RECONCILE_MAX_PASSES", default_value_t = 4)]
    pub reconcile_max_passes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("--reconcile-bolt-ca is set but --reconcile-bolt-tls is not verify")]
    CaWithoutVerify,
    #[error("--reconcile-routing needs --reconcile-namespaces (MAI_RECONCILE_NAMESPACES; Helm: routing.reconcile.namespaces): the namespaces of the Memgraph releases it may send Bolt credentials to")]
    NoNamespaces,
    #[error("{0:?} in --reconcile-namespaces is not a namespace name")]
    BadNamespace(String),
    #[error("--reconcile-bolt-user with --reconcile-bolt-tls {tls} would send the password without verifying the server; use --reconcile-bolt-tls verify (with --reconcile-bolt-ca), or opt in with --reconcile-allow-insecure-credentials")]
    InsecureCredentials { tls: &'static str },
    #[error("--reconcile-max-passes must be at least 1")]
    NoPasses,
    #[error(transparent)]
    Tls(#[from] crate::routing::tls::TlsError),
    #[error("cannot set up the Lease {namespace}/{name}: {message}")]
    Lease {
        namespace: String,
        name: String,
        message: String,
    },
}

/// The running reconciler; `stop` hands the Lease over at shutdown.
pub struct Reconciler {
    stop: tokio::sync::oneshot::Sender<()>,
    lease: tokio::task::JoinHandle<
        Result<kube_lease_manager::LeaseManager, kube_lease_manager::LeaseManagerError>,
    >,
    looping: tokio::task::JoinHandle<()>,
}

impl Reconciler {
    /// Stops writing and releases the Lease, so another replica takes over at once instead
    /// of after the Lease runs out (the pod is being deleted: nothing should wait 15 s).
    pub async fn stop(self, budget: Duration) {
        let _ = self.stop.send(());
        let released = tokio::time::timeout(budget, async {
            let _ = self.looping.await;
            self.lease.await
        })
        .await;
        match released {
            Ok(Ok(Ok(_))) => tracing::info!("routing reconciler stopped; Lease released"),
            Ok(Ok(Err(err))) => {
                tracing::warn!(error = %err, "routing reconciler stopped; the Lease could not be released and runs out by itself")
            }
            Ok(Err(_)) | Err(_) => {
                tracing::warn!("routing reconciler stopped; the Lease runs out by itself")
            }
        }
    }
}

/// A reconciler whose settings are checked and whose store exists, before any watch runs:
/// the webhook's Service and Node watches feed the store through `taps`.
pub struct Prepared {
    settings: Arc<pass::Settings>,
    store: Store,
    signals: mpsc::UnboundedReceiver<Signal>,
}

impl Prepared {
    /// The reconciler's share of the webhook's watches (one watch per kind).
    pub fn taps(&self) -> crate::cluster::Taps {
        let (services, nodes, proxies) =
            (self.store.clone(), self.store.clone(), self.store.clone());
        crate::cluster::Taps {
            services: Some(Box::new(move |e| services.service_event(e))),
            nodes: Some(Box::new(move |e| nodes.node_event(e))),
            proxies: Some(std::sync::Arc::new(move || proxies.proxy_event())),
        }
    }

    /// The webhook's watched view: each pass reads the proxies from it.
    pub fn attach(&self, cluster: &crate::cluster::SharedCluster) {
        self.store.attach(cluster.clone());
    }
}

/// Checks the flags and builds the store; refuses a setup that would send credentials
/// where they must not go.
pub fn prepare(args: &ReconcileArgs, decision: &Config) -> Result<Prepared, ReconcileError> {
    use crate::routing::uri::Security;
    let (security, ca) = match (args.reconcile_bolt_tls, &args.reconcile_bolt_ca) {
        (BoltTls::Off, None) => (Security::Plain, None),
        (BoltTls::Off | BoltTls::SkipVerify, Some(_)) => {
            return Err(ReconcileError::CaWithoutVerify)
        }
        (BoltTls::Verify, ca) => (Security::Verified, ca.as_deref()),
        (BoltTls::SkipVerify, None) => (Security::SelfSigned, None),
    };
    if args.reconcile_bolt_user.is_some() && !args.reconcile_allow_insecure_credentials {
        match args.reconcile_bolt_tls {
            BoltTls::Off => return Err(ReconcileError::InsecureCredentials { tls: "off" }),
            BoltTls::SkipVerify => {
                return Err(ReconcileError::InsecureCredentials { tls: "skip-verify" })
            }
            BoltTls::Verify => {}
        }
    }
    let namespaces: BTreeSet<String> = args
        .reconcile_namespaces
        .iter()
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .collect();
    if namespaces.is_empty() {
        return Err(ReconcileError::NoNamespaces);
    }
    if let Some(bad) = namespaces.iter().find(|n| !is_namespace_name(n)) {
        return Err(ReconcileError::BadNamespace(bad.clone()));
    }
    if args.reconcile_max_passes == 0 {
        return Err(ReconcileError::NoPasses);
    }
    let transport = crate::routing::tls::transport(security, ca, "--reconcile-bolt-tls")?;
    let settings = Arc::new(pass::Settings {
        decision: decision.clone(),
        user: args.reconcile_bolt_user.clone(),
        password_file: args.reconcile_bolt_password_file.clone(),
        transport,
        timeout: Duration::from_millis(args.reconcile_bolt_timeout_ms),
        replication_port: args.reconcile_replication_port,
    });
    let (store, signals) = Store::new(
        decision.recognition.clone(),
        Scope {
            namespaces,
            pod_selector: args.reconcile_pod_selector.clone(),
        },
    );
    Ok(Prepared {
        settings,
        store,
        signals,
    })
}

/// Starts the reconciler in the background: the pod watches, the Lease and the loop.
pub async fn start(
    client: kube::Client,
    prepared: Prepared,
    args: &ReconcileArgs,
    identity: &str,
    metrics: Arc<Metrics>,
    reporter: Reporter,
) -> Result<Reconciler, ReconcileError> {
    let Prepared {
        settings,
        store,
        signals,
    } = prepared;
    let lease_seconds = args.reconcile_lease_seconds.max(3);
    let manager =
        kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &args.reconcile_lease)
            .with_namespace(&args.reconcile_lease_namespace)
            .with_identity(identity)
            .with_duration(lease_seconds)
            .with_grace((lease_seconds / 3).max(1))
            .build()
            .await
            .map_err(|e| ReconcileError::Lease {
                namespace: args.reconcile_lease_namespace.clone(),
                name: args.reconcile_lease.clone(),
                message: e.to_string(),
            })?;
    let (leader, lease) = manager.watch().await;

    store.watch_pods(client.clone());
    tracing::info!(identity, lease = %args.reconcile_lease, "routing reconciler started; waiting for the Lease and for Pods, Services and Nodes to list");
    let timing = Timing {
        debounce: Duration::from_millis(args.reconcile_debounce_ms),
        resync: Duration::from_secs(args.reconcile_resync_seconds.max(1)),
        pass_budget: Duration::from_secs(args.reconcile_pass_timeout_seconds.max(1)),
        max_passes: args.reconcile_max_passes.max(1),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let shared = Shared {
        settings,
        metrics,
        reporter,
        timing,
        client,
    };
    let looping = tokio::spawn(run_loop(store, signals, leader, shared, stopped));
    Ok(Reconciler {
        stop,
        lease,
        looping,
    })
}

/// What every pass of the loop shares.
struct Shared {
    settings: Arc<pass::Settings>,
    metrics: Arc<Metrics>,
    reporter: Reporter,
    timing: Timing,
    client: kube::Client,
}

#[derive(Clone, Copy)]
struct Timing {
    debounce: Duration,
    resync: Duration,
    pass_budget: Duration,
    max_passes: usize,
}

/// A namespace waiting for a pass: when its first unhandled change came (for the
/// change → corrected table histogram) and its last (for the debounce).
#[derive(Clone, Copy, Debug)]
struct Dirty {
    first: Instant,
    last: Instant,
}

async fn run_loop(
    store: Store,
    mut signals: mpsc::UnboundedReceiver<Signal>,
    mut leader: tokio::sync::watch::Receiver<bool>,
    shared: Shared,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let Shared {
        settings,
        metrics,
        reporter,
        timing,
        client,
    } = shared;
    let mut dirty: HashMap<String, Dirty> = HashMap::new();
    // Namespaces with a pass running, by the pass's task, so that a pass that panics still
    // frees its namespace (and is retried).
    let mut running: HashMap<tokio::task::Id, (String, Dirty)> = HashMap::new();
    let mut failures: HashMap<String, u32> = HashMap::new();
    // Namespaces whose metric series exist, to remove them when the cluster goes away.
    let mut reported: BTreeSet<String> = BTreeSet::new();
    let mut passes: JoinSet<(String, Dirty, pass::Outcome, Duration)> = JoinSet::new();
    let mut resync = tokio::time::interval(timing.resync);
    let mut is_leader = *leader.borrow();
    metrics
        .instruments()
        .routing_leader
        .set(i64::from(is_leader));
    // Pods created before the webhook was installed carry no label: one full list now.
    let lister = store.clone();
    let list_client = client.clone();
    let mut listing = Some(tokio::spawn(async move {
        lister.list_unlabelled(&list_client).await
    }));
    let mark = |dirty: &mut HashMap<String, Dirty>, ns: String| {
        let now = Instant::now();
        dirty
            .entry(ns)
            .and_modify(|d| d.last = now)
            .or_insert(Dirty {
                first: now,
                last: now,
            });
    };
    loop {
        let busy: BTreeSet<&String> = running.values().map(|(ns, _)| ns).collect();
        // The next namespace whose changes have settled; none before every watch listed.
        let due = dirty
            .iter()
            .filter(|(ns, _)| !busy.contains(ns))
            .map(|(_, d)| d.last + timing.debounce)
            .min()
            .filter(|_| running.len() < timing.max_passes && store.is_synced());
        drop(busy);
        let sleep = async {
            match due {
                Some(at) if is_leader => tokio::time::sleep_until(at.into()).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            // Shutdown: returning drops the Lease receiver, which releases the Lease.
            _ = &mut stopped => {
                passes.abort_all();
                metrics.instruments().routing_leader.set(0);
                return;
            }
            signal = signals.recv() => match signal {
                Some(Signal::Namespace(ns)) => mark(&mut dirty, ns),
                Some(Signal::AllNamespaces) => {
                    for ns in store.memgraph_namespaces() {
                        mark(&mut dirty, ns);
                    }
                    forget_gone(&metrics, &store, &mut reported, &mut failures, &mut dirty);
                }
                None => return,
            },
            _ = resync.tick() => {
                if listing.as_ref().is_none_or(|l| l.is_finished()) {
                    let (lister, list_client) = (store.clone(), client.clone());
                    listing = Some(tokio::spawn(async move {
                        lister.list_unlabelled(&list_client).await
                    }));
                }
                for ns in store.memgraph_namespaces() {
                    mark(&mut dirty, ns);
                }
                forget_gone(&metrics, &store, &mut reported, &mut failures, &mut dirty);
            }
            changed = leader.changed() => {
                if changed.is_err() {
                    return;
                }
                is_leader = *leader.borrow();
                metrics.instruments().routing_leader.set(i64::from(is_leader));
                tracing::info!(leader = is_leader, "routing reconciler Lease changed");
                if is_leader {
                    for ns in store.memgraph_namespaces() {
                        mark(&mut dirty, ns);
                    }
                } else if !passes.is_empty() {
                    // Another replica may write now: stop at once (each pass also checks
                    // the claim before every write). The namespaces are retried if the
                    // Lease comes back.
                    tracing::warn!(passes = passes.len(), "the Lease was lost; aborting the running passes");
                    passes.abort_all();
                }
            }
            () = sleep => {
                let now = Instant::now();
                let busy: BTreeSet<String> = running.values().map(|(ns, _)| ns.clone()).collect();
                let mut ready: Vec<(Instant, String)> = dirty
                    .iter()
                    .filter(|(ns, d)| !busy.contains(*ns) && d.last + timing.debounce <= now)
                    .map(|(ns, d)| (d.first, ns.clone()))
                    .collect();
                // The longest-waiting first, as many as the cap allows.
                ready.sort();
                for (_, ns) in ready.into_iter().take(timing.max_passes.saturating_sub(running.len())) {
                    let Some(mark) = dirty.remove(&ns) else { continue };
                    let snapshot = store.snapshot(&ns);
                    let (settings, reporter, claim) = (settings.clone(), reporter.clone(), leader.clone());
                    let task_ns = ns.clone();
                    let handle = passes.spawn(async move {
                        let (outcome, took) = pass::bounded(&task_ns, &snapshot, &settings, &reporter, timing.pass_budget, &claim).await;
                        (task_ns, mark, outcome, took)
                    });
                    running.insert(handle.id(), (ns, mark));
                }
            }
            Some(done) = passes.join_next_with_id(), if !passes.is_empty() => {
                let (ns, mark, outcome) = match done {
                    Ok((id, (ns, mark, outcome, took))) => {
                        running.remove(&id);
                        record(&metrics, &ns, mark, &outcome, took);
                        reported.insert(ns.clone());
                        (ns, mark, Some(outcome))
                    }
                    Err(err) => {
                        let Some((ns, mark)) = running.remove(&err.id()) else { continue };
                        if err.is_panic() {
                            tracing::error!(namespace = %ns, "a reconcile pass panicked (a bug: please report it with this log); retrying with backoff");
                        }
                        (ns, mark, None)
                    }
                };
                // An aborted pass (the Lease was lost, or shutdown) is redone by the next
                // leader's full pass; nothing to schedule here.
                if outcome.is_none() && !is_leader {
                    continue;
                }
                // A failure (unreachable, refused credentials, a panic, ...) is retried with
                // backoff (1 s doubling, at most the resync period); a change comes sooner
                // anyway. Ok and Pending wait for the next change: nothing would differ.
                if outcome.as_ref().is_some_and(|o| matches!(o.result, ReconcileResult::Ok | ReconcileResult::Pending)) {
                    failures.remove(&ns);
                } else {
                    let attempts = failures.entry(ns.clone()).or_insert(0u32);
                    *attempts = attempts.saturating_add(1);
                    let backoff = Duration::from_secs(1u64 << (*attempts - 1).min(16)).min(timing.resync);
                    let due = Instant::now() + backoff;
                    dirty
                        .entry(ns)
                        .and_modify(|d| d.first = d.first.min(mark.first))
                        .or_insert(Dirty { first: mark.first, last: due });
                }
            }
        }
    }
}

/// A cluster that went away (no Memgraph pod left in its namespace): its metric series and
/// retry state are removed, so that dashboards do not show a cluster that is gone.
fn forget_gone(
    metrics: &Metrics,
    store: &Store,
    reported: &mut BTreeSet<String>,
    failures: &mut HashMap<String, u32>,
    dirty: &mut HashMap<String, Dirty>,
) {
    if !store.is_synced() {
        return;
    }
    let present = store.memgraph_namespaces();
    let gone: Vec<String> = reported.difference(&present).cloned().collect();
    for ns in gone {
        metrics.forget_routing_namespace(&ns);
        reported.remove(&ns);
        failures.remove(&ns);
        dirty.remove(&ns);
        tracing::info!(namespace = %ns, "no Memgraph HA pods left; its routing metrics are removed");
    }
}

/// A namespace name as the API server accepts one (an RFC 1123 label).
fn is_namespace_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn record(
    metrics: &Metrics,
    namespace: &str,
    mark: Dirty,
    outcome: &pass::Outcome,
    took: Duration,
) {
    let m = metrics.instruments();
    m.routing_reconciles
        .get_or_create(&ReconcileLabels {
            namespace: namespace.to_string(),
            result: outcome.result,
        })
        .inc();
    for (state, n) in &outcome.registrations {
        m.routing_registrations
            .get_or_create(&RegistrationLabels {
                namespace: namespace.to_string(),
                state: *state,
            })
            .set(i64::try_from(*n).unwrap_or(i64::MAX));
    }
    if outcome.result == ReconcileResult::Ok {
        m.routing_last_success
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(namespace.to_string(), Instant::now());
        if outcome.updated > 0 {
            m.routing_correction_duration
                .observe(mark.first.elapsed().as_secs_f64());
        }
    }
    tracing::info!(
        namespace,
        result = outcome.result.as_str(),
        updated = outcome.updated,
        took_ms = took.as_millis() as u64,
        since_change_ms = mark.first.elapsed().as_millis() as u64,
        "{}",
        outcome.summary
    );
}
