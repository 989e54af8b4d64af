//! What the reconciler reads: Memgraph HA pods of the namespaces it serves, their Services,
//! and the Nodes. Only watches write here. Services and Nodes come from the webhook's own
//! watches (one per kind, `cluster::Taps`); pods from a watch per served namespace narrowed
//! to the label the webhook stamps at admission (`MANAGED_LABEL`), plus a full list at start
//! and at each resync for pods created before the webhook was installed (they carry no
//! label). Each change that can move an address signals its namespace (a Node: every
//! served namespace). Objects are kept slim: no managedFields, no Node image lists.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::ListParams;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, ResourceExt};
use tokio::sync::mpsc;

use crate::decision::nodes::NodeSelector;
use crate::decision::pod::{self as pod_facts, Recognition, Role, MANAGED_LABEL};
use crate::decision::view::{ClusterState, NodeView, ServiceView};

/// What changed, for the reconcile loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signal {
    /// Something in this namespace (a Memgraph pod, a Service) changed.
    Namespace(String),
    /// A Node changed address, readiness, schedulability or labels, or a watch (re)listed:
    /// every cluster.
    AllNamespaces,
}

/// Which clusters the reconciler serves, and so may send Bolt credentials to: pods in these
/// namespaces whose labels match the selector (empty: all).
#[derive(Clone, Debug)]
pub struct Scope {
    pub namespaces: BTreeSet<String>,
    pub pod_selector: NodeSelector,
}

impl Scope {
    pub fn serves(&self, pod: &Pod) -> bool {
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        pod.metadata
            .namespace
            .as_ref()
            .is_some_and(|ns| self.namespaces.contains(ns))
            && self.pod_selector.matches(&labels)
    }
}

#[derive(Default)]
struct Objects {
    /// Memgraph HA pods from the labelled watches, by namespace then name.
    pods: BTreeMap<String, BTreeMap<String, Pod>>,
    /// Memgraph HA pods without the label, from the last full list.
    unlabelled: BTreeMap<String, BTreeMap<String, Pod>>,
    /// Services of the served namespaces.
    services: BTreeMap<String, BTreeMap<String, Service>>,
    nodes: BTreeMap<String, Node>,
    /// Served namespaces whose pod watch has listed since its last (re)start.
    pods_listed: BTreeSet<String>,
    full_listed: bool,
    services_listed: bool,
    nodes_listed: bool,
}

/// A consistent copy of one namespace's objects, for one reconcile pass.
pub struct Snapshot {
    pub pods: Vec<Pod>,
    pub services: Vec<Service>,
    pub nodes: Vec<Node>,
    /// Gateways, TCPRoutes, the tcp-services ConfigMap and the ingress-nginx controller's
    /// Services, from the webhook's watches.
    pub proxies: ClusterState,
}

#[derive(Clone)]
pub struct Store {
    objects: Arc<Mutex<Objects>>,
    recognition: Recognition,
    scope: Arc<Scope>,
    signals: mpsc::UnboundedSender<Signal>,
    /// The webhook's view, for the proxies (set once its watches start).
    cluster: Arc<std::sync::OnceLock<crate::cluster::SharedCluster>>,
}

impl Store {
    pub fn new(recognition: Recognition, scope: Scope) -> (Self, mpsc::UnboundedReceiver<Signal>) {
        let (signals, rx) = mpsc::unbounded_channel();
        let store = Self {
            objects: Arc::default(),
            recognition,
            scope: Arc::new(scope),
            signals,
            cluster: Arc::default(),
        };
        (store, rx)
    }

    fn lock(&self) -> MutexGuard<'_, Objects> {
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn signal(&self, signal: Signal) {
        let _ = self.signals.send(signal);
    }

    /// Have Pods, Services and Nodes each listed once since their last (re)list? Before
    /// that a pass could see a half-empty cluster and move registrations for nothing.
    pub fn is_synced(&self) -> bool {
        let objects = self.lock();
        objects.full_listed
            && objects.services_listed
            && objects.nodes_listed
            && self
                .scope
                .namespaces
                .iter()
                .all(|ns| objects.pods_listed.contains(ns))
    }

    /// Served namespaces that hold at least one Memgraph HA pod.
    pub fn memgraph_namespaces(&self) -> BTreeSet<String> {
        let objects = self.lock();
        objects
            .pods
            .iter()
            .chain(objects.unlabelled.iter())
            .filter(|(_, pods)| !pods.is_empty())
            .map(|(ns, _)| ns.clone())
            .collect()
    }

    pub fn snapshot(&self, namespace: &str) -> Snapshot {
        let proxies = self
            .cluster
            .get()
            .map(crate::cluster::SharedCluster::proxy_view)
            .unwrap_or_default();
        let objects = self.lock();
        let mut pods: BTreeMap<String, Pod> = objects
            .unlabelled
            .get(namespace)
            .cloned()
            .unwrap_or_default();
        // A labelled pod is followed live: it wins over a listed copy of the same name.
        pods.extend(objects.pods.get(namespace).cloned().unwrap_or_default());
        Snapshot {
            pods: pods.into_values().collect(),
            services: objects
                .services
                .get(namespace)
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default(),
            nodes: objects.nodes.values().cloned().collect(),
            proxies,
        }
    }

    /// The webhook's watched view, whose proxies each snapshot carries.
    pub fn attach(&self, cluster: crate::cluster::SharedCluster) {
        let _ = self.cluster.set(cluster);
    }

    /// A proxy changed: every served namespace may have moved.
    pub fn proxy_event(&self) {
        self.signal(Signal::AllNamespaces);
    }

    /// Is this a Memgraph HA pod the reconciler serves, as the webhook recognises one?
    fn is_served_memgraph(&self, pod: &Pod) -> bool {
        self.scope.serves(pod) && memgraph_facts(pod, &self.recognition).is_some()
    }

    /// Starts the labelled pod watch of each served namespace; they run until the process
    /// ends, retried with backoff.
    pub fn watch_pods(&self, client: Client) {
        let selector = format!("{MANAGED_LABEL}=true");
        for ns in self.scope.namespaces.clone() {
            let api = Api::<Pod>::namespaced(client.clone(), &ns);
            let store = self.clone();
            let config = watcher::Config::default().labels(&selector);
            tokio::spawn(async move {
                let mut stream = watcher::watcher(api, config).default_backoff().boxed();
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(event) => store.pod_event(&ns, event),
                        Err(err) => {
                            tracing::warn!(namespace = %ns, kind = "Pod", error = %err, "reconciler watch error; retrying")
                        }
                    }
                }
            });
        }
    }

    /// One full list of every served namespace's pods, for Memgraph pods created before the
    /// webhook stamped its label. Run at start and at each resync.
    pub async fn list_unlabelled(&self, client: &Client) {
        let lp = ListParams::default().labels(&format!("!{MANAGED_LABEL}"));
        let mut found: BTreeMap<String, BTreeMap<String, Pod>> = BTreeMap::new();
        for ns in &self.scope.namespaces {
            let api = Api::<Pod>::namespaced(client.clone(), ns);
            match api.list(&lp).await {
                Ok(list) => {
                    let pods = found.entry(ns.clone()).or_default();
                    for pod in list
                        .items
                        .into_iter()
                        .filter(|p| self.is_served_memgraph(p))
                    {
                        pods.insert(pod.name_any(), slim_pod(pod));
                    }
                }
                Err(err) => {
                    tracing::warn!(namespace = %ns, error = %err, "cannot list the pods of a served namespace; keeping the last list");
                    if let Some(old) = self.lock().unlabelled.get(ns) {
                        found.insert(ns.clone(), old.clone());
                    }
                }
            }
        }
        let count: usize = found.values().map(BTreeMap::len).sum();
        if count > 0 {
            tracing::info!(count, "Memgraph pods without the label {MANAGED_LABEL} (created before the webhook was installed) are followed by a full list at each resync; recreate them to follow them live");
        }
        self.unlabelled_listed(found);
    }

    /// Keeps a full list's result. The first one always signals: it may be the last of the
    /// lists the loop waits for, and the loop only looks again when signalled.
    fn unlabelled_listed(&self, found: BTreeMap<String, BTreeMap<String, Pod>>) {
        let mut objects = self.lock();
        let changed = !same_pods(&found, &objects.unlabelled);
        let first = !objects.full_listed;
        objects.unlabelled = found;
        objects.full_listed = true;
        drop(objects);
        if changed || first {
            self.signal(Signal::AllNamespaces);
        }
    }

    fn pod_event(&self, namespace: &str, event: Event<Pod>) {
        let mut objects = self.lock();
        match event {
            Event::Apply(pod) | Event::InitApply(pod) => {
                let name = pod.name_any();
                let served = self.is_served_memgraph(&pod);
                let pods = objects.pods.entry(namespace.to_string()).or_default();
                if served {
                    let changed = pods.get(&name).is_none_or(|old| pod_changed(old, &pod));
                    pods.insert(name, slim_pod(pod));
                    if changed {
                        self.signal(Signal::Namespace(namespace.to_string()));
                    }
                } else if pods.remove(&name).is_some() {
                    self.signal(Signal::Namespace(namespace.to_string()));
                }
            }
            Event::Delete(pod) => {
                let name = pod.name_any();
                let removed = objects
                    .pods
                    .get_mut(namespace)
                    .is_some_and(|pods| pods.remove(&name).is_some());
                let unlisted = objects
                    .unlabelled
                    .get_mut(namespace)
                    .is_some_and(|pods| pods.remove(&name).is_some());
                if removed || unlisted {
                    self.signal(Signal::Namespace(namespace.to_string()));
                }
            }
            // A (re)list: no pass until it is complete.
            Event::Init => {
                objects.pods.remove(namespace);
                objects.pods_listed.remove(namespace);
            }
            Event::InitDone => {
                objects.pods_listed.insert(namespace.to_string());
                self.signal(Signal::AllNamespaces);
            }
        }
    }

    /// The reconciler's share of the webhook's Service watch.
    pub fn service_event(&self, event: &Event<Service>) {
        let mut objects = self.lock();
        let served = |svc: &Service| {
            svc.metadata
                .namespace
                .as_ref()
                .is_some_and(|ns| self.scope.namespaces.contains(ns))
        };
        match event {
            Event::Apply(svc) | Event::InitApply(svc) if served(svc) => {
                let mut svc = svc.clone();
                svc.managed_fields_mut().clear();
                let ns = svc.namespace().unwrap_or_default();
                let name = svc.name_any();
                let services = objects.services.entry(ns.clone()).or_default();
                let changed = services.get(&name).is_none_or(|old| {
                    ServiceView::from_service(old) != ServiceView::from_service(&svc)
                        || old.spec != svc.spec
                });
                services.insert(name, svc);
                if changed {
                    self.signal(Signal::Namespace(ns));
                }
            }
            Event::Delete(svc) if served(svc) => {
                let ns = svc.namespace().unwrap_or_default();
                if let Some(services) = objects.services.get_mut(&ns) {
                    services.remove(&svc.name_any());
                }
                self.signal(Signal::Namespace(ns));
            }
            Event::Apply(_) | Event::InitApply(_) | Event::Delete(_) => {}
            Event::Init => {
                objects.services.clear();
                objects.services_listed = false;
            }
            Event::InitDone => {
                objects.services_listed = true;
                self.signal(Signal::AllNamespaces);
            }
        }
    }

    /// The reconciler's share of the webhook's Node watch.
    pub fn node_event(&self, event: &Event<Node>) {
        let mut objects = self.lock();
        match event {
            Event::Apply(node) | Event::InitApply(node) => {
                let node = slim_node(node.clone());
                let name = node.name_any();
                let changed = objects
                    .nodes
                    .get(&name)
                    .is_none_or(|old| NodeView::from_node(old) != NodeView::from_node(&node));
                objects.nodes.insert(name, node);
                if changed && matches!(event, Event::Apply(_)) {
                    self.signal(Signal::AllNamespaces);
                }
            }
            Event::Delete(node) => {
                objects.nodes.remove(&node.name_any());
                self.signal(Signal::AllNamespaces);
            }
            Event::Init => {
                objects.nodes.clear();
                objects.nodes_listed = false;
            }
            Event::InitDone => {
                objects.nodes_listed = true;
                self.signal(Signal::AllNamespaces);
            }
        }
    }
}

/// The same pods, by namespace, name and what a reconcile reads of them.
fn same_pods(
    a: &BTreeMap<String, BTreeMap<String, Pod>>,
    b: &BTreeMap<String, BTreeMap<String, Pod>>,
) -> bool {
    let non_empty = |m: &BTreeMap<String, BTreeMap<String, Pod>>| {
        m.iter().filter(|(_, p)| !p.is_empty()).count()
    };
    non_empty(a) == non_empty(b)
        && a.iter().filter(|(_, p)| !p.is_empty()).all(|(ns, pods)| {
            b.get(ns).is_some_and(|o| {
                o.len() == pods.len()
                    && pods
                        .iter()
                        .all(|(name, p)| o.get(name).is_some_and(|q| !pod_changed(q, p)))
            })
        })
}

/// A watched pod's Memgraph facts, as the webhook reads them (`decision::pod`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Facts {
    pub role: Role,
    pub bolt_port: i32,
}

/// The facts of a Memgraph HA pod, by the webhook's recognition; `None` for anything else.
pub fn memgraph_facts(pod: &Pod, recognition: &Recognition) -> Option<Facts> {
    let raw = serde_json::json!({"metadata": &pod.metadata, "spec": &pod.spec}).to_string();
    let parsed: pod_facts::Pod<'_> = serde_json::from_str(&raw).ok()?;
    let mg = pod_facts::memgraph_pod(&parsed, recognition).ok()??;
    // HA instances only, as the webhook's matchConditions: a coordinator, or a data
    // instance with a management port.
    (mg.role == Role::Coordinator || mg.management_port.is_some()).then_some(Facts {
        role: mg.role,
        bolt_port: mg.bolt_port,
    })
}

/// What a reconcile reads of a pod: IPs, readiness, node, labels, annotations, owner, spec.
fn pod_changed(old: &Pod, new: &Pod) -> bool {
    let facts = |p: &Pod| {
        let status = p.status.as_ref();
        (
            status.and_then(|s| s.pod_ip.clone()),
            status.and_then(|s| s.pod_ips.clone()),
            status.and_then(|s| {
                s.conditions.as_ref().map(|c| {
                    c.iter()
                        .map(|c| (c.type_.clone(), c.status.clone()))
                        .collect::<Vec<_>>()
                })
            }),
            p.spec.as_ref().and_then(|s| s.node_name.clone()),
            p.metadata.labels.clone(),
            p.metadata.annotations.clone(),
            p.metadata.owner_references.clone(),
        )
    };
    facts(old) != facts(new) || old.spec != new.spec
}

fn slim_pod(mut pod: Pod) -> Pod {
    pod.managed_fields_mut().clear();
    pod
}

fn slim_node(mut node: Node) -> Node {
    node.managed_fields_mut().clear();
    if let Some(status) = node.status.as_mut() {
        status.images = None;
    }
    node
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (Store, mpsc::UnboundedReceiver<Signal>) {
        let scope = Scope {
            namespaces: BTreeSet::from(["rc".to_string()]),
            pod_selector: NodeSelector::default(),
        };
        Store::new(crate::decision::Config::default().recognition, scope)
    }

    /// Whichever list completes last must wake the loop: a full list that finds nothing
    /// new after the watches have listed (every pod carries the label) still signals once,
    /// or no pass runs until the resync.
    #[test]
    fn the_last_list_to_complete_wakes_the_loop() {
        let (store, mut signals) = store();
        store.pod_event("rc", Event::Init);
        store.pod_event("rc", Event::InitDone);
        store.service_event(&Event::Init);
        store.service_event(&Event::InitDone);
        store.node_event(&Event::Init);
        store.node_event(&Event::InitDone);
        while signals.try_recv().is_ok() {}
        assert!(!store.is_synced(), "the full list has not completed");

        store.unlabelled_listed(BTreeMap::new());
        assert!(store.is_synced());
        assert_eq!(signals.try_recv(), Ok(Signal::AllNamespaces));

        // Later lists that find the same pods stay quiet.
        store.unlabelled_listed(BTreeMap::new());
        assert!(signals.try_recv().is_err());
    }
}
