//! An AdmissionReview body as the API server (or anyone reaching the webhook port) sends it:
//! `review::parse`, `decide` against each cluster state of tests/fixtures/states, and
//! `review::encode`. Beyond "no panic": the response is JSON, a patch applies to the pod it
//! was made for, and the patched pod needs no further patch.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use memgraph_address_core::view::ClusterState;
use memgraph_address_core::{decide, review, state, Config, Outcome};
use serde_json::Value;

const STATES: [(&str, &str); 4] = [
    (
        "nodeport.yaml",
        include_str!("../../tests/fixtures/states/nodeport.yaml"),
    ),
    (
        "nodeport-internal-only.yaml",
        include_str!("../../tests/fixtures/states/nodeport-internal-only.yaml"),
    ),
    (
        "loadbalancer.json",
        include_str!("../../tests/fixtures/states/loadbalancer.json"),
    ),
    (
        "loadbalancer-pending.yaml",
        include_str!("../../tests/fixtures/states/loadbalancer-pending.yaml"),
    ),
];

fn states() -> &'static [ClusterState] {
    static STATES_PARSED: OnceLock<Vec<ClusterState>> = OnceLock::new();
    STATES_PARSED.get_or_init(|| {
        STATES
            .iter()
            .map(|(path, text)| state::state_from_text(text, path).expect("fixture state"))
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(request) = review::parse(data) else {
        return;
    };
    let config = Config::default();
    for cluster in states() {
        let decision = decide(&request, cluster, &config);
        let encoded = review::encode(&request.uid, &decision);
        let response: Value = serde_json::from_slice(&encoded).expect("the response is JSON");
        assert_eq!(response["response"]["uid"], *request.uid);
        if decision.patch.is_empty() {
            continue;
        }
        // A patch means the body is JSON with a Pod at request.object. Valid JSON that a
        // Value cannot hold (a number beyond f64, such as 1e999999, in a field the Pod
        // decoding skips) leaves nothing to apply the patch to; the API server, which
        // decodes the object itself first, never sends one.
        let Ok(mut body) = serde_json::from_slice::<Value>(data) else {
            continue;
        };
        let pod = body["request"]["object"].take();
        let mut patched = pod.clone();
        if let Err(err) = json_patch::patch(&mut patched, &decision.patch) {
            panic!("patch {:?} does not apply to {pod}: {err}", decision.patch);
        }
        body["request"]["object"] = patched;
        let again_body = serde_json::to_vec(&body).expect("a Value serialises");
        let again = review::parse(&again_body).expect("the patched review parses");
        let second = decide(&again, cluster, &config);
        assert!(
            second.patch.is_empty(),
            "not idempotent: {:?} after {:?}",
            second.patch,
            decision.patch
        );
        // A patch that only stamped the reconciler's label leaves the outcome as it was
        // (NotExposed before a Service exists); any other patch leaves nothing to change.
        assert!(
            second.outcome == Outcome::Unchanged || second.outcome == decision.outcome,
            "{:?} after {:?} ({:?})",
            second.outcome,
            decision.outcome,
            decision.patch
        );
    }
});
