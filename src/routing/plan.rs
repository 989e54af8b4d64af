//! `routing sync`'s plan: given the rows of `SHOW INSTANCES` and each instance's external
//! address, which statements make the routing table right. Pure; executed by `mod.rs`.
//!
//! Version rules (docs/design.md, "Where the addresses in the routing table come
//! from"): 3.8+ changes a registered Bolt address in place with `UPDATE CONFIG FOR
//! COORDINATOR id {'bolt_server': ..}` / `UPDATE CONFIG FOR INSTANCE name {...}` on the
//! leader; 3.0–3.7 can only register anew (printed, never executed); before 3.0 the
//! bootstrap coordinator's entry is its `--coordinator-hostname`, which the webhook handles.

use std::collections::BTreeMap;
use std::fmt;

use super::bolt::QueryResult;
use super::packstream::Value;
use crate::decision::pod::Version;

/// `UPDATE CONFIG FOR ...` is in the grammar from 3.8 (coordinatorQuery in
/// src/query/frontend/opencypher/grammar/MemgraphCypher.g4, v3.8.0; absent at v3.7.2).
pub const UPDATE_CONFIG_SINCE: Version = Version::new(3, 8, 0);
/// From 3.9 a follower forwards UPDATE CONFIG to the leader; at 3.8.x it answers "Couldn't
/// update config because appending to Raft log failed." (docs/design.md, "Where the addresses in
/// the routing table come from").
pub const FORWARDS_TO_LEADER_SINCE: Version = Version::new(3, 9, 0);
pub const REGISTRATION_SINCE: Version = Version::new(3, 0, 0);

/// Must an `UPDATE CONFIG` be sent to the leader itself? On 3.8.x, and whenever the version
/// is not known (`latest`, a digest): the leader is right on every version.
pub fn needs_leader(version: Option<Version>) -> bool {
    version.is_none_or(|v| v < FORWARDS_TO_LEADER_SINCE)
}

/// Can Memgraph store this `bolt_server`? It splits the value on ':' and refuses more than
/// two parts (ParseAndCreateSocketOrAddress, src/io/network/endpoint.cpp, v3.8.0 to
/// v3.12.0), so no IPv6 literal can be registered, bracketed or not.
pub fn registrable(address: &str) -> Result<(), String> {
    if address.split(':').count() == 2 {
        return Ok(());
    }
    Err(format!(
        "{address} is an IPv6 address, which Memgraph cannot register (it splits bolt_server on ':'; src/io/network/endpoint.cpp); give the Service a DNS name with the annotation {}",
        crate::decision::view::EXTERNAL_HOST_ANNOTATION
    ))
}

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

fn column(row: &BTreeMap<&str, &Value>, i: usize, name: &'static str) -> Result<String, PlanError> {
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
        .enumerate()
        .map(|(i, row)| {
            let row = &row;
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
    /// What the plan's mode runs (UPDATE CONFIG) or prints (3.0-3.7).
    pub statements: Vec<String>,
    /// With the version unknown: what to run by hand if the leader refuses UPDATE CONFIG
    /// (it is older than 3.8). Empty when the version is known.
    pub by_hand: Vec<String>,
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
    /// The version planned for; `None`: unknown (an image tag such as `latest`), so UPDATE
    /// CONFIG is tried on the leader and what it accepts decides.
    pub version: Option<Version>,
    pub changes: Vec<Change>,
    /// Instances whose registered address already is the external one.
    pub unchanged: Vec<String>,
    /// Instances whose external address is not known, with the reason.
    pub unresolved: Vec<(String, String)>,
    /// Instances whose external address the cluster gives as a value that is not a host, or
    /// one Memgraph cannot register (IPv6): nothing is written for them.
    pub refused: Vec<(String, String)>,
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

/// An instance name as an unquoted Cypher symbolic name: a digit-first name would be a
/// syntax error (symbolicName in MemgraphCypher.g4), so it is refused here.
fn identifier(text: &str) -> Result<&str, PlanError> {
    if text.is_empty()
        || text.starts_with(|c: char| c.is_ascii_digit())
        || !text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
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
        // 3.0-3.7 cannot change a registration: a coordinator is removed (REMOVE COORDINATOR,
        // removeCoordinatorInstance in MemgraphCypher.g4 v3.0.0) and added again (adding an
        // id that exists fails); a data instance is unregistered and registered again.
        (Mode::Reregister, Kind::Coordinator { id }) => vec![
            format!("REMOVE COORDINATOR {id}"),
            format!(
                "ADD COORDINATOR {id} WITH CONFIG {{'bolt_server': {to}, 'coordinator_server': {}, 'management_server': {}}}",
                quoted(&instance.coordinator_server)?,
                quoted(&instance.management_server)?
            ),
        ],
        (Mode::Reregister, Kind::Data) => {
            let name = identifier(&instance.name)?;
            vec![
                format!("UNREGISTER INSTANCE {name}"),
                format!(
                    "REGISTER INSTANCE {name} WITH CONFIG {{'bolt_server': {to}, 'management_server': {}, 'replication_server': {}}}",
                    quoted(&instance.management_server)?,
                    quoted(&replication_server(instance, replication_port))?
                ),
            ]
        }
    })
}

/// The plan: one change per instance whose registered `bolt_server` differs from its
/// external address. Running it and planning again gives an empty plan.
pub fn plan(
    instances: &[Instance],
    desired: &BTreeMap<String, Desired>,
    version: Option<Version>,
    replication_port: u16,
) -> Result<Plan, PlanError> {
    let mode = match version {
        None => Mode::UpdateConfig,
        Some(v) if v >= UPDATE_CONFIG_SINCE => Mode::UpdateConfig,
        Some(v) if v >= REGISTRATION_SINCE => Mode::Reregister,
        Some(v) => return Err(PlanError::TooOld(v)),
    };
    let mut plan = Plan {
        mode,
        version,
        changes: Vec::new(),
        unchanged: Vec::new(),
        unresolved: Vec::new(),
        refused: Vec::new(),
    };
    for instance in instances {
        match desired.get(&instance.name) {
            None => plan.unresolved.push((
                instance.name.clone(),
                "no external address was looked up".into(),
            )),
            Some(Desired::Unknown(why)) => {
                plan.unresolved.push((instance.name.clone(), why.clone()))
            }
            Some(Desired::Invalid(why)) => plan.refused.push((instance.name.clone(), why.clone())),
            Some(Desired::Address { address, .. }) if *address == instance.bolt_server => {
                plan.unchanged.push(instance.name.clone())
            }
            Some(Desired::Address { address, source }) => match registrable(address) {
                Err(why) => plan.refused.push((instance.name.clone(), why)),
                Ok(()) => plan.changes.push(Change {
                    instance: instance.name.clone(),
                    from: instance.bolt_server.clone(),
                    to: address.clone(),
                    source: source.clone(),
                    statements: statements(instance, address, &plan.mode, replication_port)?,
                    by_hand: if version.is_none() {
                        statements(instance, address, &Mode::Reregister, replication_port)?
                    } else {
                        Vec::new()
                    },
                }),
            },
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
        let p = plan(&all, &want, Some(Version::new(3, 8, 0)), 20000).unwrap();
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
        let first = plan(&all, &want, Some(Version::new(3, 9, 1)), 20000).unwrap();
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
        let second = plan(&applied, &want, Some(Version::new(3, 9, 1)), 20000).unwrap();
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
        let p = plan(&all, &want, Some(Version::new(3, 7, 2)), 20000).unwrap();
        assert_eq!(p.mode, Mode::Reregister);
        let statements: Vec<_> = p
            .changes
            .iter()
            .flat_map(|c| c.statements.clone())
            .collect();
        assert_eq!(
            statements,
            [
                "REMOVE COORDINATOR 2",
                "ADD COORDINATOR 2 WITH CONFIG {'bolt_server': '203.0.113.5:30012', 'coordinator_server': 'memgraph-coordinator-2.default.svc.cluster.local:12000', 'management_server': 'memgraph-coordinator-2.default.svc.cluster.local:10000'}",
                "UNREGISTER INSTANCE instance_1",
                "REGISTER INSTANCE instance_1 WITH CONFIG {'bolt_server': '203.0.113.5:30021', 'management_server': 'memgraph-data-1.default.svc.cluster.local:10000', 'replication_server': 'memgraph-data-1.default.svc.cluster.local:20000'}",
            ]
        );
    }

    #[test]
    fn before_3_0_there_is_no_plan_and_bad_text_is_refused() {
        let all = instances(&chart_rows()).unwrap();
        assert_eq!(
            plan(&all, &BTreeMap::new(), Some(Version::new(2, 22, 0)), 20000),
            Err(PlanError::TooOld(Version::new(2, 22, 0)))
        );
        let evil = desired(&[("instance_0", "x'}) DETACH DELETE n //:1")]);
        assert!(matches!(
            plan(&all, &evil, Some(Version::new(3, 8, 0)), 20000),
            Err(PlanError::Unquotable(_))
        ));
    }
    #[test]
    fn an_unknown_version_tries_update_config_and_keeps_the_statements_by_hand() {
        let all = instances(&chart_rows()).unwrap();
        let want = desired(&[("instance_1", "203.0.113.5:30021")]);
        let p = plan(&all, &want, None, 20000).unwrap();
        assert_eq!(p.mode, Mode::UpdateConfig);
        assert_eq!(p.version, None);
        assert_eq!(
            p.changes[0].statements,
            ["UPDATE CONFIG FOR INSTANCE instance_1 {'bolt_server': '203.0.113.5:30021'}"]
        );
        assert_eq!(p.changes[0].by_hand[0], "UNREGISTER INSTANCE instance_1");
        assert!(needs_leader(None));
        assert!(needs_leader(Some(Version::new(3, 8, 1))));
        assert!(!needs_leader(Some(Version::new(3, 9, 0))));
    }

    #[test]
    fn an_ipv6_address_is_refused_before_any_statement() {
        let all = instances(&chart_rows()).unwrap();
        let want = desired(&[
            ("instance_0", "[2001:db8::5]:30020"),
            ("instance_1", "2001:db8::6:30021"),
            ("coordinator_1", "203.0.113.5:30011"),
        ]);
        let p = plan(&all, &want, Some(Version::new(3, 12, 0)), 20000).unwrap();
        assert_eq!(p.changes.len(), 1, "{p:?}");
        let refused: Vec<_> = p.refused.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(refused, ["instance_0", "instance_1"]);
        assert!(p.refused[0].1.contains("IPv6"), "{}", p.refused[0].1);
    }

    #[test]
    fn a_digit_first_instance_name_is_not_put_in_a_statement() {
        let mut all = instances(&chart_rows()).unwrap();
        all[3].name = "1instance".into();
        let want = desired(&[("1instance", "203.0.113.5:30021")]);
        assert!(matches!(
            plan(&all, &want, Some(Version::new(3, 8, 0)), 20000),
            Err(PlanError::Unquotable(_))
        ));
    }
}
