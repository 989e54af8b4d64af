//! What the reconciler watches: Memgraph HA pods (by the webhook's own recognition), the
//! Services and Nodes. Only the watches write here; each change that can move an address
//! signals the namespace (a Node change: every Memgraph namespace). Objects are kept slim:
//! no managedFields, no Node image lists.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, ResourceExt};
use tokio::sync::mpsc;

use crate::decision::pod::{self as pod_facts, Recognition, Role};
use crate::decision::view::{NodeView, ServiceView};

/// What changed, for the reconcile loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signal {
    /// Something in this namespace (a Memgraph pod, a Service) changed.
    Namespace(String),
    /// A Node changed address, readiness, schedulability or labels: every cluster.
    AllNamespaces,
}

#[derive(Default)]
struct Objects {
    /// Memgraph HA pods only, by namespace then name.
    pods: BTreeMap<String, BTreeMap<String, Pod>>,
    services: BTreeMap<String, BTreeMap<String, Service>>,
    nodes: BTreeMap<String, Node>,
}

/// A consistent copy of one namespace's objects, for one reconcile pass.
pub struct Snapshot {
    pub pods: Vec<Pod>,
    pub services: Vec<Service>,
    pub nodes: Vec<Node>,
}

#[derive(Clone)]
pub struct Store {
    objects: Arc<Mutex<Objects>>,
    recognition: Recognition,
}

impl Store {
    pub fn new(recognition: Recognition) -> Self {
        Self {
            objects: Arc::default(),
            recognition,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Objects> {
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Namespaces that hold at least one Memgraph HA pod.
    pub fn memgraph_namespaces(&self) -> BTreeSet<String> {
        self.lock()
            .pods
            .iter()
            .filter(|(_, pods)| !pods.is_empty())
            .map(|(ns, _)| ns.clone())
            .collect()
    }

    pub fn snapshot(&self, namespace: &str) -> Snapshot {
        let objects = self.lock();
        fn of<T: Clone>(map: &BTreeMap<String, BTreeMap<String, T>>, namespace: &str) -> Vec<T> {
            map.get(namespace)
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default()
        }
        Snapshot {
            pods: of(&objects.pods, namespace),
            services: of(&objects.services, namespace),
            nodes: objects.nodes.values().cloned().collect(),
        }
    }

    /// Is this a Memgraph HA pod, as the webhook recognises one?
    pub fn is_memgraph(&self, pod: &Pod) -> bool {
        memgraph_facts(pod, &self.recognition).is_some()
    }

    /// Starts the three watches; they run until the process ends, retried with backoff.
    pub fn watch(&self, client: Client, signals: mpsc::UnboundedSender<Signal>) {
        let store = self.clone();
        let tx = signals.clone();
        tokio::spawn(watch_kind(Api::<Pod>::all(client.clone()), move |event| {
            store.pod_event(event, &tx)
        }));
        let store = self.clone();
        let tx = signals.clone();
        tokio::spawn(watch_kind(
            Api::<Service>::all(client.clone()),
            move |event| store.service_event(event, &tx),
        ));
        let store = self.clone();
        tokio::spawn(watch_kind(Api::<Node>::all(client), move |event| {
            store.node_event(event, &signals)
        }));
    }

    fn pod_event(&self, event: Event<Pod>, tx: &mpsc::UnboundedSender<Signal>) {
        let mut objects = self.lock();
        match event {
            Event::Apply(pod) | Event::InitApply(pod) => {
                let ns = pod.namespace().unwrap_or_default();
                let name = pod.name_any();
                let pods = objects.pods.entry(ns.clone()).or_default();
                if self.is_memgraph(&pod) {
                    let changed = pods.get(&name).is_none_or(|old| pod_changed(old, &pod));
                    pods.insert(name, slim_pod(pod));
                    if changed {
                        let _ = tx.send(Signal::Namespace(ns));
                    }
                } else if pods.remove(&name).is_some() {
                    let _ = tx.send(Signal::Namespace(ns));
                }
            }
            Event::Delete(pod) => {
                let ns = pod.namespace().unwrap_or_default();
                if let Some(pods) = objects.pods.get_mut(&ns) {
                    if pods.remove(&pod.name_any()).is_some() {
                        let _ = tx.send(Signal::Namespace(ns));
                    }
                }
            }
            Event::Init => objects.pods.clear(),
            Event::InitDone => {
                let _ = tx.send(Signal::AllNamespaces);
            }
        }
    }

    fn service_event(&self, event: Event<Service>, tx: &mpsc::UnboundedSender<Signal>) {
        let mut objects = self.lock();
        let signal = |objects: &Objects, ns: &str| {
            if objects.pods.get(ns).is_some_and(|p| !p.is_empty()) {
                let _ = tx.send(Signal::Namespace(ns.to_string()));
            }
        };
        match event {
            Event::Apply(mut svc) | Event::InitApply(mut svc) => {
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
                    signal(&objects, &ns);
                }
            }
            Event::Delete(svc) => {
                let ns = svc.namespace().unwrap_or_default();
                if let Some(services) = objects.services.get_mut(&ns) {
                    services.remove(&svc.name_any());
                }
                signal(&objects, &ns);
            }
            Event::Init => objects.services.clear(),
            Event::InitDone => {
                let _ = tx.send(Signal::AllNamespaces);
            }
        }
    }

    fn node_event(&self, event: Event<Node>, tx: &mpsc::UnboundedSender<Signal>) {
        let mut objects = self.lock();
        match event {
            Event::Apply(node) | Event::InitApply(node) => {
                let node = slim_node(node);
                let name = node.name_any();
                let changed = objects
                    .nodes
                    .get(&name)
                    .is_none_or(|old| NodeView::from_node(old) != NodeView::from_node(&node));
                objects.nodes.insert(name, node);
                if changed {
                    let _ = tx.send(Signal::AllNamespaces);
                }
            }
            Event::Delete(node) => {
                objects.nodes.remove(&node.name_any());
                let _ = tx.send(Signal::AllNamespaces);
            }
            Event::Init => objects.nodes.clear(),
            Event::InitDone => {
                let _ = tx.send(Signal::AllNamespaces);
            }
        }
    }
}

async fn watch_kind<K>(api: Api<K>, mut on_event: impl FnMut(Event<K>) + Send + 'static)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(event) = stream.next().await {
        match event {
            Ok(event) => on_event(event),
            Err(err) => {
                tracing::warn!(kind = K::kind(&()).as_ref(), error = %err, "reconciler watch error; retrying")
            }
        }
    }
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

/// What a reconcile reads of a pod: IPs, readiness, node, labels, annotations, spec.
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
