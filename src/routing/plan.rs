//! `routing sync`'s plan: given the rows of `SHOW INSTANCES` and each instance's external
//! address, which statements make the routing table right. Pure; executed by `mod.rs`.
//!
//! Version rules (shared/memgraph-ha.md, "Where the addresses in the routing table come
//! from"): 3.8+ changes a registered Bolt address in place with `UPDATE CONFIG FOR
//! COORDINATOR id {'bolt_server': ..}` / `UPDATE CONFIG FOR INSTANCE name {...}` on the
//! leader; 3.0–3.7 can only register anew (printed, never executed); before 3.0 the
//! bootstrap coordinator's entry is its `--coordinator-hostname`, which the webhook handles.

use std::collections::BTreeMap;
use std::fmt;

use super::bolt::QueryResult;
use super::packstream::Value;
use crate::decision::pod::Version;

pub const UPDATE_CONFIG_SINCE: Version = Version::new(3, 8, 0);
pub const REGISTRATION_SINCE: Version = Version::new(3, 0, 0);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("SHOW INSTANCES has no {0:?} column; is this a Memgraph coordinator?")]
    MissingColumn(&'static str),
    #[error("SHOW INSTANCES row {row}: column {column:?} is not a string")]
    NotAString { row: usize, column: &'static str },
    #[error("coordinator {0:?} does not end in _<id>; cannot build its statement")]
    CoordinatorId(String),
    #[error("Memgraph {0} is older than 3.0: the bootstrap coordinator's ROUTE entry is its --coordinator-hostname flag (set by the webhook), not a registration; routing sync supports 3.0 and later")]
    TooOld(Version),
    #[error("{0:?} cannot be put in a statement (quotes or whitespace)")]
    Unquotable(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Coordinator { id: u32 },
    Data,
}

/// One row of `SHOW INSTANCES` (columns `name, bolt_server, coordinator_server,
/// management_server, health, role, ...`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub name: String,
    pub kind: Kind,
    pub bolt_server: String,
    pub coordinator_server: String,
    pub management_server: String,
    pub health: String,
    /// leader, follower, main, replica, unknown.
    pub role: String,
}

impl Instance {
    pub fn is_leader(&self) -> bool {
        self.role.eq_ignore_ascii_case("leader")
    }
}

fn column(
    row: &BTreeMap<String, Value>,
    i: usize,
    name: &'static str,
) -> Result<String, PlanError> {
    match row.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Null) | None => Ok(String::new()),
        Some(_) => Err(PlanError::NotAString {
            row: i + 1,
            column: name,
        }),
    }
}

pub fn instances(result: &QueryResult) -> Result<Vec<Instance>, PlanError> {
    for required in ["name", "bolt_server", "role"] {
        if !result.fields.iter().any(|f| f == required) {
            return Err(PlanError::MissingColumn(required));
        }
    }
    result
        .rows()
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let name = column(row, i, "name")?;
            let coordinator_server = column(row, i, "coordinator_server")?;
            let role = column(row, i, "role")?;
            let is_coordinator = !coordinator_server.is_empty()
                || matches!(role.to_ascii_lowercase().as_str(), "leader" | "follower");
            let kind = if is_coordinator {
                let id = name
                    .rsplit_once('_')
                    .and_then(|(_, id)| id.parse().ok())
                    .ok_or_else(|| PlanError::CoordinatorId(name.clone()))?;
                Kind::Coordinator { id }
            } else {
                Kind::Data
            };
            Ok(Instance {
                kind,
                bolt_server: column(row, i, "bolt_server")?,
                coordinator_server,
                management_server: column(row, i, "management_server")?,
                health: column(row, i, "health")?,
                role,
                name,
            })
        })
        .collect()
}

/// What the cluster says the instance's Bolt address should be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Desired {
    Address {
        address: String,
        source: String,
    },
    Unknown(String),
    /// The cluster gives a value that is not a host: refused, never written.
    Invalid(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub instance: String,
    pub from: String,
    pub to: String,
    pub source: String,
    pub statements: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 3.8+: statements to execute on the leader.
    UpdateConfig,
    /// 3.0–3.7: statements an operator runs after removing the old registration.
    Reregister,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub mode: Mode,
    pub changes: Vec<Change>,
    /// Instances whose registered address already is the external one.
    pub unchanged: Vec<String>,
    /// Instances whose external address is not known, with the reason.
    pub unresolved: Vec<(String, String)>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::UpdateConfig => "UPDATE CONFIG on the leader (Memgraph 3.8+)",
            Mode::Reregister => "new registrations, to run by hand (Memgraph 3.0-3.7 cannot change an address in place)",
        })
    }
}

/// Single-quoted Cypher string; refuses anything that would need escaping (addresses never do).
fn quoted(text: &str) -> Result<String, PlanError> {
    if text.is_empty()
        || text
            .chars()
            .any(|c| c == '\'' || c == '"' || c == '\\' || c.is_whitespace())
    {
        return Err(PlanError::Unquotable(text.to_string()));
    }
    Ok(format!("'{text}'"))
}

fn identifier(text: &str) -> Result<&str, PlanError> {
    if text.is_empty() || !text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(PlanError::Unquotable(text.to_string()));
    }
    Ok(text)
}

/// The replication endpoint is not in SHOW INSTANCES: the management host with
/// `replication_port` (the chart's 20000).
fn replication_server(instance: &Instance, replication_port: u16) -> String {
    let host = super::table::host_of(&instance.management_server);
    let host = if host.is_empty() {
        super::table::host_of(&instance.bolt_server)
    } else {
        host
    };
    crate::decision::hostport::format_host_port(host, replication_port)
}

fn statements(
    instance: &Instance,
    to: &str,
    mode: &Mode,
    replication_port: u16,
) -> Result<Vec<String>, PlanError> {
    let to = quoted(to)?;
    Ok(match (mode, &instance.kind) {
        (Mode::UpdateConfig, Kind::Coordinator { id }) => {
            vec![format!("UPDATE CONFIG FOR COORDINATOR {id} {{'bolt_server': {to}}}")]
        }
        (Mode::UpdateConfig, Kind::Data) => vec![format!(
            "UPDATE CONFIG FOR INSTANCE {} {{'bolt_server': {to}}}",
            identifier(&instance.name)?
        )],
        (Mode::Reregister, Kind::Coordinator { id }) => vec![format!(
            "ADD COORDINATOR {id} WITH CONFIG {{'bolt_server': {to}, 'coordinator_server': {}, 'management_server': {}}}",
            quoted(&instance.coordinator_server)?,
            quoted(&instance.management_server)?
        )],
        (Mode::Reregister, Kind::Data) => vec![format!(
            "REGISTER INSTANCE {} WITH CONFIG {{'bolt_server': {to}, 'management_server': {}, 'replication_server': {}}}",
            identifier(&instance.name)?,
            quoted(&instance.management_server)?,
            quoted(&replication_server(instance, replication_port))?
        )],
    })
}

/// The plan: one change per instance whose registered `bolt_server` differs from its
/// external address. Running it and planning again gives an empty plan.
pub fn plan(
    instances: &[Instance],
    desired: &BTreeMap<String, Desired>,
    version: Version,
    replication_port: u16,
) -> Result<Plan, PlanError> {
    let mode = if version >= UPDATE_CONFIG_SINCE {
        Mode::UpdateConfig
    } else if version >= REGISTRATION_SINCE {
        Mode::Reregister
    } else {
        return Err(PlanError::TooOld(version));
    };
    let mut plan = Plan {
        mode,
        changes: Vec::new(),
        unchanged: Vec::new(),
        unresolved: Vec::new(),
    };
    for instance in instances {
        match desired.get(&instance.name) {
            None => plan.unresolved.push((
                instance.name.clone(),
                "no external address was looked up".into(),
            )),
            Some(Desired::Unknown(why) | Desired::Invalid(why)) => {
                plan.unresolved.push((instance.name.clone(), why.clone()))
            }
            Some(Desired::Address { address, .. }) if *address == instance.bolt_server => {
                plan.unchanged.push(instance.name.clone())
            }
            Some(Desired::Address { address, source }) => plan.changes.push(Change {
                instance: instance.name.clone(),
                from: instance.bolt_server.clone(),
                to: address.clone(),
                source: source.clone(),
                statements: statements(instance, address, &plan.mode, replication_port)?,
            }),
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show_instances(rows: &[[&str; 6]]) -> QueryResult {
        QueryResult {
            fields: [
                "name",
                "bolt_server",
                "coordinator_server",
                "management_server",
                "health",
                "role",
                "last_succ_resp_ms",
            ]
            .map(String::from)
            .to_vec(),
            records: rows
                .iter()
                .map(|r| {
                    r.iter()
                        .map(|s| Value::str(*s))
                        .chain([Value::Int(0)])
                        .collect()
                })
                .collect(),
        }
    }

    fn chart_rows() -> QueryResult {
        let c = |n: u32| format!("memgraph-coordinator-{n}.default.svc.cluster.local");
        let d = |n: u32| format!("memgraph-data-{n}.default.svc.cluster.local");
        let rows: Vec<[String; 6]> = vec![
            [
                "coordinator_1".into(),
                format!("{}:7687", c(1)),
                format!("{}:12000", c(1)),
                format!("{}:10000", c(1)),
                "up".into(),
                "leader".into(),
            ],
            [
                "coordinator_2".into(),
                format!("{}:7687", c(2)),
                format!("{}:12000", c(2)),
                format!("{}:10000", c(2)),
                "up".into(),
                "follower".into(),
            ],
            [
                "instance_0".into(),
                format!("{}:7687", d(0)),
                String::new(),
                format!("{}:10000", d(0)),
                "up".into(),
                "main".into(),
            ],
            [
                "instance_1".into(),
                format!("{}:7687", d(1)),
                String::new(),
                format!("{}:10000", d(1)),
                "up".into(),
                "replica".into(),
            ],
        ];
        let refs: Vec<[&str; 6]> = rows
            .iter()
            .map(|r| r.each_ref().map(String::as_str))
            .collect();
        show_instances(&refs)
    }

    fn desired(pairs: &[(&str, &str)]) -> BTreeMap<String, Desired> {
        pairs
            .iter()
            .map(|(n, a)| {
                (
                    n.to_string(),
                    Desired::Address {
                        address: a.to_string(),
                        source: "test".into(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn rows_become_instances() {
        let all = instances(&chart_rows()).unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(all[0].kind, Kind::Coordinator { id: 1 });
        assert!(all[0].is_leader());
        assert_eq!(all[2].kind, Kind::Data);
        assert_eq!(all[3].role, "replica");
    }

    #[test]
    fn a_result_that_is_not_show_instances_is_refused() {
        let result = QueryResult {
            fields: vec!["x".into()],
            records: vec![],
        };
        assert_eq!(instances(&result), Err(PlanError::MissingColumn("name")));
        let mut bad = chart_rows();
        bad.records[0][1] = Value::Int(3);
        assert!(matches!(
            instances(&bad),
            Err(PlanError::NotAString {
                row: 1,
                column: "bolt_server"
            })
        ));
    }

    #[test]
    fn memgraph_3_8_updates_in_place_only_what_differs() {
        let all = instances(&chart_rows()).unwrap();
        let mut want = desired(&[
            ("coordinator_1", "203.0.113.5:30011"),
            ("coordinator_2", "203.0.113.5:30012"),
            ("instance_0", "203.0.113.5:30020"),
        ]);
        want.insert(
            "instance_1".into(),
            Desired::Unknown("LoadBalancer pending".into()),
        );
        let p = plan(&all, &want, Version::new(3, 8, 0), 20000).unwrap();
        assert_eq!(p.mode, Mode::UpdateConfig);
        let statements: Vec<_> = p
            .changes
            .iter()
            .flat_map(|c| c.statements.clone())
            .collect();
        assert_eq!(
            statements,
            [
                "UPDATE CONFIG FOR COORDINATOR 1 {'bolt_server': '203.0.113.5:30011'}",
                "UPDATE CONFIG FOR COORDINATOR 2 {'bolt_server': '203.0.113.5:30012'}",
                "UPDATE CONFIG FOR INSTANCE instance_0 {'bolt_server': '203.0.113.5:30020'}",
            ]
        );
        assert_eq!(
            p.unresolved,
            [("instance_1".to_string(), "LoadBalancer pending".to_string())]
        );
    }

    #[test]
    fn a_second_plan_after_applying_is_empty() {
        let all = instances(&chart_rows()).unwrap();
        let want = desired(&[
            ("coordinator_1", "203.0.113.5:30011"),
            ("coordinator_2", "203.0.113.5:30012"),
            ("instance_0", "203.0.113.5:30020"),
            ("instance_1", "203.0.113.5:30021"),
        ]);
        let first = plan(&all, &want, Version::new(3, 9, 1), 20000).unwrap();
        assert_eq!(first.changes.len(), 4);
        // Apply: the registered addresses become the external ones.
        let applied: Vec<Instance> = all
            .into_iter()
            .map(|mut i| {
                if let Some(c) = first.changes.iter().find(|c| c.instance == i.name) {
                    i.bolt_server = c.to.clone();
                }
                i
            })
            .collect();
        let second = plan(&applied, &want, Version::new(3, 9, 1), 20000).unwrap();
        assert!(second.is_empty());
        assert_eq!(second.unchanged.len(), 4);
    }

    #[test]
    fn memgraph_3_0_to_3_7_gets_registrations_to_run_by_hand() {
        let all = instances(&chart_rows()).unwrap();
        let want = desired(&[
            ("coordinator_2", "203.0.113.5:30012"),
            ("instance_1", "203.0.113.5:30021"),
        ]);
        let p = plan(&all, &want, Version::new(3, 7, 2), 20000).unwrap();
        assert_eq!(p.mode, Mode::Reregister);
        let statements: Vec<_> = p
            .changes
            .iter()
            .flat_map(|c| c.statements.clone())
            .collect();
        assert_eq!(
            statements,
            [
                "ADD COORDINATOR 2 WITH CONFIG {'bolt_server': '203.0.113.5:30012', 'coordinator_server': 'memgraph-coordinator-2.default.svc.cluster.local:12000', 'management_server': 'memgraph-coordinator-2.default.svc.cluster.local:10000'}",
                "REGISTER INSTANCE instance_1 WITH CONFIG {'bolt_server': '203.0.113.5:30021', 'management_server': 'memgraph-data-1.default.svc.cluster.local:10000', 'replication_server': 'memgraph-data-1.default.svc.cluster.local:20000'}",
            ]
        );
    }

    #[test]
    fn before_3_0_there_is_no_plan_and_bad_text_is_refused() {
        let all = instances(&chart_rows()).unwrap();
        assert_eq!(
            plan(&all, &BTreeMap::new(), Version::new(2, 22, 0), 20000),
            Err(PlanError::TooOld(Version::new(2, 22, 0)))
        );
        let evil = desired(&[("instance_0", "x'}) DETACH DELETE n //:1")]);
        assert!(matches!(
            plan(&all, &evil, Version::new(3, 8, 0), 20000),
            Err(PlanError::Unquotable(_))
        ));
    }
}
