//! Which Service exposes the pod's Bolt port outside the cluster.

use super::pod::{MemgraphPod, Pod};
use super::view::{ClusterState, ServicePortView, ServiceType, ServiceView, TargetPort};

const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";

/// Why a Service cannot carry the pod's Bolt traffic from outside.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Unqualified {
    #[error("it is of type {0}; only NodePort and LoadBalancer Services are reachable from outside the cluster")]
    WrongType(&'static str),
    #[error("it is headless (clusterIP: None)")]
    Headless,
    #[error("it has no selector, so it does not route to this pod")]
    EmptySelector,
    #[error("its selector {key}={wanted} does not match the pod's labels")]
    SelectorMismatch { key: String, wanted: String },
    #[error("none of its TCP ports targets the Bolt port {0}")]
    NoBoltPort(i32),
}

#[derive(Debug)]
pub enum ServiceChoice<'c> {
    Chosen {
        service: &'c ServiceView,
        port: &'c ServicePortView,
        /// Set when several candidates tied and the first by name was taken.
        ambiguity: Option<crate::Warning>,
    },
    /// No Service in the namespace exposes the pod outside the cluster.
    NoCandidate,
    /// The pod names a Service that does not exist.
    NamedMissing(String),
    /// The pod names a Service that cannot expose it.
    NamedUnqualified(String, Unqualified),
}

/// `memgraph-coordinator-1-external` is named after `memgraph-coordinator-1`;
/// `memgraph-coordinator-10-external` is not.
pub fn named_after(service: &str, statefulset: &str) -> bool {
    service == statefulset
        || service
            .strip_prefix(statefulset)
            .is_some_and(|rest| rest.starts_with('-'))
}

/// Does this Service port deliver traffic to `container_port` of the pod?
pub fn port_reaches(port: &ServicePortView, container_port: i32, pod: &Pod<'_>) -> bool {
    if port.protocol != "TCP" {
        return false;
    }
    match &port.target_port {
        Some(TargetPort::Number(n)) => *n == container_port,
        Some(TargetPort::Name(name)) => pod.containers().iter().any(|c| {
            c.ports.as_deref().unwrap_or(&[]).iter().any(|p| {
                p.container_port == container_port && p.name.as_deref() == Some(name.as_str())
            })
        }),
        None => port.port == container_port,
    }
}

/// Checks that a Service can expose the pod's Bolt port; returns that port.
pub fn qualify<'c>(
    svc: &'c ServiceView,
    pod: &Pod<'_>,
    bolt_port: i32,
) -> Result<&'c ServicePortView, Unqualified> {
    if !matches!(svc.type_, ServiceType::NodePort | ServiceType::LoadBalancer) {
        return Err(Unqualified::WrongType(svc.type_.as_str()));
    }
    if svc.headless {
        return Err(Unqualified::Headless);
    }
    selects(svc, pod)?;
    svc.ports
        .iter()
        .find(|p| port_reaches(p, bolt_port, pod))
        .ok_or(Unqualified::NoBoltPort(bolt_port))
}

/// Does the Service's selector pick this pod? (An empty selector picks nothing: its
/// endpoints are managed by hand.)
pub fn selects(svc: &ServiceView, pod: &Pod<'_>) -> Result<(), Unqualified> {
    if svc.selector.is_empty() {
        return Err(Unqualified::EmptySelector);
    }
    for (key, wanted) in &svc.selector {
        if pod.label(key) != Some(wanted.as_str()) {
            return Err(Unqualified::SelectorMismatch {
                key: key.clone(),
                wanted: wanted.clone(),
            });
        }
    }
    Ok(())
}

pub fn choose<'c>(
    cluster: &'c ClusterState,
    namespace: &str,
    pod: &Pod<'_>,
    mg: &MemgraphPod<'_, '_>,
    named: Option<&str>,
) -> ServiceChoice<'c> {
    if let Some(name) = named {
        return match cluster.service(namespace, name) {
            None => ServiceChoice::NamedMissing(name.to_string()),
            Some(service) => match qualify(service, pod, mg.bolt_port) {
                Ok(port) => ServiceChoice::Chosen {
                    service,
                    port,
                    ambiguity: None,
                },
                Err(why) => ServiceChoice::NamedUnqualified(name.to_string(), why),
            },
        };
    }

    let owner = pod.owning_statefulset();
    // Most specific first: more selector labels, a pod-name selector, a name that starts
    // with the owning StatefulSet's (the chart's `-external` Service over `coordinators`).
    let rank = |svc: &ServiceView| {
        (
            svc.selector.len(),
            svc.selector.contains_key(POD_NAME_LABEL),
            owner.is_some_and(|o| named_after(&svc.name, o)),
        )
    };
    let mut best: Option<(&ServiceView, &ServicePortView)> = None;
    let mut tied: Vec<&str> = Vec::new();
    // Services come sorted by name, so the first of a tie is the first by name.
    for svc in cluster.services_in(namespace) {
        let Ok(port) = qualify(svc, pod, mg.bolt_port) else {
            continue;
        };
        match best {
            Some((current, _)) if rank(svc) < rank(current) => {}
            Some((current, _)) if rank(svc) == rank(current) => tied.push(&svc.name),
            _ => {
                best = Some((svc, port));
                tied.clear();
                tied.push(&svc.name);
            }
        }
    }
    match best {
        None => ServiceChoice::NoCandidate,
        Some((service, port)) => ServiceChoice::Chosen {
            service,
            port,
            ambiguity: (tied.len() > 1).then(|| {
                crate::Warning::new(
                    format!(
                        "{} Services expose this pod equally; using {} (first by name)",
                        tied.len(),
                        service.name
                    ),
                    format!(
                        "several Services expose this pod's Bolt port equally ({}); using {} (first by name). Set the pod annotation {}: NAME to choose",
                        tied.join(", "),
                        service.name,
                        super::pod::SERVICE_ANNOTATION
                    ),
                )
            }),
        },
    }
}
