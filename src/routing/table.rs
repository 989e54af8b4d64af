//! The routing table a coordinator returns, and which of its addresses a client outside the
//! cluster can use. Pure: the cluster view comes in as a value.
//!
//! Where the entries come from (ROUTE: `ADD COORDINATOR`, WRITE/READ: `REGISTER INSTANCE`):
//! docs/design.md, "Where the addresses in the routing table come from".

use std::fmt;
use std::net::IpAddr;

use super::packstream::Value;
use super::resolve::{RoutingCluster, Target};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Route,
    Write,
    Read,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Route => "ROUTE",
            Role::Write => "WRITE",
            Role::Read => "READ",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub role: Role,
    pub address: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutingTable {
    pub ttl: i64,
    pub db: Option<String>,
    /// ROUTE, then WRITE, then READ; each in the server's order.
    pub entries: Vec<Entry>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TableError {
    #[error("the routing table has no {0} field")]
    Missing(&'static str),
    #[error("the routing table's {0} field has the wrong type")]
    WrongType(&'static str),
    #[error("the routing table names an unknown role {0:?} (expected ROUTE, WRITE or READ)")]
    UnknownRole(String),
}

impl RoutingTable {
    /// From the `rt` map of a ROUTE SUCCESS:
    /// `{ttl, db, servers: [{addresses: [..], role}]}`.
    pub fn from_rt(rt: &Value) -> Result<Self, TableError> {
        let ttl = rt
            .get("ttl")
            .ok_or(TableError::Missing("ttl"))?
            .as_int()
            .ok_or(TableError::WrongType("ttl"))?;
        let db = rt.get("db").and_then(Value::as_str).map(str::to_string);
        let servers = rt
            .get("servers")
            .ok_or(TableError::Missing("servers"))?
            .as_list()
            .ok_or(TableError::WrongType("servers"))?;
        let mut entries = Vec::new();
        for server in servers {
            let role = match server.get("role").and_then(Value::as_str) {
                Some("ROUTE") => Role::Route,
                Some("WRITE") => Role::Write,
                Some("READ") => Role::Read,
                Some(other) => return Err(TableError::UnknownRole(other.to_string())),
                None => return Err(TableError::Missing("servers[].role")),
            };
            let addresses = server
                .get("addresses")
                .ok_or(TableError::Missing("servers[].addresses"))?
                .as_list()
                .ok_or(TableError::WrongType("servers[].addresses"))?;
            for address in addresses {
                let address = address
                    .as_str()
                    .ok_or(TableError::WrongType("servers[].addresses[]"))?;
                entries.push(Entry {
                    role,
                    address: address.to_string(),
                });
            }
        }
        entries.sort_by_key(|e| e.role);
        Ok(Self { ttl, db, entries })
    }
}

/// Whether a client outside the cluster can use an address, and if not, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Usable,
    Unusable(String),
}

pub use crate::decision::hostport::{host_of, port_of};

/// Classifies one address. In-cluster DNS names (`*.svc`, `*.svc.cluster.local`, any
/// `*.cluster.local`, a bare Service name) never work from outside; IPs are judged against
/// the cluster view (ClusterIPs and pod IPs do not work). Returns what the address points at
/// inside the cluster, when that is known, so the right external address can be found.
pub fn classify(address: &str, cluster: Option<&RoutingCluster>) -> (Verdict, Option<Target>) {
    let host = host_of(address).trim_end_matches('.');
    let lower = host.to_ascii_lowercase();
    if let Ok(ip) = lower.parse::<IpAddr>() {
        if let Some(cluster) = cluster {
            if let Some((target, what)) = cluster.owner_of_ip(&ip.to_string()) {
                return (
                    Verdict::Unusable(format!("{what}, reachable only inside the cluster")),
                    Some(target),
                );
            }
        }
        return (Verdict::Usable, None);
    }
    let default_ns = cluster.map(|c| c.namespace.as_str()).unwrap_or("default");
    let target = Target::from_cluster_name(&lower, default_ns);
    let labels: Vec<&str> = lower.split('.').collect();
    if labels.contains(&"svc") || lower.ends_with(".cluster.local") {
        return (Verdict::Unusable("an in-cluster DNS name".into()), target);
    }
    if labels.len() == 1 && lower != "localhost" {
        return (
            Verdict::Unusable(
                "a bare name that resolves only inside the cluster's namespace".into(),
            ),
            target,
        );
    }
    // `service.namespace` is also an in-cluster name, but looks like any domain: only
    // flagged when the cluster view has that Service.
    if let (Some(cluster), [name, namespace]) = (cluster, labels.as_slice()) {
        if cluster.state.service(namespace, name).is_some() {
            return (
                Verdict::Unusable(format!("the in-cluster name of Service {namespace}/{name}")),
                target,
            );
        }
    }
    (Verdict::Usable, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(servers: Vec<(&str, Vec<&str>)>) -> Value {
        Value::map([
            ("ttl", Value::Int(300)),
            ("db", Value::str("memgraph")),
            (
                "servers",
                Value::List(
                    servers
                        .into_iter()
                        .map(|(role, addrs)| {
                            Value::map([
                                ("role", Value::str(role)),
                                (
                                    "addresses",
                                    Value::List(addrs.into_iter().map(Value::str).collect()),
                                ),
                            ])
                        })
                        .collect(),
                ),
            ),
        ])
    }

    #[test]
    fn a_table_is_read_in_role_order() {
        let table = RoutingTable::from_rt(&rt(vec![
            ("READ", vec!["r1:7687", "r2:7687"]),
            ("WRITE", vec!["w:7687"]),
            ("ROUTE", vec!["c1:7687"]),
        ]))
        .unwrap();
        assert_eq!(table.ttl, 300);
        assert_eq!(table.db.as_deref(), Some("memgraph"));
        let got: Vec<_> = table
            .entries
            .iter()
            .map(|e| format!("{} {}", e.role, e.address))
            .collect();
        assert_eq!(
            got,
            [
                "ROUTE c1:7687",
                "WRITE w:7687",
                "READ r1:7687",
                "READ r2:7687"
            ]
        );
    }

    #[test]
    fn malformed_tables_are_errors() {
        assert_eq!(
            RoutingTable::from_rt(&Value::Null),
            Err(TableError::Missing("ttl"))
        );
        assert_eq!(
            RoutingTable::from_rt(&rt(vec![("LEADER", vec!["x:1"])])),
            Err(TableError::UnknownRole("LEADER".into()))
        );
        let no_servers = Value::map([("ttl", Value::Int(1))]);
        assert_eq!(
            RoutingTable::from_rt(&no_servers),
            Err(TableError::Missing("servers"))
        );
    }

    #[test]
    fn in_cluster_names_are_unusable_without_a_cluster_view() {
        for address in [
            "memgraph-coordinator-1.default.svc.cluster.local:7687",
            "memgraph-data-0.memgraph.svc:7687",
            "memgraph-data-0-0.memgraph-data-0.default.svc.cluster.local:7687",
            "something.cluster.local:7687",
            "memgraph-coordinator-1:7687",
        ] {
            assert!(
                matches!(classify(address, None).0, Verdict::Unusable(_)),
                "{address}"
            );
        }
        for address in [
            "203.0.113.10:30001",
            "127.0.0.2:30001",
            "memgraph.example.com:7687",
            "localhost:7687",
            "[2001:db8::1]:7687",
        ] {
            assert_eq!(classify(address, None).0, Verdict::Usable, "{address}");
        }
    }

    #[test]
    fn in_cluster_names_point_at_their_service_or_pod() {
        assert_eq!(
            classify("memgraph-coordinator-1.mg.svc.cluster.local:7687", None).1,
            Some(Target::Service {
                namespace: "mg".into(),
                name: "memgraph-coordinator-1".into()
            })
        );
        assert_eq!(
            classify("memgraph-data-0-0.memgraph-data-0.mg.svc:7687", None).1,
            Some(Target::Pod {
                namespace: "mg".into(),
                name: "memgraph-data-0-0".into()
            })
        );
        assert_eq!(
            classify("memgraph-data-1:7687", None).1,
            Some(Target::Service {
                namespace: "default".into(),
                name: "memgraph-data-1".into()
            })
        );
    }
}
