//! Which `host:port` a client outside the cluster uses to reach a Service's Bolt port
//! (docs/design.md, "What the external address is").

use std::net::Ipv4Addr;

use crate::hostport::{validate_host, HostError};
use crate::Warning;

use super::view::{ClusterState, NodeView, ServicePortView, ServiceType, ServiceView};
use crate::nodes::NodeRules;

/// Which rule gave the host; shown in the pod's `source` annotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostSource {
    HostAnnotation,
    ExternalDnsAnnotation,
    LoadBalancerIp,
    LoadBalancerHostname,
    ExternalIps,
    Node {
        name: String,
        address_type: String,
    },
    /// A Gateway's `status.addresses` entry of this type (IPAddress or Hostname).
    GatewayAddress {
        kind: String,
    },
}

impl HostSource {
    pub fn describe(&self) -> String {
        match self {
            HostSource::HostAnnotation => {
                format!("annotation {}", super::view::EXTERNAL_HOST_ANNOTATION)
            }
            HostSource::ExternalDnsAnnotation => {
                format!("annotation {}", super::view::EXTERNAL_DNS_ANNOTATION)
            }
            HostSource::LoadBalancerIp => "status.loadBalancer.ingress ip".into(),
            HostSource::LoadBalancerHostname => "status.loadBalancer.ingress hostname".into(),
            HostSource::ExternalIps => "spec.externalIPs".into(),
            HostSource::Node { name, address_type } => format!("Node {name} {address_type}"),
            HostSource::GatewayAddress { kind } => format!("status.addresses {kind}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalAddress {
    pub host: String,
    pub port: i32,
    pub source: HostSource,
    pub warnings: Vec<Warning>,
}

impl ExternalAddress {
    /// `host:port`, with an IPv6 literal in brackets.
    pub fn address(&self) -> String {
        crate::hostport::format_host_port(&self.host, self.port)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    Resolved(ExternalAddress),
    /// Not known yet; the text says what is missing.
    Pending(String),
    /// The cluster gives a value that is not a host a client can dial (an annotation with a
    /// port, a space or a wildcard; a malformed ingress hostname). It never reaches a pod; the
    /// text names the Service and where the value came from.
    Unusable(String),
}

/// The first of `nodes` with an address of `address_type` that is not a host, as an error
/// naming the Service, the Node and the value. A Node's status is input too: such a value is
/// refused by name rather than silently falling back to another address type, which would
/// turn an external address into an internal one.
fn node_address_not_a_host<'a>(
    mut nodes: impl Iterator<Item = &'a NodeView>,
    address_type: &str,
    svc: &ServiceView,
) -> Option<String> {
    nodes.find_map(|n| {
        n.addresses
            .iter()
            .filter(|(t, _)| t == address_type)
            .find_map(|(_, a)| validate_host(a).err())
            .map(|why| {
                // The annotation's advice ("give the host alone") does not fit a Node.
                let what = match why {
                    HostError::HasPort(value) => format!("{value:?} carries a port"),
                    other => other.to_string(),
                };
                format!(
                    "NodePort Service {}/{}: node {}'s {address_type} address is not a usable host ({what}); fix the Node's status.addresses or set the Service annotation {}",
                    svc.namespace,
                    svc.name,
                    n.name,
                    super::view::EXTERNAL_HOST_ANNOTATION
                )
            })
    })
}

/// Checks a host taken from the cluster, naming the Service and the field in the error.
fn checked(svc: &ServiceView, field: &str, host: &str) -> Result<(), String> {
    checked_for(
        &format!("Service {}/{}", svc.namespace, svc.name),
        field,
        host,
    )
}

fn checked_for(owner: &str, field: &str, host: &str) -> Result<(), String> {
    validate_host(host)
        .map(|_| ())
        .map_err(|why| format!("{owner}: {field} is not a usable host: {why}"))
}

/// The host an operator named on an object (a Service, a Gateway, a TCPRoute): our host
/// annotation, else external-dns' (a comma-separated list; wildcard entries name no single
/// host and are skipped with a warning). `None` when neither names one; an error names the
/// object, the annotation and the value. `fallback` says what is used instead.
pub(crate) fn annotated_host(
    owner_short: &str,
    owner: &str,
    host_annotation: Option<&str>,
    dns_annotation: Option<&str>,
    fallback: &str,
    warnings: &mut Vec<Warning>,
) -> Option<Result<(String, HostSource), String>> {
    if let Some(host) = host_annotation {
        let field = format!("annotation {}", super::view::EXTERNAL_HOST_ANNOTATION);
        return Some(
            checked_for(owner, &field, host)
                .map(|_| (host.to_string(), HostSource::HostAnnotation)),
        );
    }
    let list = dns_annotation?;
    let mut entries = list.split(',').map(str::trim).filter(|h| !h.is_empty());
    match entries.find(|h| !matches!(validate_host(h), Err(HostError::Wildcard(_)))) {
        Some(host) => {
            let field = format!("annotation {}", super::view::EXTERNAL_DNS_ANNOTATION);
            Some(
                checked_for(owner, &field, host)
                    .map(|_| (host.to_string(), HostSource::ExternalDnsAnnotation)),
            )
        }
        None => {
            warnings.push(Warning::new(
                format!("{owner_short}: external-dns lists only wildcards; using the {fallback} address"),
                format!(
                    "{owner} has annotation {} with only wildcard entries ({list}), which name no host a client can dial; the address comes from the {fallback} address instead",
                    super::view::EXTERNAL_DNS_ANNOTATION,
                ),
            ));
            None
        }
    }
}

pub use crate::hostport::is_ipv6_literal;

fn is_ipv4(host: &str) -> bool {
    host.parse::<Ipv4Addr>().is_ok()
}

/// The first IPv4 address of a list, else its first entry.
fn prefer_ipv4<'a>(candidates: impl Iterator<Item = &'a str> + Clone) -> Option<&'a str> {
    candidates
        .clone()
        .find(|h| is_ipv4(h))
        .or_else(|| candidates.into_iter().next())
}

/// The port a client dials for this Service port, given the Service type: the Service `port`
/// for a LoadBalancer or a NodePort with `spec.externalIPs`, else the `nodePort`.
pub fn external_port(svc: &ServiceView, port: &ServicePortView) -> Option<i32> {
    match svc.type_ {
        ServiceType::NodePort if svc.external_ips.is_empty() => port.node_port,
        _ => Some(port.port),
    }
}

pub fn resolve(
    cluster: &ClusterState,
    svc: &ServiceView,
    port: &ServicePortView,
    rules: &NodeRules<'_>,
) -> Resolution {
    let node_address_types = rules.address_types;
    let Some(ext_port) = external_port(svc, port) else {
        return Resolution::Pending(format!(
            "NodePort Service {} has no nodePort allocated for port {}",
            svc.name, port.port
        ));
    };
    let mut warnings = Vec::new();
    let local_unknown_node = svc.external_traffic_policy_local && rules.pod_node.is_none();
    if svc.type_ == ServiceType::NodePort && svc.external_ips.is_empty() && local_unknown_node {
        warnings.push(Warning::new(
            format!(
                "Service {} has externalTrafficPolicy Local; the pod's node is not known at admission",
                svc.name
            ),
            format!(
                "Service {} has externalTrafficPolicy: Local, so only the node running this pod answers on the nodePort, and that node is not known at admission; use externalTrafficPolicy: Cluster or a LoadBalancer",
                svc.name
            ),
        ));
    }
    let found = |host: &str, source: HostSource, warnings: Vec<Warning>| {
        Resolution::Resolved(ExternalAddress {
            host: host.to_string(),
            port: ext_port,
            source,
            warnings,
        })
    };

    match annotated_host(
        &format!("Service {}", svc.name),
        &format!("Service {}/{}", svc.namespace, svc.name),
        svc.external_host_annotation.as_deref(),
        svc.external_dns_annotation.as_deref(),
        svc.type_.as_str(),
        &mut warnings,
    ) {
        Some(Ok((host, source))) => return found(&host, source, warnings),
        Some(Err(why)) => return Resolution::Unusable(why),
        None => {}
    }
    match svc.type_ {
        ServiceType::LoadBalancer => {
            if let Some(ip) = prefer_ipv4(svc.ingress.iter().filter_map(|i| i.ip.as_deref())) {
                if let Err(why) = checked(svc, "status.loadBalancer.ingress ip", ip) {
                    return Resolution::Unusable(why);
                }
                return found(ip, HostSource::LoadBalancerIp, warnings);
            }
            if let Some(host) = svc.ingress.iter().find_map(|i| i.hostname.as_deref()) {
                if let Err(why) = checked(svc, "status.loadBalancer.ingress hostname", host) {
                    return Resolution::Unusable(why);
                }
                return found(host, HostSource::LoadBalancerHostname, warnings);
            }
            Resolution::Pending(format!(
                "LoadBalancer Service {} has no status.loadBalancer.ingress yet (no external IP or hostname assigned)",
                svc.name
            ))
        }
        ServiceType::NodePort => {
            if let Some(ip) = prefer_ipv4(svc.external_ips.iter().map(String::as_str)) {
                if let Err(why) = checked(svc, "spec.externalIPs", ip) {
                    return Resolution::Unusable(why);
                }
                return found(ip, HostSource::ExternalIps, warnings);
            }
            let of_type = |n: &NodeView, address_type: &str| {
                n.addresses
                    .iter()
                    // A Node address is input too: one that is not a host is skipped.
                    .filter(|(t, a)| t == address_type && validate_host(a).is_ok())
                    .map(|(_, a)| a.clone())
                    .collect::<Vec<_>>()
            };
            let node_found = |node: &NodeView,
                              address_type: &String,
                              host: String,
                              warnings: Vec<Warning>| {
                let mut warnings = warnings;
                if address_type == "InternalIP" {
                    warnings.push(Warning::new(
                        format!("node {}'s address is an InternalIP ({host}); outside clients may not reach it", node.name),
                        format!(
                            "no usable node has an ExternalIP address, so the Bolt address uses node {}'s InternalIP {host}; clients outside the node network cannot reach it. Set the Service annotation {} to the right host",
                            node.name,
                            super::view::EXTERNAL_HOST_ANNOTATION
                        ),
                    ));
                }
                found(
                    &host,
                    HostSource::Node {
                        name: node.name.clone(),
                        address_type: address_type.clone(),
                    },
                    warnings,
                )
            };
            let usable = || cluster.nodes().filter(|n| rules.usable(n));
            // externalTrafficPolicy: Local: only the pod's own node answers on the nodePort.
            if svc.external_traffic_policy_local {
                if let Some(name) = rules.pod_node {
                    let Some(node) = usable().find(|n| n.name == name) else {
                        return Resolution::Pending(format!(
                            "Service {} has externalTrafficPolicy: Local and the pod's node {name} is not usable (not Ready, unschedulable, not selected by --node-selector, or gone)",
                            svc.name
                        ));
                    };
                    for address_type in node_address_types {
                        let addresses = of_type(node, address_type);
                        let pick = addresses.iter().find(|a| is_ipv4(a)).or(addresses.first());
                        if let Some(host) = pick {
                            return node_found(node, address_type, host.clone(), warnings);
                        }
                        if let Some(why) =
                            node_address_not_a_host(std::iter::once(node), address_type, svc)
                        {
                            return Resolution::Unusable(why);
                        }
                    }
                    return Resolution::Pending(format!(
                        "Service {} has externalTrafficPolicy: Local and the pod's node {name} has no address of type {}",
                        svc.name,
                        node_address_types.join(" or ")
                    ));
                }
            }
            // The node in use stays while it is usable and still has the host. Its address
            // of the most preferred type is used: the host itself, unless the node has
            // gained an address of a type ranked above it (a cloud provider adds the
            // ExternalIP after the kubelet registered the node with its InternalIP).
            if let Some(host) = rules.keep_host {
                let holds = |n: &NodeView| {
                    node_address_types
                        .iter()
                        .any(|t| of_type(n, t).iter().any(|a| a == host))
                };
                if let Some(node) = usable().find(|n| holds(n)) {
                    for address_type in node_address_types {
                        let addresses = of_type(node, address_type);
                        if addresses.iter().any(|a| a == host) {
                            return node_found(node, address_type, host.to_string(), warnings);
                        }
                        let pick = addresses.iter().find(|a| is_ipv4(a)).or(addresses.first());
                        if let Some(better) = pick {
                            return node_found(node, address_type, better.clone(), warnings);
                        }
                    }
                }
            }
            for address_type in node_address_types {
                // IPv4 on any node first, then whatever the first node has.
                let pick = usable()
                    .find_map(|n| {
                        of_type(n, address_type)
                            .into_iter()
                            .find(|a| is_ipv4(a))
                            .map(|a| (n, a))
                    })
                    .or_else(|| {
                        usable().find_map(|n| {
                            of_type(n, address_type).into_iter().next().map(|a| (n, a))
                        })
                    });
                if let Some((node, host)) = pick {
                    return node_found(node, address_type, host, warnings);
                }
                if let Some(why) = node_address_not_a_host(usable(), address_type, svc) {
                    return Resolution::Unusable(why);
                }
            }
            Resolution::Pending(format!(
                "NodePort Service {} needs a node address, but no Ready, schedulable Node selected by --node-selector has an address of type {}",
                svc.name,
                node_address_types.join(" or ")
            ))
        }
        // `qualify` never lets other types through.
        ServiceType::ClusterIp | ServiceType::ExternalName => Resolution::Pending(format!(
            "Service {} is of type {} and has no external address",
            svc.name,
            svc.type_.as_str()
        )),
    }
}
