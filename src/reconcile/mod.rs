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
use store::{Signal, Store};

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
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("--reconcile-bolt-ca is set but --reconcile-bolt-tls is not verify")]
    CaWithoutVerify,
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

/// Starts the reconciler in the background: the watches, the Lease and the loop.
pub async fn start(
    client: kube::Client,
    args: &ReconcileArgs,
    identity: &str,
    decision: Config,
    metrics: Arc<Metrics>,
    reporter: Reporter,
) -> Result<Reconciler, ReconcileError> {
    use crate::routing::uri::Security;
    let (security, ca) = match (args.reconcile_bolt_tls, &args.reconcile_bolt_ca) {
        (BoltTls::Off, None) => (Security::Plain, None),
        (BoltTls::Off | BoltTls::SkipVerify, Some(_)) => {
            return Err(ReconcileError::CaWithoutVerify)
        }
        (BoltTls::Verify, ca) => (Security::Verified, ca.as_deref()),
        (BoltTls::SkipVerify, None) => (Security::SelfSigned, None),
    };
    let transport = crate::routing::tls::transport(security, ca, "--reconcile-bolt-tls")?;
    let settings = Arc::new(pass::Settings {
        decision: decision.clone(),
        user: args.reconcile_bolt_user.clone(),
        password_file: args.reconcile_bolt_password_file.clone(),
        transport,
        timeout: Duration::from_millis(args.reconcile_bolt_timeout_ms),
        replication_port: args.reconcile_replication_port,
    });

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

    let store = Store::new(decision.recognition.clone());
    let (tx, rx) = mpsc::unbounded_channel();
    store.watch(client, tx);
    tracing::info!(identity, lease = %args.reconcile_lease, "routing reconciler started; waiting for the Lease");
    let timing = Timing {
        debounce: Duration::from_millis(args.reconcile_debounce_ms),
        resync: Duration::from_secs(args.reconcile_resync_seconds.max(1)),
        pass_budget: Duration::from_secs(args.reconcile_pass_timeout_seconds.max(1)),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let shared = Shared {
        settings,
        metrics,
        reporter,
        timing,
    };
    let looping = tokio::spawn(run_loop(store, rx, leader, shared, stopped));
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
}

#[derive(Clone, Copy)]
struct Timing {
    debounce: Duration,
    resync: Duration,
    pass_budget: Duration,
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
    } = shared;
    let mut dirty: HashMap<String, Dirty> = HashMap::new();
    let mut running: BTreeSet<String> = BTreeSet::new();
    let mut failures: HashMap<String, u32> = HashMap::new();
    let mut passes: JoinSet<(String, Dirty, pass::Outcome, Duration)> = JoinSet::new();
    let mut resync = tokio::time::interval(timing.resync);
    let mut is_leader = *leader.borrow();
    metrics
        .instruments()
        .routing_leader
        .set(i64::from(is_leader));
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
        // The next namespace whose changes have settled.
        let due = dirty
            .iter()
            .filter(|(ns, _)| !running.contains(*ns))
            .map(|(_, d)| d.last + timing.debounce)
            .min();
        let sleep = async {
            match due {
                Some(at) if is_leader => tokio::time::sleep_until(at.into()).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            // Shutdown: returning drops the Lease receiver, which releases the Lease.
            _ = &mut stopped => {
                metrics.instruments().routing_leader.set(0);
                return;
            }
            signal = signals.recv() => match signal {
                Some(Signal::Namespace(ns)) => mark(&mut dirty, ns),
                Some(Signal::AllNamespaces) => {
                    for ns in store.memgraph_namespaces() {
                        mark(&mut dirty, ns);
                    }
                }
                None => return,
            },
            _ = resync.tick() => {
                for ns in store.memgraph_namespaces() {
                    mark(&mut dirty, ns);
                }
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
                }
            }
            () = sleep => {
                let now = Instant::now();
                let ready: Vec<String> = dirty
                    .iter()
                    .filter(|(ns, d)| !running.contains(*ns) && d.last + timing.debounce <= now)
                    .map(|(ns, _)| ns.clone())
                    .collect();
                for ns in ready {
                    let Some(mark) = dirty.remove(&ns) else { continue };
                    running.insert(ns.clone());
                    let snapshot = store.snapshot(&ns);
                    let (settings, reporter) = (settings.clone(), reporter.clone());
                    passes.spawn(async move {
                        let (outcome, took) = pass::bounded(&ns, &snapshot, &settings, &reporter, timing.pass_budget).await;
                        (ns, mark, outcome, took)
                    });
                }
            }
            Some(done) = passes.join_next(), if !passes.is_empty() => {
                let Ok((ns, mark, outcome, took)) = done else {
                    tracing::error!("a reconcile pass panicked (a bug: please report it with this log)");
                    continue;
                };
                running.remove(&ns);
                record(&metrics, &ns, mark, &outcome, took);
                // A failure (unreachable, refused credentials, ...) is retried with backoff
                // (1 s doubling, at most the resync period); a change comes sooner anyway.
                // Ok and Pending wait for the next change: nothing would differ before it.
                if matches!(outcome.result, ReconcileResult::Ok | ReconcileResult::Pending) {
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
