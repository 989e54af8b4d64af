//! The cluster view behind the decision, fed either from a state file (`review`,
//! `serve --cluster-state`) or from watches against the API server (`serve`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Service};
use kube::api::{ApiResource, DynamicObject, ListParams};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};

use crate::decision::proxy::{
    ConfigMapView, GatewayView, IngressNginx, TcpRouteView, GATEWAY_GROUP,
};
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
    /// The proxy watches (Gateways, TCPRoutes, the tcp-services ConfigMap): each listed
    /// once, or found not installed (then that exposure is off).
    gateways_listed: Arc<AtomicBool>,
    tcp_routes_listed: Arc<AtomicBool>,
    config_maps_listed: Arc<AtomicBool>,
    /// The ingress-nginx controller's namespace: its Services come along in a live view.
    proxy_namespace: Option<String>,
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
            gateways_listed: Arc::new(AtomicBool::new(true)),
            tcp_routes_listed: Arc::new(AtomicBool::new(true)),
            config_maps_listed: Arc::new(AtomicBool::new(true)),
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
        self.not_listed().is_empty()
    }

    /// The kinds whose first list has not completed (readiness waits for them).
    pub fn not_listed(&self) -> Vec<&'static str> {
        [
            ("Services", &self.services_listed),
            ("Nodes", &self.nodes_listed),
            ("Gateways", &self.gateways_listed),
            ("TCPRoutes", &self.tcp_routes_listed),
            ("the tcp-services ConfigMap", &self.config_maps_listed),
        ]
        .into_iter()
        .filter(|(_, listed)| !listed.load(Ordering::Acquire))
        .map(|(kind, _)| kind)
        .collect()
    }

    /// The proxies of the cache and the ingress-nginx controller's Services, as the view
    /// the reconciler adds to one namespace's objects.
    pub fn proxy_view(&self) -> ClusterState {
        let mut view = ClusterState::default();
        let also: Vec<&str> = self.proxy_namespace.iter().map(String::as_str).collect();
        view.adopt_proxies(&self.read(), &also);
        view
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
        let also: Vec<&str> = self.proxy_namespace.iter().map(String::as_str).collect();
        Some(
            self.read()
                .with_live_namespace(namespace, views.as_ref().clone(), &also),
        )
    }

    /// Starts watches of Services and Nodes in all namespaces, of Gateways and TCPRoutes
    /// where the Gateway API is installed, and of ingress-nginx's tcp-services ConfigMap:
    /// one per kind for the whole process, also feeding `taps` (the routing reconciler).
    /// They run until the process ends; errors are retried with backoff by the watcher.
    pub fn watched(client: Client, mut taps: Taps, nginx: Option<IngressNginx>) -> Self {
        let shared = Self {
            client: Some(client.clone()),
            proxy_namespace: nginx.as_ref().map(|n| n.controller.namespace.clone()),
            ..Self::default()
        };
        // A change of the ingress-nginx controller's Service moves addresses of pods in
        // other namespaces: the reconciler hears of it as a proxy change.
        let mut services_tap = taps.services.take();
        let proxies_tap = taps.proxies.clone();
        let controller = nginx.as_ref().map(|n| n.controller.clone());
        let services_tap: Option<Tap<Service>> = Some(Box::new(move |event: &Event<Service>| {
            if let Some(tap) = services_tap.as_mut() {
                tap(event);
            }
            let is_controller = |svc: &Service| {
                controller.as_ref().is_some_and(|c| {
                    svc.metadata.namespace.as_deref() == Some(c.namespace.as_str())
                        && svc.metadata.name.as_deref() == Some(c.name.as_str())
                })
            };
            let touches = match event {
                Event::Apply(svc) | Event::Delete(svc) | Event::InitApply(svc) => {
                    is_controller(svc)
                }
                Event::Init | Event::InitDone => false,
            };
            if touches {
                if let Some(tap) = &proxies_tap {
                    tap();
                }
            }
        }));
        tokio::spawn(watch(
            Api::<Service>::all(client.clone()),
            shared.clone(),
            services_tap,
        ));
        tokio::spawn(watch(
            Api::<Node>::all(client.clone()),
            shared.clone(),
            taps.nodes,
        ));
        tokio::spawn(watch_gateway_api(
            client.clone(),
            shared.clone(),
            taps.proxies.clone(),
        ));
        match nginx {
            Some(nginx) => {
                let tap = taps.proxies.clone();
                let name = nginx.tcp_services.name.clone();
                let api = Api::<ConfigMap>::namespaced(client, &nginx.tcp_services.namespace);
                let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
                let on_event: Option<Tap<ConfigMap>> =
                    tap.map(|tap| Box::new(move |_: &Event<ConfigMap>| tap()) as Tap<ConfigMap>);
                let shared = shared.clone();
                tokio::spawn(async move {
                    // Without the Role in that namespace (the chart makes it only when asked)
                    // the watch would fail for ever and readiness with it: the exposure is
                    // off instead, said once.
                    let probe = ListParams::default()
                        .fields(&format!("metadata.name={name}"))
                        .limit(1);
                    if let Err(kube::Error::Api(status)) = api.list(&probe).await {
                        if status.code == 403 {
                            tracing::info!(
                                config_map = %nginx.tcp_services,
                                "not allowed to read the ingress-nginx tcp-services ConfigMap: pods behind ingress-nginx get no address from it (give the webhook get/list/watch on it, or set --ingress-nginx-tcp-services to empty to silence this)"
                            );
                            shared.config_maps_listed.store(true, Ordering::Release);
                            return;
                        }
                    }
                    watch_with(api, config, shared, on_event).await
                });
            }
            None => shared.config_maps_listed.store(true, Ordering::Release),
        }
        shared
    }
}

/// The Gateway API's Gateways and TCPRoutes, at the version the API server prefers. Where
/// the CRDs are not installed that exposure is off, said once in the log; installing them
/// later takes a restart.
async fn watch_gateway_api(client: Client, shared: SharedCluster, tap: Option<ProxyTap>) {
    let mut backoff = Duration::from_secs(1);
    let group = loop {
        match kube::discovery::group(&client, GATEWAY_GROUP).await {
            Ok(group) => break Some(group),
            Err(kube::Error::Discovery(_)) => break None,
            Err(err) => {
                shared.watch_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %err, "cannot discover the Gateway API; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    };
    let kind = |name: &str| group.as_ref().and_then(|g| most_stable(g, name));
    for (name, listed) in [
        ("Gateway", &shared.gateways_listed),
        ("TCPRoute", &shared.tcp_routes_listed),
    ] {
        match kind(name) {
            Some((resource, _)) => {
                tracing::info!(kind = name, version = %resource.version, "watching the Gateway API");
                tokio::spawn(watch_dynamic(
                    client.clone(),
                    resource,
                    name == "Gateway",
                    shared.clone(),
                    tap.clone(),
                ));
            }
            None => {
                tracing::info!(
                    kind = name,
                    "the Gateway API's {name} is not installed ({GATEWAY_GROUP}): pods behind a {name} get no address from it; restart after installing its CRDs"
                );
                listed.store(true, Ordering::Release);
            }
        }
    }
}

/// One list of the proxies a pod can sit behind (`routing --in-cluster`): Gateways (all
/// namespaces: a route's parent may be elsewhere), `namespace`'s TCPRoutes, the tcp-services
/// ConfigMap and the ingress-nginx controller's Service. What is not installed, or may not be
/// read, is left out with a line on stderr: that exposure is then off, as in the webhook.
pub async fn list_proxies(
    client: &Client,
    namespace: &str,
    nginx: Option<&IngressNginx>,
) -> ClusterState {
    let mut state = ClusterState::default();
    let skipped = |what: &str, err: &kube::Error| {
        eprintln!("routing: {what} not read ({err}); pods behind it get no address from it");
    };
    match kube::discovery::group(client, GATEWAY_GROUP).await {
        Ok(group) => {
            for (kind, gateway) in [("Gateway", true), ("TCPRoute", false)] {
                let Some((resource, _)) = most_stable(&group, kind) else {
                    continue;
                };
                let api = if gateway {
                    Api::<DynamicObject>::all_with(client.clone(), &resource)
                } else {
                    Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &resource)
                };
                match api.list(&ListParams::default()).await {
                    Ok(list) => {
                        for obj in &list.items {
                            match proxy_view(obj, gateway) {
                                Some(ProxyView::Gateway(g)) => state.upsert_gateway(g),
                                Some(ProxyView::TcpRoute(r)) => state.upsert_tcp_route(r),
                                None => {}
                            }
                        }
                    }
                    Err(err) => skipped(kind, &err),
                }
            }
        }
        Err(kube::Error::Discovery(_)) => {}
        Err(err) => skipped("the Gateway API", &err),
    }
    if let Some(nginx) = nginx {
        let cm = &nginx.tcp_services;
        match Api::<ConfigMap>::namespaced(client.clone(), &cm.namespace)
            .get_opt(&cm.name)
            .await
        {
            Ok(found) => {
                if let Some(view) = found.as_ref().and_then(Cached::view) {
                    state.upsert_config_map(view);
                }
            }
            Err(err) => skipped(&format!("ConfigMap {cm}"), &err),
        }
        let ctrl = &nginx.controller;
        match Api::<Service>::namespaced(client.clone(), &ctrl.namespace)
            .get_opt(&ctrl.name)
            .await
        {
            Ok(found) => {
                if let Some(view) = found.as_ref().and_then(ServiceView::from_service) {
                    state.upsert_service(view);
                }
            }
            Err(err) => skipped(&format!("Service {ctrl}"), &err),
        }
    }
    state
}

/// `kind` at the most stable version its group serves. Not `recommended_kind`: that looks
/// only at the group's preferred version (v1, from Gateway), and a Gateway API release whose
/// experimental channel serves TCPRoute as v1alpha2 only would look as if it had none.
fn most_stable(
    group: &kube::discovery::ApiGroup,
    kind: &str,
) -> Option<(ApiResource, kube::discovery::ApiCapabilities)> {
    group
        .resources_by_stability()
        .into_iter()
        .find(|(resource, _)| resource.kind == kind)
}

/// Called on every change of a proxy object (the reconciler re-checks every namespace).
pub type ProxyTap = Arc<dyn Fn() + Send + Sync>;

enum ProxyView {
    Gateway(GatewayView),
    TcpRoute(TcpRouteView),
}

fn proxy_view(obj: &DynamicObject, gateway: bool) -> Option<ProxyView> {
    let value = serde_json::to_value(obj).ok()?;
    let read = if gateway {
        GatewayView::from_value(value).map(ProxyView::Gateway)
    } else {
        TcpRouteView::from_value(value).map(ProxyView::TcpRoute)
    };
    match read {
        Ok(view) => Some(view),
        Err(err) => {
            tracing::warn!(name = obj.metadata.name.as_deref().unwrap_or_default(), error = %err, "skipped a Gateway API object");
            None
        }
    }
}

async fn watch_dynamic(
    client: Client,
    resource: ApiResource,
    gateway: bool,
    shared: SharedCluster,
    tap: Option<ProxyTap>,
) {
    use kube::runtime::WatchStreamExt;
    let kind = if gateway { "Gateways" } else { "TCPRoutes" };
    let listed = if gateway {
        &shared.gateways_listed
    } else {
        &shared.tcp_routes_listed
    };
    let api = Api::<DynamicObject>::all_with(client, &resource);
    // Installed but not granted (an older ClusterRole): off, said once, rather than a watch
    // failing for ever and readiness with it.
    if let Err(kube::Error::Api(status)) = api.list(&ListParams::default().limit(1)).await {
        if status.code == 403 {
            tracing::warn!(
                kind,
                "not allowed to list {kind}: pods behind a Gateway get no address from it (grant get/list/watch on gateway.networking.k8s.io {kind})"
            );
            listed.store(true, Ordering::Release);
            return;
        }
    }
    let mut initial = Vec::new();
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(event) = stream.next().await {
        if let (Some(tap), Ok(_)) = (&tap, &event) {
            tap();
        }
        match event {
            Ok(Event::Init) => initial.clear(),
            Ok(Event::InitApply(obj)) => initial.extend(proxy_view(&obj, gateway)),
            Ok(Event::InitDone) => {
                let count = initial.len();
                let mut state = shared.write();
                let (mut gateways, mut routes) = (Vec::new(), Vec::new());
                for view in std::mem::take(&mut initial) {
                    match view {
                        ProxyView::Gateway(g) => gateways.push(g),
                        ProxyView::TcpRoute(r) => routes.push(r),
                    }
                }
                if gateway {
                    state.replace_all_gateways(gateways);
                } else {
                    state.replace_all_tcp_routes(routes);
                }
                listed.store(true, Ordering::Release);
                tracing::info!(kind, count, "listed");
            }
            Ok(Event::Apply(obj)) => match proxy_view(&obj, gateway) {
                Some(ProxyView::Gateway(g)) => shared.write().upsert_gateway(g),
                Some(ProxyView::TcpRoute(r)) => shared.write().upsert_tcp_route(r),
                None => {}
            },
            Ok(Event::Delete(obj)) => {
                let ns = obj.metadata.namespace.as_deref().unwrap_or("default");
                let name = obj.metadata.name.as_deref().unwrap_or_default();
                if gateway {
                    shared.write().remove_gateway(ns, name);
                } else {
                    shared.write().remove_tcp_route(ns, name);
                }
            }
            Err(err) => {
                shared.watch_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(kind, error = %err, "watch error; retrying");
            }
        }
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

/// The extra readers of the Service and Node watches, and of the proxy watches.
#[derive(Default)]
pub struct Taps {
    pub services: Option<Tap<Service>>,
    pub nodes: Option<Tap<Node>>,
    pub proxies: Option<ProxyTap>,
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

impl Cached for ConfigMap {
    type View = ConfigMapView;
    const KIND: &'static str = "ConfigMaps";
    fn view(&self) -> Option<ConfigMapView> {
        let value = serde_json::to_value(self).ok()?;
        ConfigMapView::from_value(value).ok()
    }
    fn replace_all(state: &mut ClusterState, views: Vec<ConfigMapView>) {
        state.replace_all_config_maps(views);
    }
    fn upsert(state: &mut ClusterState, view: ConfigMapView) {
        state.upsert_config_map(view);
    }
    fn remove(&self, state: &mut ClusterState) {
        if let (Some(ns), Some(name)) = (&self.metadata.namespace, &self.metadata.name) {
            state.remove_config_map(ns, name);
        }
    }
    fn listed(shared: &SharedCluster) -> &AtomicBool {
        &shared.config_maps_listed
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
async fn watch<K: Cached>(api: Api<K>, shared: SharedCluster, tap: Option<Tap<K>>) {
    watch_with(api, watcher::Config::default(), shared, tap).await
}

async fn watch_with<K: Cached>(
    api: Api<K>,
    config: watcher::Config,
    shared: SharedCluster,
    mut tap: Option<Tap<K>>,
) {
    use kube::runtime::WatchStreamExt;
    let mut initial = Vec::new();
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
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
