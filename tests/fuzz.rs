//! Property-based fuzzing of the whole path bytes → review → decision → patch (proptest;
//! cargo-fuzz needs a nightly toolchain, which this project does not depend on). Seeds are the
//! chart-shaped pods in tests/fixtures/pods and the reviews in tests/fixtures/fuzz. Properties:
//! nothing panics; every patch applies to its pod; a patched pod needs no further patch.
//! PROPTEST_CASES sets the executions per property (default 1,000).

use std::sync::atomic::{AtomicU64, Ordering};

use memgraph_address_injector::cluster::state_from_text;
use memgraph_address_injector::decision::view::ClusterState;
use memgraph_address_injector::decision::{self, review, Config, Outcome};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use serde_json::{json, Value};

fn read(path: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{path}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn seeds() -> Vec<Value> {
    let mut pods = Vec::new();
    let dir = format!("{}/tests/fixtures/pods", env!("CARGO_MANIFEST_DIR"));
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for path in names {
        pods.push(serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap());
    }
    for review in [
        "fuzz/review-coordinator.json",
        "fuzz/review-env-coordinator.json",
    ] {
        let v: Value = serde_json::from_str(&read(review)).unwrap();
        pods.push(v["request"]["object"].clone());
    }
    pods
}

fn states() -> Vec<ClusterState> {
    [
        "nodeport.yaml",
        "nodeport-internal-only.yaml",
        "loadbalancer.json",
        "loadbalancer-pending.yaml",
    ]
    .iter()
    .map(|s| state_from_text(&read(&format!("states/{s}")), s).unwrap())
    .collect()
}

/// Every JSON pointer in a value.
fn pointers(value: &Value, prefix: String, out: &mut Vec<String>) {
    out.push(prefix.clone());
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                pointers(
                    v,
                    format!("{prefix}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                pointers(v, format!("{prefix}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// Values chosen to reach Memgraph flag, port, version and image parsing and patch paths.
fn interesting() -> impl Strategy<Value = Value> {
    let strings = prop_oneof![
        Just("--coordinator-id".to_string()),
        Just("--coordinator-id=7".to_string()),
        Just("--coordinator-hostname".to_string()),
        Just("--coordinator_hostname=x".to_string()),
        Just("--bolt-port=abc".to_string()),
        Just("--bolt-port=70000".to_string()),
        Just("--bolt-port".to_string()),
        Just("--management-port=10000".to_string()),
        Just("-coordinator-port=12000".to_string()),
        Just("memgraph/memgraph:2.22.0".to_string()),
        Just("memgraph/memgraph-mage:1.0-memgraph-".to_string()),
        Just("memgraph/memgraph@sha256:".to_string()),
        Just("::::/memgraph/memgraph:2.2x".to_string()),
        Just("MEMGRAPH_EXTERNAL_BOLT_ADDRESS".to_string()),
        Just("MEMGRAPH_COORDINATOR_ID".to_string()),
        Just("MEMGRAPH_BOLT_PORT".to_string()),
        Just("coordinator".to_string()),
        Just("memgraph-coordinator".to_string()),
        Just("StatefulSet".to_string()),
        Just("a/b~c".to_string()),
        Just(String::new()),
        "\\PC{0,12}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (0i64..70000).prop_map(|n| json!(n)),
        strings.prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                "[a-zA-Z]{1,8}|name|value|args|env|image|labels|valueFrom",
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    Replace(usize, Value),
    Remove(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), interesting()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        1 => any::<usize>().prop_map(Mutation::Remove),
    ]
}

fn apply(pod: &mut Value, m: &Mutation) {
    let mut all = Vec::new();
    pointers(pod, String::new(), &mut all);
    match m {
        Mutation::Replace(i, v) => {
            let path = &all[i % all.len()];
            if path.is_empty() {
                return;
            }
            if let Some(slot) = pod.pointer_mut(path) {
                *slot = v.clone();
            }
        }
        Mutation::Remove(i) => {
            let path = all[i % all.len()].clone();
            if let Some((parent, key)) = path.rsplit_once('/') {
                match pod.pointer_mut(parent) {
                    Some(Value::Object(map)) => {
                        map.remove(&key.replace("~1", "/").replace("~0", "~"));
                    }
                    Some(Value::Array(items)) => {
                        if let Ok(i) = key.parse::<usize>() {
                            if i < items.len() {
                                items.remove(i);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

fn wrap(pod: &Value) -> Vec<u8> {
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "fuzz", "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "operation": "CREATE", "namespace": "memgraph", "object": pod}})
    .to_string()
    .into_bytes()
}

fn check_pod(
    pod: &Value,
    state: &ClusterState,
    config: &Config,
    patched_count: &AtomicU64,
) -> Result<(), TestCaseError> {
    let body = wrap(pod);
    let request = review::parse(&body).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let decision = decision::decide(&request, state, config);
    let encoded = review::encode(&request.uid, &decision);
    prop_assert!(serde_json::from_slice::<Value>(&encoded).is_ok());
    if decision.patch.is_empty() {
        return Ok(());
    }
    patched_count.fetch_add(1, Ordering::Relaxed);
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &decision.patch).map_err(|e| {
        TestCaseError::fail(format!("patch {:?} does not apply: {e}", decision.patch))
    })?;
    let again_body = wrap(&patched);
    let again = review::parse(&again_body).unwrap();
    let second = decision::decide(&again, state, config);
    prop_assert!(
        second.patch.is_empty(),
        "not idempotent: {:?} after {:?}",
        second.patch,
        decision.patch
    );
    // A patch that only stamped the reconciler's label leaves the outcome as it was (for
    // example NotExposed: no Service yet); any other patch leaves nothing to change.
    prop_assert!(
        second.outcome == Outcome::Unchanged || second.outcome == decision.outcome,
        "{:?} after {:?} ({:?})",
        second.outcome,
        decision.outcome,
        decision.patch
    );
    Ok(())
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(1000);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn finish(
    name: &str,
    executions: &AtomicU64,
    patched: &AtomicU64,
    result: Result<(), proptest::test_runner::TestError<impl std::fmt::Debug>>,
) {
    eprintln!(
        "fuzz {name}: {} executions, {} produced a patch that was applied and re-reviewed",
        executions.load(Ordering::Relaxed),
        patched.load(Ordering::Relaxed)
    );
    if let Err(err) = result {
        panic!("{name}: {err}");
    }
}

#[test]
fn raw_bytes_never_panic() {
    let executions = AtomicU64::new(0);
    let states = states();
    let config = Config::default();
    let real = read("fuzz/review-coordinator.json").into_bytes();
    let strategy = (
        prop::collection::vec(any::<u8>(), 0..2048),
        0usize..8,
        any::<usize>(),
    );
    let result = TestRunner::new(self::config()).run(&strategy, |(bytes, seed, cut)| {
        // Random bytes, and random truncations of a real review.
        let truncated = &real[..cut % real.len()];
        for body in [&bytes[..], truncated] {
            executions.fetch_add(1, Ordering::Relaxed);
            if let Ok(request) = review::parse(body) {
                let decision = decision::decide(&request, &states[seed % states.len()], &config);
                let _ = review::encode(&request.uid, &decision);
            }
        }
        Ok(())
    });
    finish("raw bytes", &executions, &AtomicU64::new(0), result);
}

#[test]
fn mutated_chart_pods_give_patches_that_apply_and_converge() {
    let executions = AtomicU64::new(0);
    let patched = AtomicU64::new(0);
    let seeds = seeds();
    let states = states();
    let config = Config::default();
    let strategy = (
        any::<usize>(),
        0usize..4,
        prop::collection::vec(mutation(), 0..6),
    );
    let result = TestRunner::new(self::config()).run(&strategy, |(seed, state, mutations)| {
        let mut pod = seeds[seed % seeds.len()].clone();
        for m in &mutations {
            apply(&mut pod, m);
        }
        executions.fetch_add(1, Ordering::Relaxed);
        check_pod(&pod, &states[state], &config, &patched)
    });
    finish("mutated pods", &executions, &patched, result);
}
