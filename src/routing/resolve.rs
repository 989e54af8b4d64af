//! Which external address an instance of the routing table should have. The instance is
//! found from its registered in-cluster name; its pod is then decided exactly as the webhook
//! decides it: the same Memgraph facts (`decision::pod`), the same Service ranking
//! (`decision::service::choose`) and the same host and port rules (`decision::address`),
//! with the node in use kept while it is usable. The pod's admission-time annotation is only
//! the fallback (docs/design.md, "What the external address is"). Pure: the cluster
//! view is built by the caller (`from_objects`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod, Service};

use crate::decision::address::Resolution;
use crate::decision::exposure::{self, Exposure, Located};
use crate::decision::nodes::NodeRules;
use crate::decision::pod::{self as pod_facts, Version, SERVICE_ANNOTATION};
use crate::decision::view::{ClusterState, NodeView, ServiceView};
use crate::decision::{Config, ADDRESS_ANNOTATION};

/// What an in-cluster address points at.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    Service { namespace: String, name: String },
    Pod { namespace: String, name: String },
}

impl Target {
    /// `svc.ns.svc[.cluster.local]`, `pod.svc.ns.svc[...]` (StatefulSet pod DNS), or a bare
    /// `svc` in `default_ns`. Anything else has no known target.
    pub fn from_cluster_name(host: &str, default_ns: &str) -> Option<Self> {
        let labels: Vec<&str> = host.split('.').collect();
        match labels.iter().position(|l| *l == "svc") {
            Some(2) => Some(Target::Service {
                namespace: labels[1].into(),
                name: labels[0].into(),
            }),
            Some(3) => Some(Target::Pod {
                namespace: labels[2].into(),
                name: labels[0].into(),
            }),
            None if labels.len() == 1 && !host.is_empty() => Some(Target::Service {
                namespace: default_ns.into(),
                name: host.into(),
            }),
            None if labels.len() == 2 => Some(Target::Service {
                namespace: labels[1].into(),
                name: labels[0].into(),
            }),
            _ => None,
        }
    }

    fn namespace(&self) -> &str {
        match self {
            Target::Service { namespace, .. } | Target::Pod { namespace, .. } => namespace,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub ips: Vec<String>,
    /// The StatefulSet that controls the pod (the chart's instances all have one).
    pub statefulset: Option<String>,
    /// `{"metadata", "spec"}` as JSON, decided as the webhook decides a pod.
    pub raw: String,
}

/// The name a coordinator's Bolt certificate carries: the chart's per-instance Service,
/// named after the StatefulSet. A reconciler or `routing sync` dials the pod IP, so the
/// certificate is checked against this name instead.
pub fn tls_name(statefulset: &str, namespace: &str) -> String {
    format!("{statefulset}.{namespace}.svc.cluster.local")
}

/// The StatefulSet that controls a pod (`controller: true`, apps/v1), if any.
pub fn controlling_statefulset(pod: &Pod) -> Option<String> {
    pod.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| {
            o.kind == "StatefulSet" && o.api_version == "apps/v1" && o.controller == Some(true)
        })
        .map(|o| o.name.clone())
}

/// Services, Nodes and Pods as `routing` needs them.
#[derive(Clone, Debug, Default)]
pub struct RoutingCluster {
    pub state: ClusterState,
    pub pods: Vec<PodInfo>,
    /// ClusterIP → Service.
    pub cluster_ips: BTreeMap<String, (String, String)>,
    /// Namespace of bare names.
    pub namespace: String,
    /// The webhook's decision settings: recognition, node address types, node selector.
    pub config: Config,
}

/// Where an external address came from, or why there is none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum External {
    Found {
        address: String,
        source: String,
    },
    Unknown(String),
    /// The cluster gives a value that is not a host (an annotation, an ingress hostname):
    /// refused, never written.
    Invalid(String),
}

impl RoutingCluster {
    /// Takes the proxies (Gateways, TCPRoutes, ConfigMaps) of `proxies`, and its Services of
    /// the ingress-nginx controller's namespace, into this view.
    pub fn adopt_proxies(&mut self, proxies: &ClusterState) {
        let also: Vec<&str> = self
            .config
            .ingress_nginx
            .iter()
            .map(|n| n.controller.namespace.as_str())
            .collect();
        self.state.adopt_proxies(proxies, &also);
    }

    pub fn from_objects(
        services: &[Service],
        nodes: &[Node],
        pods: &[Pod],
        namespace: &str,
        config: Config,
    ) -> Self {
        let mut cluster = RoutingCluster {
            namespace: namespace.to_string(),
            config,
            ..Self::default()
        };
        for svc in services {
            let Some(view) = ServiceView::from_service(svc) else {
                continue;
            };
            let spec = svc.spec.as_ref();
            let ips = spec
                .and_then(|s| s.cluster_ips.clone())
                .unwrap_or_default()
                .into_iter()
                .chain(spec.and_then(|s| s.cluster_ip.clone()));
            for ip in ips.filter(|ip| !ip.is_empty() && ip != "None") {
                cluster
                    .cluster_ips
                    .insert(ip, (view.namespace.clone(), view.name.clone()));
            }
            cluster.state.upsert_service(view);
        }
        for node in nodes {
            if let Some(view) = NodeView::from_node(node) {
                cluster.state.upsert_node(view);
            }
        }
        for pod in pods {
            let meta = &pod.metadata;
            let Some(name) = meta.name.clone() else {
                continue;
            };
            let status = pod.status.as_ref();
            let ips = status
                .and_then(|s| s.pod_ips.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|p| p.ip)
                .chain(status.and_then(|s| s.pod_ip.clone()))
                .filter(|ip| !ip.is_empty())
                .collect();
            let raw = serde_json::json!({"metadata": &pod.metadata, "spec": &pod.spec}).to_string();
            cluster.pods.push(PodInfo {
                namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
                name,
                labels: meta.labels.clone().unwrap_or_default(),
                annotations: meta.annotations.clone().unwrap_or_default(),
                ips,
                statefulset: controlling_statefulset(pod),
                raw,
            });
        }
        cluster
            .pods
            .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        cluster
    }

    /// The Service whose ClusterIP, or the pod whose IP, this is; with a description.
    pub fn owner_of_ip(&self, ip: &str) -> Option<(Target, String)> {
        if let Some((namespace, name)) = self.cluster_ips.get(ip) {
            return Some((
                Target::Service {
                    namespace: namespace.clone(),
                    name: name.clone(),
                },
                format!("the ClusterIP of Service {namespace}/{name}"),
            ));
        }
        self.pods
            .iter()
            .find(|p| p.ips.iter().any(|i| i == ip))
            .map(|p| {
                (
                    Target::Pod {
                        namespace: p.namespace.clone(),
                        name: p.name.clone(),
                    },
                    format!("the IP of pod {}/{}", p.namespace, p.name),
                )
            })
    }

    fn pods_selected<'s>(
        &'s self,
        namespace: &'s str,
        selector: &'s BTreeMap<String, String>,
    ) -> impl Iterator<Item = &'s PodInfo> + 's {
        self.pods.iter().filter(move |p| {
            p.namespace == namespace
                && !selector.is_empty()
                && selector.iter().all(|(k, v)| p.labels.get(k) == Some(v))
        })
    }

    /// The external address for what `target` names (`bolt_port` only names the port in
    /// messages; the pod's own Bolt port is used, as the webhook does).
    pub fn external_for(&self, target: &Target, bolt_port: i32) -> External {
        self.external_keeping(target, bolt_port, None)
    }

    /// As `external_for`, keeping `current` (the address registered now) while the node that
    /// carries it stays usable, so that a NodePort entry does not move without need.
    pub fn external_keeping(
        &self,
        target: &Target,
        bolt_port: i32,
        current: Option<&str>,
    ) -> External {
        let namespace = target.namespace();
        let pod = match target {
            Target::Pod { name, .. } => {
                match self
                    .pods
                    .iter()
                    .find(|p| p.namespace == namespace && &p.name == name)
                {
                    Some(p) => p,
                    None => {
                        return External::Unknown(format!(
                            "pod {namespace}/{name} is not in the cluster view (add pods: kubectl get svc,nodes,pods -A -o yaml)"
                        ))
                    }
                }
            }
            Target::Service { name, .. } => {
                let Some(svc) = self.state.service(namespace, name) else {
                    return External::Unknown(format!(
                        "Service {namespace}/{name} is not in the cluster view"
                    ));
                };
                match self.pods_selected(namespace, &svc.selector).next() {
                    Some(p) => p,
                    None => {
                        return External::Unknown(format!(
                            "no pod of Service {namespace}/{name} is in the cluster view (add pods: kubectl get svc,nodes,pods -A -o yaml)"
                        ))
                    }
                }
            }
        };
        // The Service is the current truth (a LoadBalancer IP or the nodes may have changed
        // since the pod was created); the pod's annotation, written once at admission, is
        // the fallback. Anyone who may patch pods can edit it, so it never wins.
        let annotated = pod.annotations.get(ADDRESS_ANNOTATION).cloned();
        let current = self.decide_pod(pod, bolt_port, current);
        match (current, annotated) {
            (External::Found { address, source }, Some(annotation)) if annotation != address => External::Found {
                source: format!("{source}; pod {}'s annotation {ADDRESS_ANNOTATION} says {annotation}, set at its creation and now out of date", pod.name),
                address,
            },
            (found @ External::Found { .. }, _) => found,
            (External::Unknown(why), Some(annotation)) => match crate::decision::hostport::HostPort::parse(&annotation, None) {
                Ok(_) => External::Found {
                    address: annotation,
                    source: format!("pod {namespace}/{} annotation {ADDRESS_ANNOTATION} (no current Service address: {why})", pod.name),
                },
                Err(bad) => External::Unknown(format!("{why}; pod {}'s annotation {ADDRESS_ANNOTATION} is not usable: {bad}", pod.name)),
            },
            (invalid @ External::Invalid(_), _) => invalid,
            (unknown, None) => unknown,
        }
    }

    /// The Memgraph version of the coordinators in `namespace`, read as the webhook reads it
    /// (the version annotation, then the image tag; never `SHOW VERSION`, which coordinators
    /// refuse through 3.12). The lowest when they differ (a rolling upgrade); `None` when one
    /// of them has no readable version (`latest`, a digest) or there is no coordinator.
    pub fn memgraph_version(&self, namespace: &str) -> Option<Version> {
        let mut lowest: Option<Version> = None;
        for info in self.pods.iter().filter(|p| p.namespace == namespace) {
            let Ok(pod) = serde_json::from_str::<pod_facts::Pod<'_>>(&info.raw) else {
                continue;
            };
            let Ok(Some(mg)) = pod_facts::memgraph_pod(&pod, &self.config.recognition) else {
                continue;
            };
            if mg.role != pod_facts::Role::Coordinator {
                continue;
            }
            if mg.version_source == pod_facts::VersionSource::Default {
                return None;
            }
            lowest = Some(lowest.map_or(mg.version, |v| v.min(mg.version)));
        }
        lowest
    }

    /// Where a coordinator pod listens for Bolt inside the cluster: its pod IP and Bolt port
    /// (as the webhook reads it), with the name its certificate carries.
    pub fn pod_endpoint(&self, info: &PodInfo) -> Option<(String, u16, Option<String>)> {
        let ip = info
            .ips
            .iter()
            .find(|ip| crate::decision::hostport::is_ip(ip))?
            .clone();
        let pod = serde_json::from_str::<pod_facts::Pod<'_>>(&info.raw).ok()?;
        let mg = pod_facts::memgraph_pod(&pod, &self.config.recognition).ok()??;
        let port = u16::try_from(mg.bolt_port).ok()?;
        let name = info
            .statefulset
            .as_deref()
            .map(|sts| tls_name(sts, &info.namespace));
        Some((ip, port, name))
    }

    /// The pod a target names: the pod itself, or the first pod its Service selects.
    pub fn pod_for(&self, target: &Target) -> Option<&PodInfo> {
        match target {
            Target::Pod { namespace, name } => self
                .pods
                .iter()
                .find(|p| &p.namespace == namespace && &p.name == name),
            Target::Service { namespace, name } => {
                let svc = self.state.service(namespace, name)?;
                let mut selected = self.pods.iter().filter(|p| {
                    &p.namespace == namespace
                        && !svc.selector.is_empty()
                        && svc.selector.iter().all(|(k, v)| p.labels.get(k) == Some(v))
                });
                // A selector may also match a look-alike; the StatefulSet's pod is the
                // instance (and the only one `routing sync` sends credentials to).
                let first = selected.clone().next();
                selected.find(|p| p.statefulset.is_some()).or(first)
            }
        }
    }

    /// The pod decided as the webhook decides it, against the current Services and Nodes.
    fn decide_pod(&self, info: &PodInfo, bolt_port: i32, current: Option<&str>) -> External {
        let namespace = &info.namespace;
        let pod: pod_facts::Pod<'_> = match serde_json::from_str(&info.raw) {
            Ok(pod) => pod,
            Err(e) => {
                return External::Unknown(format!(
                    "pod {namespace}/{} cannot be read: {e}",
                    info.name
                ))
            }
        };
        let mg = match pod_facts::memgraph_pod(&pod, &self.config.recognition) {
            Ok(Some(mg)) => mg,
            Ok(None) => {
                return External::Unknown(format!(
                    "pod {namespace}/{} has no Memgraph container in the cluster view (its spec is needed: kubectl get pods -o yaml)",
                    info.name
                ))
            }
            Err(e) => return External::Unknown(format!("pod {namespace}/{}: {e}", info.name)),
        };
        let exposure = match exposure::locate(
            &self.state,
            namespace,
            &pod,
            &mg,
            pod.annotation(SERVICE_ANNOTATION),
            self.config.ingress_nginx.as_ref(),
        ) {
            Located::Exposed { exposure, .. } => exposure,
            Located::NotExposed => {
                return External::Unknown(format!(
                    "nothing in {namespace} exposes the Bolt port {} of pod {} (expected {bolt_port}): no NodePort or LoadBalancer Service selects it, and no TCPRoute or ingress-nginx tcp-services entry names a Service that does",
                    mg.bolt_port,
                    info.name
                ))
            }
            Located::NamedMissing(name) => {
                return External::Unknown(format!(
                    "pod {} names Service {name} in {SERVICE_ANNOTATION}, which does not exist",
                    info.name
                ))
            }
            Located::NamedUnqualified(name, why) => {
                return External::Unknown(format!(
                    "pod {} names Service {name} in {SERVICE_ANNOTATION}, which cannot expose it: {why}",
                    info.name
                ))
            }
        };
        let keep = current.map(crate::decision::hostport::host_of);
        let mut rules = NodeRules::new(&self.config.node_address_types, &self.config.node_selector);
        rules.keep_host = keep;
        rules.pod_node = pod.node_name();
        describe(&exposure, exposure.resolve(&self.state, &rules))
    }
}

fn describe(exposure: &Exposure<'_>, resolution: Resolution) -> External {
    match resolution {
        Resolution::Resolved(ext) => External::Found {
            address: ext.address(),
            source: match exposure {
                Exposure::Service { service, .. } => format!(
                    "Service {}/{}, {}",
                    service.namespace,
                    service.name,
                    ext.source.describe()
                ),
                Exposure::Proxied(proxied) => {
                    format!("{}, {}", proxied.describe(), ext.source.describe())
                }
            },
        },
        Resolution::Pending(why) => External::Unknown(why),
        // An unusable host is never written.
        Resolution::Unusable(why) => External::Invalid(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(yaml: &str) -> RoutingCluster {
        let docs = crate::decision::state::parse_documents(yaml, "test").unwrap();
        let of = |kind: &str| {
            docs.iter()
                .filter(|d| d["kind"] == kind)
                .cloned()
                .collect::<Vec<_>>()
        };
        let services: Vec<Service> = of("Service")
            .into_iter()
            .map(|d| serde_json::from_value(d).unwrap())
            .collect();
        let nodes: Vec<Node> = of("Node")
            .into_iter()
            .map(|d| serde_json::from_value(d).unwrap())
            .collect();
        let pods: Vec<Pod> = of("Pod")
            .into_iter()
            .map(|d| serde_json::from_value(d).unwrap())
            .collect();
        RoutingCluster::from_objects(&services, &nodes, &pods, "default", Config::default())
    }

    const CHART: &str = r#"
kind: Service
apiVersion: v1
metadata: {name: memgraph-coordinator-1, namespace: default}
spec:
  type: ClusterIP
  clusterIP: 10.96.0.11
  selector: {app: memgraph-coordinator-1}
  ports: [{name: tcp-bolt-port, port: 7687, targetPort: 7687}]
---
kind: Service
apiVersion: v1
metadata: {name: memgraph-coordinator-1-external, namespace: default}
spec:
  type: NodePort
  clusterIP: 10.96.0.21
  selector: {app: memgraph-coordinator-1}
  ports: [{name: bolt, port: 7687, targetPort: 7687, nodePort: 30011}]
---
kind: Service
apiVersion: v1
metadata: {name: coordinators, namespace: default}
spec:
  type: LoadBalancer
  selector: {role: coordinator}
  ports: [{port: 7687, targetPort: 7687}]
status: {loadBalancer: {ingress: [{ip: 198.51.100.7}]}}
---
kind: Service
apiVersion: v1
metadata: {name: memgraph-data-0, namespace: default}
spec:
  type: ClusterIP
  selector: {app: memgraph-data-0}
  ports: [{port: 7687, targetPort: 7687}]
---
kind: Node
apiVersion: v1
metadata: {name: node-a}
status:
  conditions: [{type: Ready, status: "True"}]
  addresses: [{type: InternalIP, address: 10.0.0.5}, {type: ExternalIP, address: 203.0.113.5}]
---
kind: Pod
apiVersion: v1
metadata:
  name: memgraph-coordinator-1-0
  namespace: default
  labels: {app: memgraph-coordinator-1, role: coordinator}
  ownerReferences: [{apiVersion: apps/v1, kind: StatefulSet, name: memgraph-coordinator-1, uid: u1, controller: true}]
spec:
  containers: [{name: memgraph-coordinator, image: "memgraph/memgraph:3.12.0", args: ["--bolt-port=7687", "--coordinator-id=1", "--management-port=10000"]}]
status: {podIP: 10.244.0.9}
---
kind: Pod
apiVersion: v1
metadata:
  name: memgraph-data-0-0
  namespace: default
  labels: {app: memgraph-data-0, role: data}
  annotations: {memgraph-address-injector/bolt-address: "data0.example.com:7687"}
  ownerReferences: [{apiVersion: apps/v1, kind: StatefulSet, name: memgraph-data-0, uid: u2, controller: true}]
spec:
  containers: [{name: memgraph-data, image: "memgraph/memgraph:3.12.0", args: ["--bolt-port=7687", "--management-port=10000"]}]
status: {podIP: 10.244.0.10}
"#;

    fn svc(name: &str) -> Target {
        Target::Service {
            namespace: "default".into(),
            name: name.into(),
        }
    }

    #[test]
    fn the_instance_specific_service_wins_over_the_shared_load_balancer() {
        let c = cluster(CHART);
        assert_eq!(
            c.external_for(&svc("memgraph-coordinator-1"), 7687),
            External::Found {
                address: "203.0.113.5:30011".into(),
                source: "Service default/memgraph-coordinator-1-external, Node node-a ExternalIP"
                    .into()
            }
        );
    }

    #[test]
    fn the_pods_annotation_is_the_fallback_when_no_service_exposes_it() {
        let c = cluster(CHART);
        let External::Found { address, source } = c.external_for(&svc("memgraph-data-0"), 7687)
        else {
            panic!("not found")
        };
        assert_eq!(address, "data0.example.com:7687");
        assert!(source.contains("annotation"), "{source}");
    }

    #[test]
    fn the_current_service_beats_a_stale_annotation() {
        // Found in review: the annotation is written once at admission (and editable by anyone
        // who may patch pods), so an address that changed since must come from the Service.
        let stale = CHART.replace(
            "  labels: {app: memgraph-coordinator-1, role: coordinator}",
            "  labels: {app: memgraph-coordinator-1, role: coordinator}\n  annotations: {memgraph-address-injector/bolt-address: \"203.0.113.99:30011\"}",
        );
        let c = cluster(&stale);
        let External::Found { address, source } =
            c.external_for(&svc("memgraph-coordinator-1"), 7687)
        else {
            panic!("not found")
        };
        assert_eq!(address, "203.0.113.5:30011");
        assert!(
            source.contains("out of date") && source.contains("203.0.113.99:30011"),
            "{source}"
        );
    }

    #[test]
    fn cluster_ips_and_pod_ips_are_recognised() {
        let c = cluster(CHART);
        assert_eq!(
            c.owner_of_ip("10.96.0.11").map(|(t, _)| t),
            Some(svc("memgraph-coordinator-1"))
        );
        let (target, what) = c.owner_of_ip("10.244.0.9").unwrap();
        assert!(what.contains("pod default/memgraph-coordinator-1-0"));
        assert_eq!(
            c.external_for(&target, 7687),
            c.external_for(&svc("memgraph-coordinator-1"), 7687)
        );
        assert_eq!(c.owner_of_ip("203.0.113.5"), None);
    }

    #[test]
    fn missing_pieces_are_explained_not_guessed() {
        let c = cluster(CHART);
        let External::Unknown(why) = c.external_for(&svc("memgraph-coordinator-9"), 7687) else {
            panic!()
        };
        assert!(why.contains("memgraph-coordinator-9"), "{why}");
        // The pod's own Bolt port decides, as in the webhook: no Service reaches 9999.
        let moved = cluster(&CHART.replace(
            r#"args: ["--bolt-port=7687", "--coordinator-id=1""#,
            r#"args: ["--bolt-port=9999", "--coordinator-id=1""#,
        ));
        let External::Unknown(why) = moved.external_for(&svc("memgraph-coordinator-1"), 7687)
        else {
            panic!()
        };
        assert!(why.contains("9999"), "{why}");
    }

    #[test]
    fn names_map_to_targets() {
        assert_eq!(
            Target::from_cluster_name("a.b.svc.cluster.local", "x"),
            Some(Target::Service {
                namespace: "b".into(),
                name: "a".into()
            })
        );
        assert_eq!(
            Target::from_cluster_name("p.a.b.svc", "x"),
            Some(Target::Pod {
                namespace: "b".into(),
                name: "p".into()
            })
        );
        assert_eq!(
            Target::from_cluster_name("a", "x"),
            Some(Target::Service {
                namespace: "x".into(),
                name: "a".into()
            })
        );
        assert_eq!(Target::from_cluster_name("a.b.c.d", "x"), None);
    }
}
