//! Writes the seed corpora of the `packstream` and `bolt_reply` fuzz targets: realistic
//! server replies (HELLO/ROUTE/RUN SUCCESS, SHOW INSTANCES RECORDs, FAILURE, IGNORED),
//! encoded with this crate's own encoder. Run from the repository root:
//! `cargo run -p memgraph-bolt --example fuzz_seeds` (the files are committed).

use std::path::Path;

use memgraph_bolt::packstream::{encode, Value};

const SUCCESS: u8 = 0x70;
const RECORD: u8 = 0x71;
const IGNORED: u8 = 0x7E;
const FAILURE: u8 = 0x7F;

fn message(tag: u8, fields: Vec<Value>) -> Value {
    Value::Struct { tag, fields }
}

fn strings(items: &[&str]) -> Value {
    Value::List(items.iter().map(|s| Value::str(*s)).collect())
}

fn server(role: &str, addresses: &[&str]) -> Value {
    Value::map([
        ("role", Value::str(role)),
        ("addresses", strings(addresses)),
    ])
}

/// `SHOW INSTANCES` columns and one row, as Memgraph 3.x answers a coordinator.
fn instance_row(name: &str, bolt: &str, coordinator: &str, role: &str) -> Value {
    Value::List(vec![
        Value::str(name),
        Value::str(bolt),
        Value::str(coordinator),
        Value::str(format!("{name}.default.svc.cluster.local:10000")),
        Value::str("up"),
        Value::str(role),
        Value::Int(412),
    ])
}

fn seeds() -> Vec<(&'static str, Value)> {
    let c1 = "memgraph-coordinator-1.default.svc.cluster.local:7687";
    let c2 = "memgraph-coordinator-2.default.svc.cluster.local:7687";
    let external = "203.0.113.7:31001";
    vec![
        (
            "hello-success",
            message(
                SUCCESS,
                vec![Value::map([
                    ("server", Value::str("Neo4j/v5.11.0")),
                    ("connection_id", Value::str("bolt-7")),
                    ("hints", Value::map(Vec::<(String, Value)>::new())),
                ])],
            ),
        ),
        (
            "route-success",
            message(
                SUCCESS,
                vec![Value::map([(
                    "rt",
                    Value::map([
                        ("ttl", Value::Int(300)),
                        ("db", Value::str("memgraph")),
                        (
                            "servers",
                            Value::List(vec![
                                server("WRITE", &[external]),
                                server("READ", &["memgraph-data-1.default.svc.cluster.local:7687"]),
                                server("ROUTE", &[c1, c2, "[2001:db8::1]:7687"]),
                            ]),
                        ),
                    ]),
                )])],
            ),
        ),
        (
            "run-success",
            message(
                SUCCESS,
                vec![Value::map([
                    (
                        "fields",
                        strings(&[
                            "name",
                            "bolt_server",
                            "coordinator_server",
                            "management_server",
                            "health",
                            "role",
                            "last_succ_resp_ms",
                        ]),
                    ),
                    ("t_first", Value::Int(2)),
                    ("qid", Value::Int(-1)),
                ])],
            ),
        ),
        (
            "record-coordinator",
            message(
                RECORD,
                vec![instance_row(
                    "coordinator_1",
                    c1,
                    "memgraph-coordinator-1.default.svc.cluster.local:12000",
                    "leader",
                )],
            ),
        ),
        (
            "record-main",
            message(
                RECORD,
                vec![instance_row("instance_0", external, "", "main")],
            ),
        ),
        (
            "pull-success",
            message(
                SUCCESS,
                vec![Value::map([
                    ("type", Value::str("r")),
                    ("t_last", Value::Int(0)),
                    ("has_more", Value::Bool(false)),
                    ("stats", Value::map([("nodes-created", Value::Int(70000))])),
                    ("ratio", Value::Float(0.5)),
                    ("blob", Value::Bytes(vec![0, 1, 0xFF])),
                    ("none", Value::Null),
                    ("big", Value::Int(1 << 40)),
                ])],
            ),
        ),
        (
            "failure",
            message(
                FAILURE,
                vec![Value::map([
                    (
                        "code",
                        Value::str("Memgraph.ClientError.MemgraphError.MemgraphError"),
                    ),
                    (
                        "message",
                        Value::str(
                            "Couldn't register replica instance since coordinator is not a leader!",
                        ),
                    ),
                ])],
            ),
        ),
        ("ignored", message(IGNORED, vec![])),
    ]
}

fn main() -> std::io::Result<()> {
    for target in ["packstream", "bolt_reply"] {
        let dir = Path::new("fuzz/seeds").join(target);
        std::fs::create_dir_all(&dir)?;
        for (name, value) in seeds() {
            let mut bytes = Vec::new();
            encode(&value, &mut bytes).expect("seed values are small");
            std::fs::write(dir.join(name), bytes)?;
        }
    }
    Ok(())
}
