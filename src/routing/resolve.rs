//! Which external address an instance of the routing table should have. The host and port
//! come from the same code as the webhook's (`decision::address::resolve`); the instance is
//! found from its registered in-cluster name: its pod's injected annotation first, else the
//! NodePort/LoadBalancer Service that exposes it (shared/memgraph-ha.md, "What the external
//! address is"). Pure: the cluster view is built by the caller (`from_objects`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod, Service};

use crate::decision::address::{self, Resolution};
use crate::decision::view::{
    ClusterState, NodeView, ServicePortView, ServiceType, ServiceView, TargetPort,
};
use crate::decision::ADDRESS_ANNOTATION;

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
    pub node_address_types: Vec<String>,
}

/// Where an external address came from, or why there is none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum External {
    Found { address: String, source: String },
    Unknown(String),
}

impl RoutingCluster {
    pub fn from_objects(
        services: &[Service],
        nodes: &[Node],
        pods: &[Pod],
        namespace: &str,
        node_address_types: Vec<String>,
    ) -> Self {
        let mut cluster = RoutingCluster {
            namespace: namespace.to_string(),
            node_address_types,
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
            cluster.pods.push(PodInfo {
                namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
                name,
                labels: meta.labels.clone().unwrap_or_default(),
                annotations: meta.annotations.clone().unwrap_or_default(),
                ips,
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

    /// The external address for what `target` names, reached on `bolt_port` inside the
    /// cluster.
    pub fn external_for(&self, target: &Target, bolt_port: i32) -> External {
        let namespace = target.namespace();
        // The pod behind the target, and the labels that select it.
        let (pod, labels, owner_prefix): (Option<&PodInfo>, BTreeMap<String, String>, String) =
            match target {
                Target::Pod { name, .. } => {
                    match self
                        .pods
                        .iter()
                        .find(|p| p.namespace == namespace && &p.name == name)
                    {
                        Some(p) => (Some(p), p.labels.clone(), owner_of_pod(name)),
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
                    let pod = self.pods_selected(namespace, &svc.selector).next();
                    let labels = pod
                        .map(|p| p.labels.clone())
                        .unwrap_or_else(|| svc.selector.clone());
                    (pod, labels, name.clone())
                }
            };
        // The Service is the current truth (a LoadBalancer IP or the nodes may have changed
        // since the pod was created); the pod's annotation, written once at admission, is
        // the fallback. Anyone who may patch pods can edit it, so it never wins.
        let annotated = pod.and_then(|p| {
            p.annotations
                .get(ADDRESS_ANNOTATION)
                .map(|a| (p.name.clone(), a.clone()))
        });
        let current = self.exposing_service_address(target, &labels, &owner_prefix, bolt_port);
        match (current, annotated) {
            (External::Found { address, source }, Some((pod, annotation))) if annotation != address => External::Found {
                source: format!("{source}; pod {pod}'s annotation {ADDRESS_ANNOTATION} says {annotation}, set at its creation and now out of date"),
                address,
            },
            (found @ External::Found { .. }, _) => found,
            (External::Unknown(why), Some((pod, annotation))) => External::Found {
                address: annotation,
                source: format!("pod {namespace}/{pod} annotation {ADDRESS_ANNOTATION} (no current Service address: {why})"),
            },
            (unknown, None) => unknown,
        }
    }

    /// The external address from the most specific NodePort or LoadBalancer Service that
    /// selects `labels`, ranked as the webhook ranks them.
    fn exposing_service_address(
        &self,
        target: &Target,
        labels: &BTreeMap<String, String>,
        owner_prefix: &str,
        bolt_port: i32,
    ) -> External {
        let namespace = target.namespace();
        if labels.is_empty() {
            return External::Unknown(format!(
                "{target:?} has no labels or selector to find the Service that exposes it"
            ));
        }
        // The most specific exposing Service, as the webhook ranks them: most selector
        // labels, then a name starting with the instance's (the chart's `-external`).
        let mut best: Option<(&ServiceView, &ServicePortView)> = None;
        for svc in self.state.services_in(namespace) {
            let exposes = matches!(svc.type_, ServiceType::NodePort | ServiceType::LoadBalancer)
                && !svc.headless
                && !svc.selector.is_empty()
                && svc.selector.iter().all(|(k, v)| labels.get(k) == Some(v));
            let Some(port) = svc.ports.iter().find(|p| exposes && reaches(p, bolt_port)) else {
                continue;
            };
            let rank = |s: &ServiceView| {
                (
                    s.selector.len(),
                    crate::decision::service::named_after(&s.name, owner_prefix),
                )
            };
            if best.is_none_or(|(b, _)| rank(svc) > rank(b)) {
                best = Some((svc, port));
            }
        }
        let Some((svc, port)) = best else {
            return External::Unknown(format!(
                "no NodePort or LoadBalancer Service in {namespace} exposes port {bolt_port} of {}",
                match target {
                    Target::Pod { name, .. } => format!("pod {name}"),
                    Target::Service { name, .. } => format!("the pods of Service {name}"),
                }
            ));
        };
        match address::resolve(&self.state, svc, port, &self.node_address_types) {
            Resolution::Resolved(ext) => External::Found {
                address: ext.address(),
                source: format!(
                    "Service {}/{}, {}",
                    svc.namespace,
                    svc.name,
                    ext.source.describe()
                ),
            },
            // An unusable host is never written; it is reported like an address not known yet.
            Resolution::Pending(why) | Resolution::Unusable(why) => External::Unknown(why),
        }
    }
}

/// A StatefulSet pod `name-<ordinal>` belongs to `name`.
fn owner_of_pod(pod: &str) -> String {
    match pod.rsplit_once('-') {
        Some((owner, ordinal)) if ordinal.chars().all(|c| c.is_ascii_digit()) => owner.into(),
        _ => pod.into(),
    }
}

/// Does this Service port deliver to `bolt_port`? A named targetPort cannot be checked
/// without the pod's container ports, so it counts when the Service port equals the Bolt
/// port (the chart's `tcp-bolt-port`/`bolt` ports do).
fn reaches(port: &ServicePortView, bolt_port: i32) -> bool {
    port.protocol == "TCP"
        && match &port.target_port {
            Some(TargetPort::Number(n)) => *n == bolt_port,
            Some(TargetPort::Name(_)) | None => port.port == bolt_port,
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
        RoutingCluster::from_objects(
            &services,
            &nodes,
            &pods,
            "default",
            vec!["ExternalIP".into(), "InternalIP".into()],
        )
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
status: {podIP: 10.244.0.9}
---
kind: Pod
apiVersion: v1
metadata:
  name: memgraph-data-0-0
  namespace: default
  labels: {app: memgraph-data-0, role: data}
  annotations: {memgraph-address-injector/bolt-address: "data0.example.com:7687"}
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
        let External::Unknown(why) = c.external_for(&svc("memgraph-coordinator-1"), 9999) else {
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
        assert_eq!(owner_of_pod("memgraph-data-0-0"), "memgraph-data-0");
    }
}
