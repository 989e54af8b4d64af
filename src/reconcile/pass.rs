//! One reconcile of one Memgraph HA cluster (a namespace's coordinators and data instances):
//! connect to a coordinator by its in-cluster address (the pod IP; never an external one, so
//! credentials never leave the cluster network), read `SHOW INSTANCES` and the version,
//! decide each instance's address with the webhook's own code (`routing::desired_addresses`),
//! and on 3.8+ run `UPDATE CONFIG` on the leader for each mismatch, then read back to verify.
//! On 2.x and 3.0–3.7 it never writes: it says what to run. Every change or failure becomes
//! an Event on the instance's pod.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use memgraph_bolt::client::{
    BoltAddress, BoltError, ConnectOptions, Connection, Credentials, Transport,
};

use super::store::{memgraph_facts, Snapshot};
use crate::decision::pod::Role;
use crate::decision::Config;
use crate::metrics::{ReconcileResult, RegistrationState};
use crate::report::{cut, Notice, ObjectRef, Reporter};
use crate::routing::plan::{self, Desired, Instance, Mode, PlanError};
use crate::routing::resolve::{controlling_statefulset, tls_name, RoutingCluster, Target};
use crate::routing::{desired_addresses, show_instances, target_of, RoutingError};

/// Event reasons of the reconciler.
pub const UPDATED: &str = "RoutingAddressUpdated";
pub const PENDING: &str = "RoutingAddressPending";
pub const FAILED: &str = "RoutingUpdateFailed";
pub const REFUSED: &str = "RoutingAddressRefused";

/// How the reconciler reaches Memgraph.
#[derive(Clone, Debug)]
pub struct Settings {
    pub decision: Config,
    pub user: Option<String>,
    /// Read on every pass, so a rotated Secret is picked up.
    pub password_file: Option<PathBuf>,
    pub transport: Transport,
    pub timeout: Duration,
    /// For the statements printed for 3.0–3.7.
    pub replication_port: u16,
}

/// What one pass found and did.
#[derive(Debug)]
pub struct Outcome {
    pub result: ReconcileResult,
    pub registrations: Vec<(RegistrationState, usize)>,
    /// Registrations changed and verified.
    pub updated: usize,
    /// One line for the log.
    pub summary: String,
}

impl Outcome {
    fn stop(result: ReconcileResult, summary: String) -> Self {
        Self {
            result,
            registrations: Vec::new(),
            updated: 0,
            summary,
        }
    }
}

/// The credentials for this pass (the password file is read again each time).
fn credentials(settings: &Settings) -> Result<Option<Credentials>, RoutingError> {
    crate::routing::credentials_from(settings.user.as_deref(), settings.password_file.as_deref())
}

/// Why a Bolt step failed, as a metric label: by the error's type, never its text.
pub fn classify(err: &RoutingError) -> ReconcileResult {
    match err {
        RoutingError::Bolt(bolt) => match bolt {
            BoltError::Resolve { .. }
            | BoltError::Connect { .. }
            | BoltError::Timeout { .. }
            | BoltError::Closed { .. }
            | BoltError::Io { .. } => ReconcileResult::Unreachable,
            BoltError::TlsServer { .. }
            | BoltError::TlsName { .. }
            | BoltError::TlsVerify { .. }
            | BoltError::NotTls { .. }
            | BoltError::TlsHandshake { .. } => ReconcileResult::Tls,
            BoltError::Auth { .. } => ReconcileResult::Auth,
            BoltError::Query { .. } | BoltError::NotCoordinator { .. } => ReconcileResult::Refused,
            _ => ReconcileResult::Error,
        },
        RoutingError::PasswordFile { .. } | RoutingError::PasswordWithoutUser => {
            ReconcileResult::Auth
        }
        _ => ReconcileResult::Error,
    }
}

fn pod_ref(pod: &Pod) -> ObjectRef {
    ObjectRef {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: pod.name_any(),
        uid: pod.metadata.uid.clone(),
    }
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_ip(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .filter(|ip| crate::decision::hostport::is_ip(ip))
}

/// The pod's Bolt port, as the webhook reads it (flag or variable, else 7687).
fn bolt_port(pod: &Pod, config: &Config) -> u16 {
    memgraph_facts(pod, &config.recognition)
        .and_then(|f| u16::try_from(f.bolt_port).ok())
        .unwrap_or(7687)
}

struct Pass<'a> {
    namespace: &'a str,
    snapshot: &'a Snapshot,
    cluster: RoutingCluster,
    settings: &'a Settings,
    reporter: &'a Reporter,
}

impl Pass<'_> {
    fn event(&self, pod: Option<&Pod>, reason: &'static str, type_: &'static str, message: String) {
        tracing::info!(
            namespace = self.namespace,
            pod = pod.map(|p| p.name_any()).unwrap_or_default(),
            reason,
            "{message}"
        );
        let Some(pod) = pod else { return };
        self.reporter.notify(Notice {
            namespace: self.namespace.to_string(),
            object: pod_ref(pod),
            reason,
            message: cut(message),
            type_,
            claimed: false,
        });
    }

    /// The pod behind an instance's registration (its management endpoint names it).
    /// The instance's pod, a StatefulSet's before any other the address also names.
    fn pod_of(&self, instance: &Instance) -> Option<&Pod> {
        let pods = self.pods_of(instance);
        pods.iter()
            .find(|p| controlling_statefulset(p).is_some())
            .or(pods.first())
            .copied()
    }

    /// Every pod the instance's registered address names: a Service's selector may match
    /// pods that are not the instance's (another workload with the same labels).
    fn pods_of(&self, instance: &Instance) -> Vec<&Pod> {
        let pods = self.snapshot.pods.iter();
        match target_of(instance, &self.cluster) {
            None => Vec::new(),
            Some(Target::Pod { name, .. }) => pods.filter(|p| p.name_any() == name).collect(),
            Some(Target::Service { namespace, name }) => {
                let Some(svc) = self.cluster.state.service(&namespace, &name) else {
                    return Vec::new();
                };
                pods.filter(|p| {
                    !svc.selector.is_empty()
                        && svc
                            .selector
                            .iter()
                            .all(|(k, v)| p.labels().get(k) == Some(v))
                })
                .collect()
            }
        }
    }

    async fn connect(
        &self,
        pod: &Pod,
        credentials: &Option<Credentials>,
    ) -> Result<Connection, RoutingError> {
        let ip = pod_ip(pod).unwrap_or_default();
        let address = BoltAddress {
            host: ip,
            port: bolt_port(pod, &self.settings.decision),
        };
        let options = ConnectOptions {
            credentials: credentials.clone(),
            timeout: self.settings.timeout,
            transport: self.settings.transport.clone(),
            limits: Default::default(),
            tls_server_name: match self.settings.transport {
                Transport::Plain => None,
                Transport::Tls(_) => {
                    controlling_statefulset(pod).map(|sts| tls_name(&sts, self.namespace))
                }
            },
        };
        Ok(Connection::connect(&address, &options).await?)
    }
}

/// Reconciles one cluster. Never panics on what Memgraph or the cluster sends; every failure
/// is an outcome with a reason. `claim` is this replica's hold on the Lease: it is checked
/// before every write, so a replica that lost it mid-pass writes nothing more.
pub async fn reconcile(
    namespace: &str,
    snapshot: &Snapshot,
    settings: &Settings,
    reporter: &Reporter,
    claim: &tokio::sync::watch::Receiver<bool>,
) -> Outcome {
    let pass = Pass {
        namespace,
        snapshot,
        cluster: {
            let mut cluster = RoutingCluster::from_objects(
                &snapshot.services,
                &snapshot.nodes,
                &snapshot.pods,
                namespace,
                settings.decision.clone(),
            );
            cluster.adopt_proxies(&snapshot.proxies);
            cluster
        },
        settings,
        reporter,
    };
    // Credentials go only to real coordinators: a Memgraph coordinator pod (as the webhook
    // recognises one) controlled by a StatefulSet, Ready, with a pod IP, in a namespace the
    // reconciler serves (the store holds no other).
    let mut coordinators: Vec<&Pod> = snapshot
        .pods
        .iter()
        .filter(|p| {
            memgraph_facts(p, &settings.decision.recognition).map(|f| f.role)
                == Some(Role::Coordinator)
        })
        .filter(|p| {
            p.namespace().as_deref() == Some(namespace)
                && controlling_statefulset(p).is_some()
                && is_ready(p)
                && pod_ip(p).is_some()
        })
        .collect();
    coordinators.sort_by_key(|p| p.name_any());
    if coordinators.is_empty() {
        return Outcome::stop(
            ReconcileResult::Pending,
            "no Ready coordinator pod of a StatefulSet with an IP yet".into(),
        );
    }
    let credentials = match credentials(settings) {
        Ok(c) => c,
        Err(err) => {
            pass.event(
                Some(coordinators[0]),
                FAILED,
                "Warning",
                format!("cannot reconcile the routing table: {err}"),
            );
            return Outcome::stop(classify(&err), err.to_string());
        }
    };

    // Any Ready coordinator answers SHOW INSTANCES (a follower forwards it to the leader).
    let mut last_error = None;
    let mut found = None;
    for pod in &coordinators {
        match pass.connect(pod, &credentials).await {
            Ok(conn) => {
                found = Some((*pod, conn));
                break;
            }
            // The first failure is reported (on the first coordinator tried).
            Err(err) => {
                last_error.get_or_insert((*pod, err));
            }
        }
    }
    let Some((seed_pod, mut conn)) = found else {
        let Some((pod, err)) = last_error else {
            // Not reached: `coordinators` is not empty, so one was tried and failed.
            return Outcome::stop(ReconcileResult::Error, "no coordinator was tried".into());
        };
        let result = classify(&err);
        pass.event(
            Some(pod),
            FAILED,
            "Warning",
            format!("cannot reach any coordinator of {namespace} by its pod IP: {err}"),
        );
        return Outcome::stop(result, err.to_string());
    };
    // The version as the webhook reads it (annotation, image tag): coordinators refuse
    // SHOW VERSION on every release through 3.12.
    let version = pass.cluster.memgraph_version(namespace);
    let version_text = version.map_or_else(|| "(version unknown)".to_string(), |v| v.to_string());
    let instances = match show_instances(&mut conn).await {
        Ok(v) => v,
        Err(err) => {
            pass.event(
                Some(seed_pod),
                FAILED,
                "Warning",
                format!(
                    "cannot read SHOW INSTANCES from {}: {err}",
                    seed_pod.name_any()
                ),
            );
            conn.close().await;
            return Outcome::stop(classify(&err), err.to_string());
        }
    };
    let desired = desired_addresses(&instances, &pass.cluster, 7687);
    let mut counts = [0usize; 3];
    for instance in &instances {
        let state = match desired.get(&instance.name) {
            Some(Desired::Address { address, .. }) if *address == instance.bolt_server => 0,
            Some(Desired::Address { .. }) => 1,
            _ => 2,
        };
        counts[state] += 1;
    }
    let registrations = vec![
        (RegistrationState::External, counts[0]),
        (RegistrationState::InCluster, counts[1]),
        (RegistrationState::Unknown, counts[2]),
    ];
    let mut outcome = Outcome {
        result: ReconcileResult::Ok,
        registrations,
        updated: 0,
        summary: String::new(),
    };

    for instance in &instances {
        if let Some(Desired::Unknown(why)) = desired.get(&instance.name) {
            if instance_is_unusable(instance) {
                pass.event(
                    pass.pod_of(instance),
                    PENDING,
                    "Warning",
                    format!(
                        "{}: registered as {}, and the external address is not known yet: {why}",
                        instance.name, instance.bolt_server
                    ),
                );
                outcome.result = ReconcileResult::Pending;
            }
        }
    }

    let plan = match plan::plan(&instances, &desired, version, settings.replication_port) {
        Ok(plan) => plan,
        Err(PlanError::TooOld(v)) => {
            for instance in instances.iter().filter(|i| matches!(desired.get(&i.name), Some(Desired::Address { address, .. }) if *address != i.bolt_server)) {
                pass.event(pass.pod_of(instance), PENDING, "Warning", format!("{}: Memgraph {v} cannot change a registration; the bootstrap coordinator's entry is its --coordinator-hostname (set by the webhook where safe), the others must be registered again by hand with the external address", instance.name));
            }
            outcome.result = ReconcileResult::Pending;
            outcome.summary = format!("Memgraph {v}: nothing written (2.x)");
            conn.close().await;
            return outcome;
        }
        Err(err) => {
            pass.event(
                Some(seed_pod),
                FAILED,
                "Warning",
                format!("cannot plan the routing table of {namespace}: {err}"),
            );
            conn.close().await;
            return Outcome {
                result: ReconcileResult::Refused,
                summary: err.to_string(),
                ..outcome
            };
        }
    };
    // Values that are not hosts, and IPv6 addresses Memgraph cannot store: never written.
    for (name, why) in &plan.refused {
        let instance = instances.iter().find(|i| &i.name == name);
        pass.event(
            instance.and_then(|i| pass.pod_of(i)),
            REFUSED,
            "Warning",
            format!("{name}: the external address is refused, nothing written: {why}"),
        );
        outcome.result = ReconcileResult::Pending;
    }
    if plan.changes.is_empty() {
        outcome.summary = format!(
            "Memgraph {version_text}: {} external, {} unknown; nothing to change",
            counts[0], counts[2]
        );
        conn.close().await;
        return outcome;
    }
    if plan.mode == Mode::Reregister {
        for change in &plan.changes {
            let pod = instances
                .iter()
                .find(|i| i.name == change.instance)
                .and_then(|i| pass.pod_of(i));
            pass.event(pod, PENDING, "Warning", format!("{}: Memgraph {version_text} cannot update a registration in place (3.8+ can); to use {} instead of {}, run on the leader: {}", change.instance, change.to, change.from, change.statements.join("; ")));
        }
        outcome.result = ReconcileResult::Pending;
        outcome.summary = format!(
            "Memgraph {version_text}: {} changes to run by hand",
            plan.changes.len()
        );
        conn.close().await;
        return outcome;
    }

    // 3.8 (and an unknown version): UPDATE CONFIG on the leader itself, found by SHOW
    // INSTANCES' role column and reached by its pod IP; 3.9+ forwards from any coordinator.
    let mut leader = None;
    if plan::needs_leader(version) {
        let leader_pod = instances.iter().find(|i| i.is_leader()).and_then(|i| {
            pass.pods_of(i)
                .into_iter()
                .find(|p| coordinators.iter().any(|c| c.name_any() == p.name_any()))
        });
        let why = match leader_pod {
            None => Some(format!(
                "SHOW INSTANCES names no leader among the Ready coordinator pods of {namespace}"
            )),
            Some(pod) if pod.name_any() == seed_pod.name_any() => None,
            Some(pod) => match pass.connect(pod, &credentials).await {
                Ok(c) => {
                    leader = Some(c);
                    None
                }
                Err(err) => Some(format!(
                    "the leader {} cannot be reached by its pod IP: {err}",
                    pod.name_any()
                )),
            },
        };
        if let Some(why) = why {
            let result = ReconcileResult::Unreachable;
            pass.event(
                Some(seed_pod),
                FAILED,
                "Warning",
                format!("nothing written: Memgraph {version_text} takes UPDATE CONFIG only on the leader (3.8 does not forward it), and {why}"),
            );
            conn.close().await;
            return Outcome {
                result,
                summary: why,
                ..outcome
            };
        }
    }
    let writer = leader.as_mut().unwrap_or(&mut conn);
    let mut applied = Vec::new();
    'changes: for change in &plan.changes {
        let pod = instances
            .iter()
            .find(|i| i.name == change.instance)
            .and_then(|i| pass.pod_of(i));
        for statement in &change.statements {
            // The Lease may have been lost since the pass began (it can outlast a Lease):
            // another replica may be writing now.
            if !*claim.borrow() {
                outcome.result = ReconcileResult::Error;
                outcome.summary =
                    "the Lease was lost during the pass; stopped before writing".into();
                tracing::warn!(
                    namespace,
                    "the Lease was lost during the pass; nothing more is written"
                );
                break 'changes;
            }
            match writer.run(statement).await {
                Ok(_) => {}
                Err(err @ BoltError::Query { .. }) if version.is_none() => {
                    outcome.result = ReconcileResult::Refused;
                    pass.event(pod, FAILED, "Warning", format!("{}: the leader refused {statement}: {err}. The Memgraph version is not known (no version in the coordinators' image tag): set the annotation {} on the coordinator pods; if it is older than 3.8 (no UPDATE CONFIG), run on the leader: {}", change.instance, crate::decision::pod::VERSION_ANNOTATION, change.by_hand.join("; ")));
                    continue 'changes;
                }
                Err(err) => {
                    let err = RoutingError::from(err);
                    outcome.result = classify(&err);
                    pass.event(
                        pod,
                        FAILED,
                        "Warning",
                        format!("{}: {statement} failed: {err}", change.instance),
                    );
                    continue 'changes;
                }
            }
        }
        applied.push(change);
    }
    // Read back: only what SHOW INSTANCES now says counts as done.
    if !applied.is_empty() {
        match show_instances(writer).await {
            Ok(after) => {
                for change in applied {
                    let now = after.iter().find(|i| i.name == change.instance);
                    let pod = instances
                        .iter()
                        .find(|i| i.name == change.instance)
                        .and_then(|i| pass.pod_of(i));
                    if now.is_some_and(|i| i.bolt_server == change.to) {
                        outcome.updated += 1;
                        pass.event(
                            pod,
                            UPDATED,
                            "Normal",
                            format!(
                                "{}: {} → {} ({})",
                                change.instance, change.from, change.to, change.source
                            ),
                        );
                    } else {
                        outcome.result = ReconcileResult::NotVerified;
                        pass.event(pod, FAILED, "Warning", format!("{}: UPDATE CONFIG to {} was accepted, but SHOW INSTANCES still lists {}", change.instance, change.to, now.map(|i| i.bolt_server.as_str()).unwrap_or("nothing")));
                    }
                }
            }
            Err(err) => {
                outcome.result = classify(&err);
                pass.event(
                    Some(seed_pod),
                    FAILED,
                    "Warning",
                    format!("cannot read SHOW INSTANCES back: {err}"),
                );
            }
        }
    }
    // The registrations as they are now: each verified update moved one to external.
    outcome.registrations = vec![
        (RegistrationState::External, counts[0] + outcome.updated),
        (
            RegistrationState::InCluster,
            counts[1].saturating_sub(outcome.updated),
        ),
        (RegistrationState::Unknown, counts[2]),
    ];
    if outcome.summary.is_empty() {
        outcome.summary = format!(
            "Memgraph {version_text}: {} of {} registrations updated and verified",
            outcome.updated,
            plan.changes.len()
        );
    }
    if let Some(l) = leader {
        l.close().await;
    }
    conn.close().await;
    outcome
}

/// A registration an outside client cannot use as it is (an in-cluster name, an IP inside
/// the cluster): only then is an unknown external address worth an Event.
fn instance_is_unusable(instance: &Instance) -> bool {
    !matches!(
        crate::routing::table::classify(&instance.bolt_server, None).0,
        crate::routing::table::Verdict::Usable
    )
}

/// Times a pass so that a hung coordinator never holds a cluster for ever.
pub async fn bounded(
    namespace: &str,
    snapshot: &Snapshot,
    settings: &Settings,
    reporter: &Reporter,
    budget: Duration,
    claim: &tokio::sync::watch::Receiver<bool>,
) -> (Outcome, Duration) {
    let started = Instant::now();
    let outcome = match tokio::time::timeout(
        budget,
        reconcile(namespace, snapshot, settings, reporter, claim),
    )
    .await
    {
        Ok(outcome) => outcome,
        Err(_) => Outcome::stop(
            ReconcileResult::Unreachable,
            format!("the pass did not finish within {budget:?}"),
        ),
    };
    (outcome, started.elapsed())
}
