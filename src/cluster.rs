//! The cluster view behind the decision, fed either from a state file (`review`,
//! `serve --cluster-state`) or from watches against the API server (`serve`).

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::ListParams;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::decision::view::{ClusterState, NodeView, ServiceView};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read {path}: {cause}")]
    Read { path: String, cause: std::io::Error },
    #[error("{path}: document {index} is not valid JSON or YAML: {message}")]
    Syntax {
        path: String,
        index: usize,
        message: String,
    },
    #[error("{path}: document {index} has no kind; expected Services, Nodes or a v1 List of them (kubectl get svc,nodes -A -o yaml)")]
    NoKind { path: String, index: usize },
    #[error("{path}: {kind} {name:?} is not a readable {kind}: {message}")]
    BadObject {
        path: String,
        kind: String,
        name: String,
        message: String,
    },
}

/// Splits JSON (one value or a stream of values) or multi-document YAML into values.
pub fn parse_documents(text: &str, path: &str) -> Result<Vec<serde_json::Value>, StateError> {
    let syntax = |index: usize, message: String| StateError::Syntax {
        path: path.to_string(),
        index,
        message,
    };
    let trimmed = text.trim_start();
    let mut docs = Vec::new();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        for (index, value) in serde_json::Deserializer::from_str(trimmed)
            .into_iter::<serde_json::Value>()
            .enumerate()
        {
            docs.push(value.map_err(|e| syntax(index + 1, e.to_string()))?);
        }
    } else {
        for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let value = serde_json::Value::deserialize(doc)
                .map_err(|e| syntax(index + 1, e.to_string()))?;
            if !value.is_null() {
                docs.push(value);
            }
        }
    }
    Ok(docs)
}

/// Builds a cluster view from `kubectl get svc,nodes -A -o yaml` output or documents of
/// Services and Nodes. Other kinds are skipped.
pub fn state_from_text(text: &str, path: &str) -> Result<ClusterState, StateError> {
    let mut state = ClusterState::default();
    visit_objects(text, path, |object| {
        match object.kind {
            "Service" => {
                let svc: Service = object.decode()?;
                let view = ServiceView::from_service(&svc)
                    .ok_or_else(|| object.bad("it has no metadata.name"))?;
                state.upsert_service(view);
            }
            "Node" => {
                let node: Node = object.decode()?;
                let view = NodeView::from_node(&node)
                    .ok_or_else(|| object.bad("it has no metadata.name"))?;
                state.upsert_node(view);
            }
            _ => {}
        }
        Ok(())
    })?;
    Ok(state)
}

/// One object of a state file, still raw: its kind and name are read, the rest is decoded
/// only by the visitor that wants it.
pub struct RawObject<'t> {
    pub kind: &'t str,
    pub name: &'t str,
    raw: &'t str,
    path: &'t str,
}

impl RawObject<'_> {
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, StateError> {
        serde_json::from_str(self.raw).map_err(|e| self.bad(&e.to_string()))
    }

    pub fn bad(&self, message: &str) -> StateError {
        StateError::BadObject {
            path: self.path.to_string(),
            kind: self.kind.to_string(),
            name: self.name.to_string(),
            message: message.to_string(),
        }
    }
}

/// Calls `visit` for every object in JSON (one value or a stream) or multi-document YAML,
/// with v1 Lists and arrays flattened. JSON is read without building a tree of the whole
/// file: each object is handed over as its raw slice, so 10,000 Services load in bounded
/// memory.
pub fn visit_objects(
    text: &str,
    path: &str,
    mut visit: impl FnMut(&RawObject<'_>) -> Result<(), StateError>,
) -> Result<(), StateError> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let stream = serde_json::Deserializer::from_str(trimmed).into_iter::<&RawValue>();
        for (index, doc) in stream.enumerate() {
            let doc = doc.map_err(|e| StateError::Syntax {
                path: path.to_string(),
                index: index + 1,
                message: e.to_string(),
            })?;
            visit_document(doc.get(), index + 1, path, &mut visit)?;
        }
    } else {
        for (index, doc) in parse_documents(text, path)?.into_iter().enumerate() {
            visit_document(&doc.to_string(), index + 1, path, &mut visit)?;
        }
    }
    Ok(())
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    items: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default)]
    metadata: Option<HeadMeta<'a>>,
}

#[derive(Deserialize)]
struct HeadMeta<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
}

fn visit_document(
    raw: &str,
    index: usize,
    path: &str,
    visit: &mut impl FnMut(&RawObject<'_>) -> Result<(), StateError>,
) -> Result<(), StateError> {
    let syntax = |e: serde_json::Error| StateError::Syntax {
        path: path.to_string(),
        index,
        message: e.to_string(),
    };
    if raw.trim_start().starts_with('[') {
        let items: Vec<&RawValue> = serde_json::from_str(raw).map_err(syntax)?;
        return items
            .iter()
            .try_for_each(|item| visit_object(item.get(), path, visit));
    }
    let head: Head<'_> = serde_json::from_str(raw).map_err(syntax)?;
    match (head.items, head.kind) {
        (Some(items), _) => items
            .iter()
            .try_for_each(|item| visit_object(item.get(), path, visit)),
        (None, None) => Err(StateError::NoKind {
            path: path.to_string(),
            index,
        }),
        (None, Some(_)) => visit_object(raw, path, visit),
    }
}

fn visit_object(
    raw: &str,
    path: &str,
    visit: &mut impl FnMut(&RawObject<'_>) -> Result<(), StateError>,
) -> Result<(), StateError> {
    let head: Head<'_> = serde_json::from_str(raw).map_err(|e| StateError::BadObject {
        path: path.to_string(),
        kind: "object".into(),
        name: String::new(),
        message: e.to_string(),
    })?;
    visit(&RawObject {
        kind: head.kind.as_deref().unwrap_or_default(),
        name: head
            .metadata
            .as_ref()
            .and_then(|m| m.name.as_deref())
            .unwrap_or_default(),
        raw,
        path,
    })
}

pub fn load_state_file(path: &str) -> Result<ClusterState, StateError> {
    let text = std::fs::read_to_string(path).map_err(|cause| StateError::Read {
        path: path.to_string(),
        cause,
    })?;
    state_from_text(&text, path)
}

/// The view the server decides against: a lock around the state, and whether each watch
/// has listed once (readiness).
#[derive(Clone, Default)]
pub struct SharedCluster {
    state: Arc<RwLock<ClusterState>>,
    services_listed: Arc<AtomicBool>,
    nodes_listed: Arc<AtomicBool>,
    /// Watch errors since start: readiness stays true on them (decisions from a slightly
    /// stale cache beat refusing every Memgraph pod), so this is how staleness shows.
    watch_errors: Arc<std::sync::atomic::AtomicU64>,
    client: Option<Client>,
}

impl SharedCluster {
    /// A fixed view from a state file: ready at once, never refreshed.
    pub fn fixed(state: ClusterState) -> Self {
        Self {
            state: Arc::new(RwLock::new(state)),
            services_listed: Arc::new(AtomicBool::new(true)),
            nodes_listed: Arc::new(AtomicBool::new(true)),
            client: None,
            ..Self::default()
        }
    }

    pub fn read(&self) -> RwLockReadGuard<'_, ClusterState> {
        // A writer that panicked left a consistent map (each update is one insert/remove).
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, ClusterState> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_ready(&self) -> bool {
        self.services_listed.load(Ordering::Acquire) && self.nodes_listed.load(Ordering::Acquire)
    }

    pub fn watch_errors(&self) -> u64 {
        self.watch_errors.load(Ordering::Relaxed)
    }

    pub fn is_live(&self) -> bool {
        self.client.is_some()
    }

    /// Lists one namespace's Services from the API server (on a cache miss: Helm creates the
    /// Service and the StatefulSet together, so the watch may lag) and stores them.
    /// Returns false when no live list was possible in time.
    pub async fn refresh_namespace(&self, namespace: &str, budget: Duration) -> bool {
        let Some(client) = &self.client else {
            return false;
        };
        let api: Api<Service> = Api::namespaced(client.clone(), namespace);
        match tokio::time::timeout(budget, api.list(&ListParams::default())).await {
            Ok(Ok(list)) => {
                let views = list
                    .items
                    .iter()
                    .filter_map(ServiceView::from_service)
                    .collect();
                let version = crate::decision::view::resource_version(
                    list.metadata.resource_version.as_deref(),
                );
                self.write().merge_namespace_list(namespace, views, version);
                true
            }
            Ok(Err(err)) => {
                tracing::warn!(%namespace, error = %err, "live list of Services failed");
                false
            }
            Err(_) => {
                tracing::warn!(%namespace, "live list of Services timed out");
                false
            }
        }
    }

    /// Starts watches of Services and Nodes in all namespaces. They run until the process
    /// ends; errors are retried with backoff by the watcher.
    pub fn watched(client: Client) -> Self {
        let shared = Self {
            client: Some(client.clone()),
            ..Self::default()
        };
        tokio::spawn(watch(Api::<Service>::all(client.clone()), shared.clone()));
        tokio::spawn(watch(Api::<Node>::all(client), shared.clone()));
        shared
    }
}

/// How one kind of object is kept in the view: reduced to what the decision reads at once,
/// so the cache never holds managedFields or status it does not use.
trait Cached:
    kube::Resource<DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + 'static
{
    type View: Send;
    const KIND: &'static str;
    fn view(&self) -> Option<Self::View>;
    fn replace_all(state: &mut ClusterState, views: Vec<Self::View>);
    fn upsert(state: &mut ClusterState, view: Self::View);
    fn remove(&self, state: &mut ClusterState);
    fn listed(shared: &SharedCluster) -> &AtomicBool;
}

impl Cached for Service {
    type View = ServiceView;
    const KIND: &'static str = "Services";
    fn view(&self) -> Option<ServiceView> {
        ServiceView::from_service(self)
    }
    fn replace_all(state: &mut ClusterState, views: Vec<ServiceView>) {
        state.replace_all_services(views);
    }
    fn upsert(state: &mut ClusterState, view: ServiceView) {
        state.upsert_service(view);
    }
    fn remove(&self, state: &mut ClusterState) {
        if let (Some(ns), Some(name)) = (&self.metadata.namespace, &self.metadata.name) {
            state.remove_service(ns, name);
        }
    }
    fn listed(shared: &SharedCluster) -> &AtomicBool {
        &shared.services_listed
    }
}

impl Cached for Node {
    type View = NodeView;
    const KIND: &'static str = "Nodes";
    fn view(&self) -> Option<NodeView> {
        NodeView::from_node(self)
    }
    fn replace_all(state: &mut ClusterState, views: Vec<NodeView>) {
        state.replace_all_nodes(views);
    }
    fn upsert(state: &mut ClusterState, view: NodeView) {
        state.upsert_node(view);
    }
    fn remove(&self, state: &mut ClusterState) {
        if let Some(name) = &self.metadata.name {
            state.remove_node(name);
        }
    }
    fn listed(shared: &SharedCluster) -> &AtomicBool {
        &shared.nodes_listed
    }
}

/// One watch: a (re)list replaces the kind's objects wholesale once complete, then events
/// update them one by one. Errors are retried with the watcher's backoff.
async fn watch<K: Cached>(api: Api<K>, shared: SharedCluster) {
    use kube::runtime::WatchStreamExt;
    let mut initial = Vec::new();
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => initial.clear(),
            Ok(Event::InitApply(obj)) => initial.extend(obj.view()),
            Ok(Event::InitDone) => {
                let count = initial.len();
                K::replace_all(&mut shared.write(), std::mem::take(&mut initial));
                K::listed(&shared).store(true, Ordering::Release);
                tracing::info!(kind = K::KIND, count, "listed");
            }
            Ok(Event::Apply(obj)) => {
                if let Some(view) = obj.view() {
                    K::upsert(&mut shared.write(), view);
                }
            }
            Ok(Event::Delete(obj)) => obj.remove(&mut shared.write()),
            Err(err) => {
                shared.watch_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(kind = K::KIND, error = %err, "watch error; retrying");
            }
        }
    }
}
