//! The slice of the cluster that the decision reads: Services and Nodes, reduced to the
//! fields it uses. Both the watch-fed cache and the state file build these, so nothing here
//! keeps `managedFields`, status conditions or anything else the decision never looks at.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::proxy::{ConfigMapView, GatewayView, ObjectName, TcpRouteView};

/// Annotation an operator sets on a Service to name the host clients should use.
pub const EXTERNAL_HOST_ANNOTATION: &str = "memgraph-address-injector/external-host";
/// external-dns' annotation; the chart sets it per instance when asked to.
pub const EXTERNAL_DNS_ANNOTATION: &str = "external-dns.alpha.kubernetes.io/hostname";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalName,
}

impl ServiceType {
    pub fn parse(value: Option<&str>) -> Self {
        match value {
            Some("NodePort") => Self::NodePort,
            Some("LoadBalancer") => Self::LoadBalancer,
            Some("ExternalName") => Self::ExternalName,
            _ => Self::ClusterIp,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIp => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
            Self::ExternalName => "ExternalName",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    Number(i32),
    Name(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortView {
    pub name: Option<String>,
    pub protocol: String,
    pub port: i32,
    pub target_port: Option<TargetPort>,
    pub node_port: Option<i32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadBalancerIngress {
    pub ip: Option<String>,
    pub hostname: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceView {
    pub namespace: String,
    pub name: String,
    /// `metadata.resourceVersion` as a number (etcd's revision); 0 when unknown (state files).
    /// Lets a live list and the watch merge without the older copy winning.
    pub resource_version: u64,
    pub type_: ServiceType,
    /// `clusterIP: None`: a headless Service never matches.
    pub headless: bool,
    pub selector: BTreeMap<String, String>,
    pub ports: Vec<ServicePortView>,
    pub external_ips: Vec<String>,
    pub external_traffic_policy_local: bool,
    pub external_host_annotation: Option<String>,
    pub external_dns_annotation: Option<String>,
    pub ingress: Vec<LoadBalancerIngress>,
}

impl ServiceView {
    pub fn from_service(svc: &Service) -> Option<Self> {
        let meta = &svc.metadata;
        let name = meta.name.clone()?;
        let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
        let spec = svc.spec.as_ref();
        let annotation = |key: &str| {
            meta.annotations
                .as_ref()
                .and_then(|a| a.get(key))
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let ports = spec
            .and_then(|s| s.ports.as_ref())
            .map(|ports| {
                ports
                    .iter()
                    .map(|p| ServicePortView {
                        name: p.name.clone(),
                        protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        port: p.port,
                        target_port: p.target_port.as_ref().map(|t| match t {
                            IntOrString::Int(n) => TargetPort::Number(*n),
                            IntOrString::String(s) => match s.parse::<i32>() {
                                Ok(n) => TargetPort::Number(n),
                                Err(_) => TargetPort::Name(s.clone()),
                            },
                        }),
                        node_port: p.node_port,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .map(|list| {
                list.iter()
                    .map(|i| LoadBalancerIngress {
                        ip: i.ip.clone().filter(|v| !v.is_empty()),
                        hostname: i.hostname.clone().filter(|v| !v.is_empty()),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(Self {
            namespace,
            name,
            resource_version: resource_version(meta.resource_version.as_deref()),
            type_: ServiceType::parse(spec.and_then(|s| s.type_.as_deref())),
            headless: spec.and_then(|s| s.cluster_ip.as_deref()) == Some("None"),
            selector: spec
                .and_then(|s| s.selector.clone())
                .unwrap_or_default()
                .into_iter()
                .collect(),
            ports,
            external_ips: spec
                .and_then(|s| s.external_ips.clone())
                .unwrap_or_default(),
            external_traffic_policy_local: spec.and_then(|s| s.external_traffic_policy.as_deref())
                == Some("Local"),
            external_host_annotation: annotation(EXTERNAL_HOST_ANNOTATION),
            external_dns_annotation: annotation(EXTERNAL_DNS_ANNOTATION),
            ingress,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub ready: bool,
    pub unschedulable: bool,
    /// `(type, address)` in the order the Node reports them.
    pub addresses: Vec<(String, String)>,
    /// For `--node-selector`.
    pub labels: BTreeMap<String, String>,
}

impl NodeView {
    pub fn from_node(node: &Node) -> Option<Self> {
        let name = node.metadata.name.clone()?;
        let status = node.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .map(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            .unwrap_or(false);
        Some(Self {
            name,
            ready,
            unschedulable: node
                .spec
                .as_ref()
                .and_then(|s| s.unschedulable)
                .unwrap_or(false),
            addresses: status
                .and_then(|s| s.addresses.as_ref())
                .map(|a| {
                    a.iter()
                        .map(|a| (a.type_.clone(), a.address.clone()))
                        .collect()
                })
                .unwrap_or_default(),
            labels: node.metadata.labels.clone().unwrap_or_default(),
        })
    }
}

pub fn resource_version(text: Option<&str>) -> u64 {
    text.and_then(|t| t.parse().ok()).unwrap_or(0)
}

/// Services indexed by namespace (then name) and Nodes by name: a lookup touches one
/// namespace, never the whole cluster.
#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    services: HashMap<String, BTreeMap<String, ServiceView>>,
    nodes: BTreeMap<String, NodeView>,
    /// The proxies that may carry Bolt (`proxy`): few objects, kept whole.
    gateways: BTreeMap<ObjectName, GatewayView>,
    tcp_routes: BTreeMap<String, BTreeMap<String, TcpRouteView>>,
    config_maps: BTreeMap<ObjectName, ConfigMapView>,
}

fn key(namespace: &str, name: &str) -> ObjectName {
    ObjectName {
        namespace: namespace.into(),
        name: name.into(),
    }
}

/// Inserts unless the map holds a newer copy (0: a state file, no version).
fn upsert_versioned<K: Ord, V>(map: &mut BTreeMap<K, V>, k: K, v: V, rv: impl Fn(&V) -> u64) {
    match map.get(&k) {
        Some(cached) if rv(&v) != 0 && rv(cached) > rv(&v) => {}
        _ => {
            map.insert(k, v);
        }
    }
}

impl ClusterState {
    pub fn services_in<'s>(&'s self, namespace: &str) -> impl Iterator<Item = &'s ServiceView> {
        self.services
            .get(namespace)
            .into_iter()
            .flat_map(|m| m.values())
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&ServiceView> {
        self.services.get(namespace).and_then(|m| m.get(name))
    }

    /// Nodes sorted by name.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeView> {
        self.nodes.values()
    }

    /// Inserts or replaces a Service, unless the cache already holds a newer copy of it.
    pub fn upsert_service(&mut self, svc: ServiceView) {
        let namespace = self.services.entry(svc.namespace.clone()).or_default();
        match namespace.get(&svc.name) {
            Some(cached)
                if svc.resource_version != 0 && cached.resource_version > svc.resource_version => {}
            _ => {
                namespace.insert(svc.name.clone(), svc);
            }
        }
    }

    pub fn remove_service(&mut self, namespace: &str, name: &str) {
        if let Some(m) = self.services.get_mut(namespace) {
            m.remove(name);
            if m.is_empty() {
                self.services.remove(namespace);
            }
        }
    }

    /// The view one request decides against after a cache miss: this view's Nodes and the
    /// namespace's Services exactly as a live list returned them. The cache itself is never
    /// written from a list (only the watch writes it), so a list taken before a delete can
    /// never bring the deleted Service back.
    /// `also` names namespaces whose cached Services come along (a proxy's own Service,
    /// such as the ingress-nginx controller's); the proxies come along whole.
    pub fn with_live_namespace(
        &self,
        namespace: &str,
        services: Vec<ServiceView>,
        also: &[&str],
    ) -> Self {
        let listed: BTreeMap<String, ServiceView> = services
            .into_iter()
            .filter(|s| s.namespace == namespace)
            .map(|s| (s.name.clone(), s))
            .collect();
        let mut all = HashMap::from([(namespace.to_string(), listed)]);
        for other in also.iter().filter(|o| **o != namespace) {
            if let Some(cached) = self.services.get(*other) {
                all.insert(other.to_string(), cached.clone());
            }
        }
        Self {
            services: all,
            nodes: self.nodes.clone(),
            gateways: self.gateways.clone(),
            tcp_routes: self.tcp_routes.clone(),
            config_maps: self.config_maps.clone(),
        }
    }

    /// The proxies of `other` (Gateways, TCPRoutes, ConfigMaps), and its Services of the
    /// namespaces in `also`, replace this view's: the reconciler's view of one namespace
    /// takes them from the webhook's watches.
    pub fn adopt_proxies(&mut self, other: &ClusterState, also: &[&str]) {
        self.gateways = other.gateways.clone();
        self.tcp_routes = other.tcp_routes.clone();
        self.config_maps = other.config_maps.clone();
        for ns in also {
            if let Some(cached) = other.services.get(*ns) {
                self.services.insert(ns.to_string(), cached.clone());
            }
        }
    }

    pub fn gateway(&self, namespace: &str, name: &str) -> Option<&GatewayView> {
        self.gateways.get(&key(namespace, name))
    }

    pub fn tcp_routes_in<'s>(&'s self, namespace: &str) -> impl Iterator<Item = &'s TcpRouteView> {
        self.tcp_routes
            .get(namespace)
            .into_iter()
            .flat_map(|m| m.values())
    }

    pub fn config_map(&self, name: &ObjectName) -> Option<&ConfigMapView> {
        self.config_maps.get(name)
    }

    pub fn upsert_gateway(&mut self, gw: GatewayView) {
        let k = key(&gw.namespace, &gw.name);
        upsert_versioned(&mut self.gateways, k, gw, |g| g.resource_version);
    }

    pub fn remove_gateway(&mut self, namespace: &str, name: &str) {
        self.gateways.remove(&key(namespace, name));
    }

    pub fn replace_all_gateways(&mut self, gateways: Vec<GatewayView>) {
        self.gateways.clear();
        gateways.into_iter().for_each(|g| self.upsert_gateway(g));
    }

    pub fn upsert_tcp_route(&mut self, route: TcpRouteView) {
        let ns = self.tcp_routes.entry(route.namespace.clone()).or_default();
        upsert_versioned(ns, route.name.clone(), route, |r| r.resource_version);
    }

    pub fn remove_tcp_route(&mut self, namespace: &str, name: &str) {
        if let Some(m) = self.tcp_routes.get_mut(namespace) {
            m.remove(name);
            if m.is_empty() {
                self.tcp_routes.remove(namespace);
            }
        }
    }

    pub fn replace_all_tcp_routes(&mut self, routes: Vec<TcpRouteView>) {
        self.tcp_routes.clear();
        routes.into_iter().for_each(|r| self.upsert_tcp_route(r));
    }

    pub fn upsert_config_map(&mut self, cm: ConfigMapView) {
        let k = key(&cm.namespace, &cm.name);
        upsert_versioned(&mut self.config_maps, k, cm, |c| c.resource_version);
    }

    pub fn remove_config_map(&mut self, namespace: &str, name: &str) {
        self.config_maps.remove(&key(namespace, name));
    }

    pub fn replace_all_config_maps(&mut self, maps: Vec<ConfigMapView>) {
        self.config_maps.clear();
        maps.into_iter().for_each(|c| self.upsert_config_map(c));
    }

    /// Gateways, TCPRoutes and ConfigMaps held.
    pub fn proxy_object_count(&self) -> usize {
        self.gateways.len()
            + self.tcp_routes.values().map(|m| m.len()).sum::<usize>()
            + self.config_maps.len()
    }

    pub fn replace_all_services(&mut self, services: Vec<ServiceView>) {
        self.services.clear();
        for s in services {
            self.upsert_service(s);
        }
    }

    pub fn upsert_node(&mut self, node: NodeView) {
        self.nodes.insert(node.name.clone(), node);
    }

    pub fn remove_node(&mut self, name: &str) {
        self.nodes.remove(name);
    }

    pub fn replace_all_nodes(&mut self, nodes: Vec<NodeView>) {
        self.nodes = nodes.into_iter().map(|n| (n.name.clone(), n)).collect();
    }

    pub fn service_count(&self) -> usize {
        self.services.values().map(|m| m.len()).sum()
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, rv: u64, port: i32) -> ServiceView {
        ServiceView {
            namespace: "ns".into(),
            name: name.into(),
            resource_version: rv,
            type_: ServiceType::NodePort,
            headless: false,
            selector: BTreeMap::new(),
            ports: vec![ServicePortView {
                name: None,
                protocol: "TCP".into(),
                port,
                target_port: None,
                node_port: None,
            }],
            external_ips: vec![],
            external_traffic_policy_local: false,
            external_host_annotation: None,
            external_dns_annotation: None,
            ingress: vec![],
        }
    }

    #[test]
    fn a_newer_watch_copy_wins_and_state_files_replace() {
        let mut state = ClusterState::default();
        state.upsert_service(svc("a", 20, 2));
        state.upsert_service(svc("a", 10, 1));
        assert_eq!(state.service("ns", "a").unwrap().ports[0].port, 2);
        // State files carry no versions: plain replacement.
        state.upsert_service(svc("a", 0, 3));
        assert_eq!(state.service("ns", "a").unwrap().ports[0].port, 3);
    }

    #[test]
    fn a_live_list_answers_one_request_and_never_touches_the_cache() {
        // The race: a live list is taken while `gone` still exists; the watch then delivers
        // its deletion; the list's answer arrives afterwards.
        let mut cache = ClusterState::default();
        cache.upsert_service(svc("gone", 5, 1));
        cache.upsert_node(NodeView {
            name: "n".into(),
            ready: true,
            unschedulable: false,
            addresses: vec![("ExternalIP".into(), "203.0.113.1".into())],
            labels: BTreeMap::new(),
        });
        let list_taken_before_delete = vec![svc("gone", 5, 1)];
        cache.remove_service("ns", "gone");
        let live = cache.with_live_namespace("ns", list_taken_before_delete, &[]);
        // The request that asked sees what the list saw ...
        assert!(live.service("ns", "gone").is_some());
        assert_eq!(live.node_count(), 1);
        // ... and the cache, which only the watch writes, keeps the deletion.
        assert!(cache.service("ns", "gone").is_none());
        assert_eq!(cache.service_count(), 0);
    }
}
