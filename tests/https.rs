//! `serve --cluster-state` over real TLS on 127.0.0.1, with `gen-certs` certificates and a
//! client that verifies the CA: responses, health, metrics and each kind of bad input.

mod support;

use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};
use support::*;

fn start(dir: &std::path::Path, state: &str) -> Webhook {
    let state = fixture(&format!("states/{state}"));
    start_webhook(dir, &["--cluster-state", state.to_str().unwrap()], &[])
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
    content_type: &str,
) -> (u16, String) {
    let response = client
        .post(url)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

fn decode_patch(response: &Value) -> json_patch::Patch {
    let b64 = response["response"]["patch"]
        .as_str()
        .expect("a base64 patch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64");
    serde_json::from_slice(&bytes).expect("JSON Patch")
}

#[tokio::test]
async fn mutate_health_metrics_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let webhook = start(dir.path(), "nodeport.yaml");
    let client = https_client(&webhook.ca_pem());
    let plain = reqwest::Client::new();

    let ready = plain
        .get(webhook.health_url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let live = plain
        .get(webhook.health_url("/livez"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);

    // A chart-shaped data pod: allowed, patched, uid echoed.
    let pod = yaml_fixture("pods/data-3x.yaml");
    let review = review_of(&pod, "memgraph", "3e7c2d4a-1111-4c1d-9a55-000000000001");
    let (status, body) = post(
        &client,
        &webhook.url("/mutate"),
        review.to_string().into_bytes(),
        "application/json",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let response: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(response["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(response["kind"], "AdmissionReview");
    assert_eq!(
        response["response"]["uid"],
        "3e7c2d4a-1111-4c1d-9a55-000000000001"
    );
    assert_eq!(response["response"]["allowed"], true);
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &decode_patch(&response)).expect("patch applies");
    assert_eq!(
        patched["spec"]["containers"][0]["env"],
        json!([{"name": "MEMGRAPH_EXTERNAL_BOLT_ADDRESS", "value": "203.0.113.10:32000"}])
    );
    assert_eq!(
        response["response"]["auditAnnotations"]["bolt-address"],
        "203.0.113.10:32000"
    );

    // The patched pod again: no patch.
    let again = review_of(&patched, "memgraph", "u2");
    let (_, body) = post(
        &client,
        &webhook.url("/mutate"),
        again.to_string().into_bytes(),
        "application/json",
    )
    .await;
    let response: Value = serde_json::from_str(&body).unwrap();
    assert!(response["response"].get("patch").is_none(), "{body}");

    // An object that is not a readable Pod: allowed, no patch, a warning.
    let broken = review_of(&json!({"spec": {"containers": 7}}), "memgraph", "u3");
    let (status, body) = post(
        &client,
        &webhook.url("/mutate"),
        broken.to_string().into_bytes(),
        "application/json",
    )
    .await;
    assert_eq!(status, 200);
    let response: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(response["response"]["allowed"], true);
    assert!(response["response"].get("patch").is_none());
    assert!(response["response"]["warnings"][0]
        .as_str()
        .unwrap()
        .contains("could not read the Pod"));

    // Bad input: each a 4xx whose body names the problem.
    let (status, body) = post(
        &client,
        &webhook.url("/mutate"),
        b"{not json".to_vec(),
        "application/json",
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("not a JSON AdmissionReview"), "{body}");
    let (status, body) = post(
        &client,
        &webhook.url("/mutate"),
        review.to_string().into_bytes(),
        "text/plain",
    )
    .await;
    assert_eq!(status, 415);
    assert!(body.contains("Content-Type: application/json"), "{body}");
    let no_request = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"});
    let (status, body) = post(
        &client,
        &webhook.url("/mutate"),
        no_request.to_string().into_bytes(),
        "application/json",
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("no request"), "{body}");
    let huge = vec![b' '; 7 * 1024 * 1024 + 10];
    let (status, body) = post(&client, &webhook.url("/mutate"), huge, "application/json").await;
    assert_eq!(status, 413);
    assert!(body.contains("7 MiB"), "{body}");

    let metrics = plain
        .get(webhook.health_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"memgraph_address_injector_admission_requests_total{result="injected",role="data"} 1"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains(r#"memgraph_address_injector_admission_requests_total{result="unchanged",role="data"} 1"#), "{metrics}");
    assert!(
        metrics
            .contains(r#"memgraph_address_injector_rejected_requests_total{reason="too_large"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("memgraph_address_injector_decision_duration_seconds_count 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"memgraph_address_injector_cached_objects{kind="Service"} 7"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn pending_loadbalancer_is_denied_with_a_message_naming_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let webhook = start(dir.path(), "loadbalancer-pending.yaml");
    let client = https_client(&webhook.ca_pem());
    let review = review_of(&yaml_fixture("pods/data-3x.yaml"), "memgraph", "u-pending");
    let (status, body) = post(
        &client,
        &webhook.url("/mutate"),
        review.to_string().into_bytes(),
        "application/json",
    )
    .await;
    assert_eq!(status, 200);
    let response: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(response["response"]["allowed"], false);
    let message = response["response"]["status"]["message"].as_str().unwrap();
    assert!(message.contains("memgraph-data-0-external"), "{message}");
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_ca_is_refused_and_sigterm_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut webhook = start(dir.path(), "nodeport.yaml");
    let other = tempfile::tempdir().unwrap();
    gen_certs(other.path(), &["127.0.0.1"]);
    let stranger = https_client(&std::fs::read(other.path().join("ca.crt")).unwrap());
    let err = stranger
        .get(webhook.url("/mutate"))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect() || err.is_request(), "{err:?}");

    let status = webhook
        .process
        .terminate(Duration::from_secs(10))
        .expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}\n{}", webhook.log_text());
}

#[test]
fn gen_certs_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    gen_certs(dir.path(), &[]);
    let out = std::process::Command::new(BIN)
        .args(["gen-certs", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    let out = std::process::Command::new(BIN)
        .args(["gen-certs", "--force", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
}
