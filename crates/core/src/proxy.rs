//! Bolt exposed through a TCP proxy in front of an in-cluster Service, as the chart's
//! `externalAccessConfig.gateway` and IngressNginx modes render it: a Gateway API TCPRoute
//! whose backendRef is the Service, on a Gateway listener (client dials a Gateway address at
//! the listener port), or an entry of ingress-nginx's `tcp-services` ConfigMap (client dials
//! the controller Service's external address at the entry's port). Used only when no
//! NodePort or LoadBalancer Service exposes the pod itself (`exposure::locate`).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::address::{self, ExternalAddress, HostSource, Resolution};
use crate::hostport::validate_host;
use crate::nodes::NodeRules;
use crate::pod::Pod;
use crate::service::{port_reaches, selects};
use crate::view::{
    resource_version, ClusterState, ServicePortView, ServiceType, ServiceView,
    EXTERNAL_DNS_ANNOTATION, EXTERNAL_HOST_ANNOTATION,
};

pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// A namespaced object name, `namespace/name` on the command line.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectName {
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not NAMESPACE/NAME (both DNS labels), e.g. ingress-nginx/tcp-services")]
pub struct ObjectNameError(String);

impl std::str::FromStr for ObjectName {
    type Err = ObjectNameError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || ObjectNameError(text.to_string());
        let (namespace, name) = text.split_once('/').ok_or_else(bad)?;
        let label = |s: &str| {
            !s.is_empty()
                && s.len() <= 253
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
                && !s.starts_with(['-', '.'])
                && !s.ends_with(['-', '.'])
        };
        if !label(namespace) || !label(name) {
            return Err(bad());
        }
        Ok(Self {
            namespace: namespace.into(),
            name: name.into(),
        })
    }
}

impl std::fmt::Display for ObjectName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// ingress-nginx's TCP proxy: its `tcp-services` ConfigMap and the controller's Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressNginx {
    pub tcp_services: ObjectName,
    pub controller: ObjectName,
}

impl Default for IngressNginx {
    /// What the chart's IngressNginx mode renders (templates/ingress-nginx.yaml).
    fn default() -> Self {
        Self {
            tcp_services: ObjectName {
                namespace: "ingress-nginx".into(),
                name: "tcp-services".into(),
            },
            controller: ObjectName {
                namespace: "ingress-nginx".into(),
                name: "ingress-nginx-controller".into(),
            },
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerView {
    pub name: String,
    pub port: i32,
    pub protocol: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayAddress {
    /// `IPAddress` (the default), `Hostname`, or an implementation-specific type.
    pub type_: String,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayView {
    pub namespace: String,
    pub name: String,
    pub resource_version: u64,
    pub listeners: Vec<ListenerView>,
    pub addresses: Vec<GatewayAddress>,
    pub external_host_annotation: Option<String>,
    pub external_dns_annotation: Option<String>,
}

/// A parentRef to a Gateway (refs to other kinds are dropped when read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentRef {
    pub namespace: String,
    pub name: String,
    pub section_name: Option<String>,
    pub port: Option<i32>,
}

/// A backendRef to a Service (refs to other kinds are dropped when read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendRef {
    pub namespace: String,
    pub name: String,
    pub port: Option<i32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpRouteView {
    pub namespace: String,
    pub name: String,
    pub resource_version: u64,
    pub parents: Vec<ParentRef>,
    /// The backendRefs of every rule.
    pub backends: Vec<BackendRef>,
    pub external_host_annotation: Option<String>,
    pub external_dns_annotation: Option<String>,
}

/// A ConfigMap's `data`, kept for the `tcp-services` entries it may hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigMapView {
    pub namespace: String,
    pub name: String,
    pub resource_version: u64,
    pub data: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Meta {
    name: Option<String>,
    namespace: Option<String>,
    resource_version: Option<String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

impl Meta {
    fn annotation(&self, key: &str) -> Option<String> {
        self.annotations
            .get(key)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Listener {
    name: String,
    port: i32,
    protocol: String,
}

#[derive(Deserialize)]
struct Address {
    #[serde(rename = "type")]
    type_: Option<String>,
    value: String,
}

#[derive(Deserialize, Default)]
struct GatewaySpec {
    #[serde(default)]
    listeners: Vec<Listener>,
}

#[derive(Deserialize, Default)]
struct GatewayStatus {
    #[serde(default)]
    addresses: Vec<Address>,
}

#[derive(Deserialize)]
struct Gateway {
    #[serde(default)]
    metadata: Meta,
    #[serde(default)]
    spec: GatewaySpec,
    #[serde(default)]
    status: Option<GatewayStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Ref {
    group: Option<String>,
    kind: Option<String>,
    namespace: Option<String>,
    name: String,
    section_name: Option<String>,
    port: Option<i32>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Rule {
    #[serde(default)]
    backend_refs: Vec<Ref>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RouteSpec {
    #[serde(default)]
    parent_refs: Vec<Ref>,
    #[serde(default)]
    rules: Vec<Rule>,
}

#[derive(Deserialize)]
struct Route {
    #[serde(default)]
    metadata: Meta,
    #[serde(default)]
    spec: RouteSpec,
}

#[derive(Deserialize)]
struct ConfigMap {
    #[serde(default)]
    metadata: Meta,
    #[serde(default)]
    data: BTreeMap<String, String>,
}

/// Why an object from the cluster cannot be read as the kind it claims.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("it does not have the shape of a {kind}: {cause}")]
    Shape {
        kind: &'static str,
        cause: serde_json::Error,
    },
    #[error("it has no metadata.name")]
    NoName,
}

fn decode<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
    kind: &'static str,
) -> Result<T, ReadError> {
    serde_json::from_value(value).map_err(|cause| ReadError::Shape { kind, cause })
}

fn names(meta: &Meta) -> Result<(String, String), ReadError> {
    let name = meta.name.clone().ok_or(ReadError::NoName)?;
    Ok((
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        name,
    ))
}

impl GatewayView {
    pub fn from_value(value: serde_json::Value) -> Result<Self, ReadError> {
        let gw: Gateway = decode(value, "Gateway")?;
        let (namespace, name) = names(&gw.metadata)?;
        Ok(Self {
            namespace,
            name,
            resource_version: resource_version(gw.metadata.resource_version.as_deref()),
            listeners: gw
                .spec
                .listeners
                .into_iter()
                .map(|l| ListenerView {
                    name: l.name,
                    port: l.port,
                    protocol: l.protocol,
                })
                .collect(),
            addresses: gw
                .status
                .unwrap_or_default()
                .addresses
                .into_iter()
                .map(|a| GatewayAddress {
                    type_: a.type_.unwrap_or_else(|| "IPAddress".into()),
                    value: a.value,
                })
                .collect(),
            external_host_annotation: gw.metadata.annotation(EXTERNAL_HOST_ANNOTATION),
            external_dns_annotation: gw.metadata.annotation(EXTERNAL_DNS_ANNOTATION),
        })
    }
}

impl TcpRouteView {
    pub fn from_value(value: serde_json::Value) -> Result<Self, ReadError> {
        let route: Route = decode(value, "TCPRoute")?;
        let (namespace, name) = names(&route.metadata)?;
        let in_route_ns = |r: &Ref| r.namespace.clone().unwrap_or_else(|| namespace.clone());
        let parents = route
            .spec
            .parent_refs
            .iter()
            .filter(|r| {
                r.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP
                    && r.kind.as_deref().unwrap_or("Gateway") == "Gateway"
            })
            .map(|r| ParentRef {
                namespace: in_route_ns(r),
                name: r.name.clone(),
                section_name: r.section_name.clone(),
                port: r.port,
            })
            .collect();
        let backends = route
            .spec
            .rules
            .iter()
            .flat_map(|rule| &rule.backend_refs)
            .filter(|r| {
                r.group.as_deref().unwrap_or("").is_empty()
                    && r.kind.as_deref().unwrap_or("Service") == "Service"
            })
            .map(|r| BackendRef {
                namespace: in_route_ns(r),
                name: r.name.clone(),
                port: r.port,
            })
            .collect();
        Ok(Self {
            resource_version: resource_version(route.metadata.resource_version.as_deref()),
            external_host_annotation: route.metadata.annotation(EXTERNAL_HOST_ANNOTATION),
            external_dns_annotation: route.metadata.annotation(EXTERNAL_DNS_ANNOTATION),
            namespace,
            name,
            parents,
            backends,
        })
    }
}

impl ConfigMapView {
    pub fn from_value(value: serde_json::Value) -> Result<Self, ReadError> {
        let cm: ConfigMap = decode(value, "ConfigMap")?;
        let (namespace, name) = names(&cm.metadata)?;
        Ok(Self {
            namespace,
            name,
            resource_version: resource_version(cm.metadata.resource_version.as_deref()),
            data: cm.data,
        })
    }
}

/// One `tcp-services` entry: `"PORT": "NAMESPACE/SERVICE:SERVICEPORT[:PROXY[:PROXY]]"`
/// (ingress-nginx, docs "Exposing TCP and UDP services"). The Service port is a number or
/// a port name.
fn tcp_service_entry(key: &str, value: &str) -> Option<(i32, ObjectName, String)> {
    let external: i32 = key
        .trim()
        .parse()
        .ok()
        .filter(|p| (1..=65535).contains(p))?;
    let mut parts = value.trim().split(':');
    let target: ObjectName = parts.next()?.parse().ok()?;
    let port = parts.next().filter(|p| !p.is_empty())?.to_string();
    if parts.any(|p| p != "PROXY") {
        return None;
    }
    Some((external, target, port))
}

/// How a pod's Bolt port reaches a client through a proxy.
#[derive(Debug)]
pub enum Proxied<'c> {
    Gateway {
        backend: &'c ServiceView,
        route: &'c TcpRouteView,
        gateway: &'c GatewayView,
        listener: &'c ListenerView,
    },
    IngressNginx {
        backend: &'c ServiceView,
        config_map: &'c ConfigMapView,
        controller: &'c ServiceView,
        port: &'c ServicePortView,
    },
    /// A route or entry names the pod's Service, but what it leads to is not there (yet):
    /// the text says what is missing.
    Incomplete(String),
}

/// The in-cluster Services of the pod's namespace that route to its Bolt port, with the
/// port that does: the backends a proxy can name.
fn backends<'c>(
    cluster: &'c ClusterState,
    namespace: &str,
    pod: &Pod<'_>,
    bolt_port: i32,
) -> impl Iterator<Item = (&'c ServiceView, &'c ServicePortView)> + 'c {
    let selected: Vec<_> = cluster
        .services_in(namespace)
        .filter(|svc| svc.type_ != ServiceType::ExternalName && selects(svc, pod).is_ok())
        .filter_map(|svc| {
            svc.ports
                .iter()
                .find(|p| port_reaches(p, bolt_port, pod))
                .map(|p| (svc, p))
        })
        .collect();
    selected.into_iter()
}

/// The proxy in front of the pod's Bolt port, if any: a TCPRoute first (only routes in the
/// Service's own namespace: a route elsewhere needs a ReferenceGrant this does not read),
/// then ingress-nginx's tcp-services.
pub fn find<'c>(
    cluster: &'c ClusterState,
    namespace: &str,
    pod: &Pod<'_>,
    bolt_port: i32,
    nginx: Option<&IngressNginx>,
) -> Option<Proxied<'c>> {
    let backends: Vec<_> = backends(cluster, namespace, pod, bolt_port).collect();
    let mut incomplete = None;
    for (backend, port) in &backends {
        for route in cluster.tcp_routes_in(namespace) {
            let named = route.backends.iter().any(|b| {
                b.namespace == backend.namespace
                    && b.name == backend.name
                    && b.port == Some(port.port)
            });
            if !named {
                continue;
            }
            for parent in &route.parents {
                let Some(gateway) = cluster.gateway(&parent.namespace, &parent.name) else {
                    incomplete.get_or_insert_with(|| {
                        format!(
                            "TCPRoute {}/{} routes to Service {} but its parent Gateway {}/{} does not exist",
                            route.namespace, route.name, backend.name, parent.namespace, parent.name
                        )
                    });
                    continue;
                };
                let listener = gateway.listeners.iter().find(|l| {
                    l.protocol == "TCP"
                        && parent.section_name.as_ref().is_none_or(|s| *s == l.name)
                        && parent.port.is_none_or(|p| p == l.port)
                });
                match listener {
                    Some(listener) => {
                        return Some(Proxied::Gateway {
                            backend,
                            route,
                            gateway,
                            listener,
                        })
                    }
                    None => {
                        incomplete.get_or_insert_with(|| {
                            format!(
                                "TCPRoute {}/{} attaches to Gateway {}/{} {}, but the Gateway has no such TCP listener",
                                route.namespace,
                                route.name,
                                gateway.namespace,
                                gateway.name,
                                parent
                                    .section_name
                                    .as_ref()
                                    .map(|s| format!("listener {s}"))
                                    .unwrap_or_else(|| "(any listener)".into())
                            )
                        });
                    }
                }
            }
        }
    }
    if let Some(nginx) = nginx {
        if let Some(config_map) = cluster.config_map(&nginx.tcp_services) {
            for (backend, port) in &backends {
                let entry = config_map
                    .data
                    .iter()
                    .filter_map(|(k, v)| tcp_service_entry(k, v))
                    .find(|(_, target, target_port)| {
                        target.namespace == backend.namespace
                            && target.name == backend.name
                            && (*target_port == port.port.to_string()
                                || port.name.as_deref() == Some(target_port.as_str()))
                    });
                let Some((external, _, _)) = entry else {
                    continue;
                };
                let ctrl = &nginx.controller;
                let Some(controller) = cluster.service(&ctrl.namespace, &ctrl.name) else {
                    incomplete.get_or_insert_with(|| format!(
                        "ConfigMap {} maps port {external} to Service {}, but the ingress-nginx controller Service {ctrl} does not exist",
                        nginx.tcp_services, backend.name
                    ));
                    continue;
                };
                let exposed = controller.ports.iter().find(|p| {
                    p.protocol == "TCP"
                        && p.port == external
                        && matches!(
                            controller.type_,
                            ServiceType::LoadBalancer | ServiceType::NodePort
                        )
                });
                match exposed {
                    Some(port) => {
                        return Some(Proxied::IngressNginx {
                            backend,
                            config_map,
                            controller,
                            port,
                        })
                    }
                    None => {
                        incomplete.get_or_insert_with(|| format!(
                            "ConfigMap {} maps port {external} to Service {}, but the ingress-nginx controller Service {ctrl} is not a LoadBalancer or NodePort Service with TCP port {external}",
                            nginx.tcp_services, backend.name
                        ));
                    }
                }
            }
        }
    }
    incomplete.map(Proxied::Incomplete)
}

impl Proxied<'_> {
    /// Where the address comes from, for the pod's `source` annotation and the reconciler.
    pub fn describe(&self) -> String {
        match self {
            Proxied::Gateway {
                backend,
                route,
                gateway,
                listener,
            } => format!(
                "Gateway {}/{} listener {} (TCPRoute {} to Service {})",
                gateway.namespace, gateway.name, listener.name, route.name, backend.name
            ),
            Proxied::IngressNginx {
                backend,
                config_map,
                controller,
                port,
            } => format!(
                "ingress-nginx {}/{} port {} ({} {}/{} to Service {})",
                config_map.namespace,
                config_map.name,
                port.port,
                controller.type_.as_str(),
                controller.namespace,
                controller.name,
                backend.name
            ),
            Proxied::Incomplete(why) => why.clone(),
        }
    }

    pub fn resolve(&self, cluster: &ClusterState, rules: &NodeRules<'_>) -> Resolution {
        match self {
            Proxied::Gateway {
                route,
                gateway,
                listener,
                ..
            } => resolve_gateway(route, gateway, listener),
            Proxied::IngressNginx {
                controller, port, ..
            } => {
                // The controller's pods, not the Memgraph pod, answer on its nodePort.
                let mut rules = *rules;
                rules.pod_node = None;
                address::resolve(cluster, controller, port, &rules)
            }
            Proxied::Incomplete(why) => Resolution::Pending(why.clone()),
        }
    }
}

fn resolve_gateway(
    route: &TcpRouteView,
    gateway: &GatewayView,
    listener: &ListenerView,
) -> Resolution {
    let mut warnings = Vec::new();
    let found = |host: String, source: HostSource, warnings: Vec<_>| {
        Resolution::Resolved(ExternalAddress {
            host,
            port: listener.port,
            source,
            warnings,
        })
    };
    // The route's own hostname first (external-dns' gateway-tcproute source reads it there),
    // then the Gateway's.
    for (owner, host_annotation, dns_annotation) in [
        (
            format!("TCPRoute {}/{}", route.namespace, route.name),
            &route.external_host_annotation,
            &route.external_dns_annotation,
        ),
        (
            format!("Gateway {}/{}", gateway.namespace, gateway.name),
            &gateway.external_host_annotation,
            &gateway.external_dns_annotation,
        ),
    ] {
        match address::annotated_host(
            &owner,
            &owner,
            host_annotation.as_deref(),
            dns_annotation.as_deref(),
            "Gateway",
            &mut warnings,
        ) {
            Some(Ok((host, source))) => return found(host, source, warnings),
            Some(Err(why)) => return Resolution::Unusable(why),
            None => {}
        }
    }
    let owner = format!("Gateway {}/{}", gateway.namespace, gateway.name);
    let of_type = |t: &'static str| gateway.addresses.iter().filter(move |a| a.type_ == t);
    let ip = of_type("IPAddress")
        .find(|a| a.value.parse::<std::net::Ipv4Addr>().is_ok())
        .or_else(|| of_type("IPAddress").next());
    for (address, kind) in [(ip, "IPAddress"), (of_type("Hostname").next(), "Hostname")] {
        if let Some(address) = address {
            if let Err(why) = validate_host(&address.value) {
                return Resolution::Unusable(format!(
                    "{owner}: status.addresses {kind} is not a usable host: {why}"
                ));
            }
            return found(
                address.value.clone(),
                HostSource::GatewayAddress { kind: kind.into() },
                warnings,
            );
        }
    }
    Resolution::Pending(format!(
        "{owner} has no IPAddress or Hostname in status.addresses yet (its controller has not programmed it)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_services_entries_are_read_as_ingress_nginx_writes_them() {
        let (port, target, svc_port) =
            tcp_service_entry("9000", "memgraph/memgraph-data-0:7687").expect("the chart's entry");
        assert_eq!(port, 9000);
        assert_eq!(target.to_string(), "memgraph/memgraph-data-0");
        assert_eq!(svc_port, "7687");
        assert!(tcp_service_entry("9001", "ns/svc:bolt:PROXY").is_some());
        for (key, value) in [
            ("x", "ns/svc:7687"),
            ("0", "ns/svc:7687"),
            ("70000", "ns/svc:7687"),
            ("9000", "svc:7687"),
            ("9000", "ns/svc"),
            ("9000", "ns/svc:"),
            ("9000", "ns/svc:7687:EXTRA"),
            ("9000", "NS/svc:7687"),
        ] {
            assert!(tcp_service_entry(key, value).is_none(), "{key}: {value}");
        }
    }

    #[test]
    fn object_names_are_namespace_slash_name() {
        let n: ObjectName = "ingress-nginx/tcp-services".parse().unwrap();
        assert_eq!(n.namespace, "ingress-nginx");
        for bad in ["tcp-services", "/x", "x/", "A/b", "a/b/c", "a b/c"] {
            assert!(bad.parse::<ObjectName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn refs_to_other_kinds_are_dropped_and_namespaces_default_to_the_route_s() {
        let route = TcpRouteView::from_value(serde_json::json!({
            "metadata": {"name": "r", "namespace": "mg"},
            "spec": {
                "parentRefs": [{"name": "gw", "sectionName": "data-0-bolt"},
                               {"name": "other", "kind": "ListenerSet"}],
                "rules": [{"backendRefs": [{"name": "memgraph-data-0", "port": 7687},
                                           {"name": "b", "kind": "Backend", "group": "x.io"}]}]
            }
        }))
        .unwrap();
        assert_eq!(route.parents.len(), 1);
        assert_eq!(route.parents[0].namespace, "mg");
        assert_eq!(route.backends.len(), 1);
        assert_eq!(route.backends[0].port, Some(7687));
        assert!(matches!(
            TcpRouteView::from_value(serde_json::json!({"spec": {}})),
            Err(ReadError::NoName)
        ));
        assert!(matches!(
            GatewayView::from_value(
                serde_json::json!({"metadata": {"name": "g"}, "spec": {"listeners": "x"}})
            ),
            Err(ReadError::Shape { .. })
        ));
    }
}
