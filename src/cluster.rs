//! The cluster view behind the decision, fed either from a state file (`review`,
//! `serve --cluster-state`) or from watches against the API server (`serve`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::ListParams;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};

pub use crate::decision::state::{
    parse_documents, state_from_text, visit_objects, RawObject, StateError,
};
use crate::decision::view::{ClusterState, NodeView, ServiceView};
use crate::single_flight::SingleFlight;

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
    /// One live Service list per namespace at a time.
    live_lists: SingleFlight<Option<Arc<Vec<ServiceView>>>>,
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

    /// A live list of one namespace's Services, after a cache miss, as the view that one
    /// request decides against (`None` when there is no API server, or the list failed or
    /// ran out of `budget`). Only the watch writes the cache: a list taken before a delete
    /// and answered after it must not bring the Service back for everyone.
    pub async fn live_view(&self, namespace: &str, budget: Duration) -> Option<ClusterState> {
        let client = self.client.as_ref()?;
        // Requests that miss while a list of the namespace runs wait for that list, each
        // within its own budget.
        let api: Api<Service> = Api::namespaced(client.clone(), namespace);
        let owned_namespace = namespace.to_string();
        let flight = self.live_lists.run(namespace, move || async move {
            list_services(api, &owned_namespace, budget)
                .await
                .map(Arc::new)
        });
        let views = tokio::time::timeout(budget, flight).await.ok().flatten()?;
        Some(
            self.read()
                .with_live_namespace(namespace, views.as_ref().clone()),
        )
    }

    /// Starts watches of Services and Nodes in all namespaces: one per kind for the whole
    /// process, also feeding `taps` (the routing reconciler). They run until the process
    /// ends; errors are retried with backoff by the watcher.
    pub fn watched(client: Client, taps: Taps) -> Self {
        let shared = Self {
            client: Some(client.clone()),
            ..Self::default()
        };
        tokio::spawn(watch(
            Api::<Service>::all(client.clone()),
            shared.clone(),
            taps.services,
        ));
        tokio::spawn(watch(Api::<Node>::all(client), shared.clone(), taps.nodes));
        shared
    }
}

async fn list_services(
    api: Api<Service>,
    namespace: &str,
    budget: Duration,
) -> Option<Vec<ServiceView>> {
    match tokio::time::timeout(budget, api.list(&ListParams::default())).await {
        Ok(Ok(list)) => Some(
            list.items
                .iter()
                .filter_map(ServiceView::from_service)
                .collect(),
        ),
        Ok(Err(err)) => {
            tracing::warn!(%namespace, error = %err, "live list of Services failed");
            None
        }
        Err(_) => {
            tracing::warn!(%namespace, "live list of Services timed out");
            None
        }
    }
}

/// Another reader of a watch's events (the routing reconciler's store), so that each kind
/// is watched once per process.
pub type Tap<K> = Box<dyn FnMut(&Event<K>) + Send>;

/// The extra readers of the Service and Node watches.
#[derive(Default)]
pub struct Taps {
    pub services: Option<Tap<Service>>,
    pub nodes: Option<Tap<Node>>,
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
async fn watch<K: Cached>(api: Api<K>, shared: SharedCluster, mut tap: Option<Tap<K>>) {
    use kube::runtime::WatchStreamExt;
    let mut initial = Vec::new();
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(event) = stream.next().await {
        if let (Some(tap), Ok(event)) = (tap.as_mut(), &event) {
            tap(event);
        }
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
