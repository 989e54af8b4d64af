//! What carries a pod's Bolt port outside the cluster: a NodePort or LoadBalancer Service
//! that selects it (`service`), else a proxy in front of an in-cluster Service (`proxy`).
//! The webhook and the routing reconciler both decide through `locate`.

use crate::address::{self, ExternalAddress, Resolution};
use crate::nodes::NodeRules;
use crate::pod::{MemgraphPod, Pod};
use crate::proxy::{self, IngressNginx, Proxied};
use crate::service::{self, ServiceChoice, Unqualified};
use crate::view::{ClusterState, ServicePortView, ServiceView};
use crate::Warning;

#[derive(Debug)]
pub enum Exposure<'c> {
    Service {
        service: &'c ServiceView,
        port: &'c ServicePortView,
    },
    Proxied(Proxied<'c>),
}

#[derive(Debug)]
pub enum Located<'c> {
    Exposed {
        exposure: Exposure<'c>,
        /// Set when several Services tied and the first by name was taken.
        ambiguity: Option<Warning>,
    },
    /// Nothing in the namespace exposes the pod outside the cluster.
    NotExposed,
    /// The pod names a Service that does not exist.
    NamedMissing(String),
    /// The pod names a Service that cannot expose it.
    NamedUnqualified(String, Unqualified),
}

/// A named Service is the operator's choice and is never replaced by a proxy.
pub fn locate<'c>(
    cluster: &'c ClusterState,
    namespace: &str,
    pod: &Pod<'_>,
    mg: &MemgraphPod<'_, '_>,
    named: Option<&str>,
    nginx: Option<&IngressNginx>,
) -> Located<'c> {
    match service::choose(cluster, namespace, pod, mg, named) {
        ServiceChoice::Chosen {
            service,
            port,
            ambiguity,
        } => Located::Exposed {
            exposure: Exposure::Service { service, port },
            ambiguity,
        },
        ServiceChoice::NoCandidate => {
            match proxy::find(cluster, namespace, pod, mg.bolt_port, nginx) {
                Some(proxied) => Located::Exposed {
                    exposure: Exposure::Proxied(proxied),
                    ambiguity: None,
                },
                None => Located::NotExposed,
            }
        }
        ServiceChoice::NamedMissing(name) => Located::NamedMissing(name),
        ServiceChoice::NamedUnqualified(name, why) => Located::NamedUnqualified(name, why),
    }
}

impl Exposure<'_> {
    pub fn resolve(&self, cluster: &ClusterState, rules: &NodeRules<'_>) -> Resolution {
        match self {
            Exposure::Service { service, port } => address::resolve(cluster, service, port, rules),
            Exposure::Proxied(proxied) => proxied.resolve(cluster, rules),
        }
    }

    /// What gave the address, for the pod's `source` annotation and the reconciler's logs.
    pub fn source(&self, ext: &ExternalAddress) -> String {
        match self {
            Exposure::Service { service, .. } => format!(
                "{} Service {} ({})",
                service.type_.as_str(),
                service.name,
                ext.source.describe()
            ),
            Exposure::Proxied(proxied) => {
                format!("{} ({})", proxied.describe(), ext.source.describe())
            }
        }
    }

    /// The object to name in a short message: `Service memgraph-data-0-external`.
    pub fn short_name(&self) -> String {
        match self {
            Exposure::Service { service, .. } => format!("Service {}", service.name),
            Exposure::Proxied(Proxied::Gateway { gateway, .. }) => {
                format!("Gateway {}", gateway.name)
            }
            Exposure::Proxied(Proxied::IngressNginx { controller, .. }) => {
                format!("ingress-nginx Service {}", controller.name)
            }
            Exposure::Proxied(Proxied::Incomplete(_)) => "the proxy".into(),
        }
    }
}
