//! `review`: the same decision offline, from files or standard input.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;
use support::*;

fn review(args: &[&str], stdin: Option<&str>) -> (Option<i32>, String, String) {
    let mut child = Command::new(BIN)
        .arg("review")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn path(p: &str) -> String {
    fixture(p).to_string_lossy().into_owned()
}

#[test]
fn a_bare_pod_yaml_is_wrapped_as_a_create_and_patched() {
    let (code, out, err) = review(
        &[
            "--cluster",
            &path("states/nodeport.yaml"),
            "--input",
            &path("pods/coordinator-2.22.yaml"),
            "--patched",
        ],
        None,
    );
    assert_eq!(code, Some(0), "{err}");
    let pod: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        pod["metadata"]["annotations"]["memgraph-address-injector/bolt-address"],
        "203.0.113.10:31001"
    );
    // The 2.22 NodePort warning goes to stderr.
    assert!(err.contains("--coordinator-hostname"), "{err}");
}

#[test]
fn an_admission_review_from_stdin_with_a_denial_still_exits_zero() {
    let review_json = review_of(&yaml_fixture("pods/data-3x.yaml"), "memgraph", "abc").to_string();
    let (code, out, _) = review(
        &["--cluster", &path("states/loadbalancer-pending.yaml")],
        Some(&review_json),
    );
    assert_eq!(code, Some(0));
    let response: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(response["response"]["uid"], "abc");
    assert_eq!(response["response"]["allowed"], false);
}

#[test]
fn unreadable_input_exits_two_with_a_one_line_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "kind: Pod\nspec: [unclosed").unwrap();
    let bad = bad.to_string_lossy().into_owned();
    let (code, _, err) = review(
        &["--cluster", &path("states/nodeport.yaml"), "--input", &bad],
        None,
    );
    assert_eq!(code, Some(2));
    assert!(
        err.contains("bad.yaml") && err.lines().count() == 1,
        "{err}"
    );

    let (code, _, err) = review(
        &["--cluster", &bad, "--input", &path("pods/data-3x.yaml")],
        None,
    );
    assert_eq!(code, Some(2));
    assert!(err.contains("bad.yaml"), "{err}");

    let (code, _, err) = review(&["--cluster", "/does/not/exist.yaml"], Some("{}"));
    assert_eq!(code, Some(2));
    assert!(err.contains("/does/not/exist.yaml"), "{err}");
}

#[test]
fn a_reserved_env_name_is_refused_at_startup() {
    let (code, _, err) = review(
        &[
            "--cluster",
            &path("states/nodeport.yaml"),
            "--env-name",
            "MEMGRAPH_COORDINATOR_HOSTNAME",
        ],
        Some("{}"),
    );
    assert_eq!(code, Some(2));
    assert!(err.contains("Memgraph reads itself"), "{err}");
}
