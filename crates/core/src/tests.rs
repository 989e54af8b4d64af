//! The decision over fixture files shaped as the Memgraph HA chart renders them. Every patch
//! is applied to the original object with json-patch, the result checked, and the patched
//! pod reviewed again to prove the webhook idempotent.

use serde_json::{json, Value};

use super::pod::Version;
use super::view::{ClusterState, ServiceType};
use super::*;

fn fixture(path: &str) -> String {
    let full = format!("{}/../../tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

fn pod_value(path: &str) -> Value {
    serde_saphyr::from_str(&fixture(path)).unwrap()
}

fn state(path: &str) -> ClusterState {
    crate::state::state_from_text(&fixture(&format!("states/{path}")), path).unwrap()
}

struct Run {
    decision: Decision,
    patched: Value,
}

impl Run {
    fn env(&self, name: &str) -> Option<Value> {
        let env = self.patched.pointer("/spec/containers/0/env")?.as_array()?;
        let matching: Vec<_> = env.iter().filter(|e| e["name"] == name).collect();
        assert!(matching.len() <= 1, "duplicate env {name}: {env:?}");
        matching.first().map(|e| (*e).clone())
    }

    fn env_value(&self, name: &str) -> Option<String> {
        self.env(name)
            .and_then(|e| e.get("value").and_then(|v| v.as_str()).map(String::from))
    }

    fn annotation(&self, key: &str) -> Option<&str> {
        self.patched
            .pointer("/metadata/annotations")?
            .get(key)?
            .as_str()
    }

    fn args(&self) -> Vec<String> {
        serde_json::from_value(self.patched["spec"]["containers"][0]["args"].clone())
            .unwrap_or_default()
    }

    fn warned(&self, needle: &str) -> bool {
        self.decision
            .warnings
            .iter()
            .any(|w| w.detail.contains(needle))
    }
}

/// The patch writes nothing but the reconciler's label: no address, no flag.
fn only_the_label(patch: &[json_patch::PatchOperation]) -> bool {
    patch.iter().all(|op| {
        serde_json::to_value(op).unwrap()["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/metadata/labels"))
    })
}

/// Decides, applies the patch, and checks that the patched pod needs no further patch.
fn run_with(pod: Value, cluster: &ClusterState, config: &Config) -> Run {
    let text = pod.to_string();
    let typed: Pod<'_> = serde_json::from_str(&text).unwrap();
    let decision = decide_pod(&typed, "memgraph", cluster, config);
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &decision.patch)
        .unwrap_or_else(|e| panic!("patch {:?} does not apply: {e}", decision.patch));
    if !decision.patch.is_empty() {
        let again_text = patched.to_string();
        let again: Pod<'_> = serde_json::from_str(&again_text).unwrap();
        let second = decide_pod(&again, "memgraph", cluster, config);
        assert!(
            second.patch.is_empty(),
            "not idempotent: second patch {:?}",
            second.patch
        );
        // Only the label may have been patched on a pod that gets no address.
        let expected = match decision.outcome {
            Outcome::Injected | Outcome::Unchanged => Outcome::Unchanged,
            other => other,
        };
        assert_eq!(second.outcome, expected);
        assert_eq!(second.address, decision.address);
    }
    Run { decision, patched }
}

fn run(pod: &str, cluster: &str) -> Run {
    run_with(pod_value(pod), &state(cluster), &Config::default())
}

#[test]
fn nodeport_coordinator_3x_gets_env_and_annotations_and_no_flag() {
    let r = run("pods/coordinator-3x.yaml", "nodeport.yaml");
    assert_eq!(r.decision.outcome, Outcome::Injected);
    assert_eq!(r.decision.role, Some(Role::Coordinator));
    assert!(r.decision.denial.is_none());
    assert_eq!(
        r.env_value(DEFAULT_ENV_NAME).as_deref(),
        Some("203.0.113.10:31001")
    );
    assert_eq!(r.annotation(ADDRESS_ANNOTATION), Some("203.0.113.10:31001"));
    assert_eq!(
        r.annotation(SOURCE_ANNOTATION),
        Some("NodePort Service memgraph-coordinator-1-external (Node node-a ExternalIP)")
    );
    // Memgraph 3 has no flag for the Bolt address: the args are untouched.
    let original: Vec<String> = serde_json::from_value(
        pod_value("pods/coordinator-3x.yaml")["spec"]["containers"][0]["args"].clone(),
    )
    .unwrap();
    assert_eq!(r.args(), original);
    // The license entry with valueFrom is kept; ours is appended.
    assert!(r.env("MEMGRAPH_ENTERPRISE_LICENSE").unwrap()["valueFrom"].is_object());
    // No coordination variable was added (trap 2).
    for var in pod::COORDINATION_ENV_VARS {
        assert!(r.env(var).is_none(), "{var} added");
    }
    assert_eq!(
        r.decision
            .audit_annotations
            .get("bolt-address")
            .map(String::as_str),
        Some("203.0.113.10:31001")
    );
}

#[test]
fn nodeport_data_instance_gets_env_array_added_whole() {
    let r = run("pods/data-3x.yaml", "nodeport.yaml");
    assert_eq!(r.decision.role, Some(Role::Data));
    assert_eq!(
        r.patched["spec"]["containers"][0]["env"],
        json!([{ "name": DEFAULT_ENV_NAME, "value": "203.0.113.10:32000" }])
    );
    assert!(r
        .decision
        .patch
        .iter()
        .any(|op| op.to_string().contains("\"/spec/containers/0/env\"")));
}

#[test]
fn mage_image_with_named_target_port() {
    let r = run("pods/data-mage.yaml", "nodeport.yaml");
    assert_eq!(
        r.env_value(DEFAULT_ENV_NAME).as_deref(),
        Some("203.0.113.10:32001")
    );
}

#[test]
fn memgraph_2_22_coordinator_behind_nodeport_keeps_hostname_and_warns() {
    let r = run("pods/coordinator-2.22.yaml", "nodeport.yaml");
    assert_eq!(
        r.env_value(DEFAULT_ENV_NAME).as_deref(),
        Some("203.0.113.10:31001")
    );
    assert!(r.args().contains(
        &"--coordinator-hostname=memgraph-coordinator-1.default.svc.cluster.local".into()
    ));
    assert!(
        r.warned("external port 31001 differs from the Bolt port 7687"),
        "{:?}",
        r.decision.warnings
    );
    // Existing annotations are kept; ours are added by key.
    assert_eq!(
        r.annotation("kubectl.kubernetes.io/default-container"),
        Some("memgraph-coordinator")
    );
}

#[test]
fn memgraph_2_22_coordinator_behind_its_own_loadbalancer_gets_hostname_rewritten_in_place() {
    let original = pod_value("pods/coordinator-2.22.yaml");
    let r = run("pods/coordinator-2.22.yaml", "loadbalancer.json");
    let args = r.args();
    assert_eq!(args[6], "--coordinator-hostname=198.51.100.1");
    assert_eq!(
        args.len(),
        original["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .len()
    );
    assert_eq!(
        r.env_value(DEFAULT_ENV_NAME).as_deref(),
        Some("198.51.100.1:7687")
    );
    assert!(r.decision.warnings.is_empty(), "{:?}", r.decision.warnings);
}

#[test]
fn two_token_form_is_rewritten_in_place() {
    let r = run("pods/coordinator-2.22-two-token.yaml", "loadbalancer.json");
    let args = r.args();
    assert_eq!(args[8], "--coordinator-hostname");
    assert_eq!(args[9], "198.51.100.2");
    assert_eq!(args.len(), 10);
}

#[test]
fn env_configured_coordinator_gets_hostname_variable_replaced_and_prefers_ipv4() {
    let r = run("pods/coordinator-2.22-env.yaml", "loadbalancer.json");
    assert_eq!(
        r.env_value(DEFAULT_ENV_NAME).as_deref(),
        Some("198.51.100.3:7687")
    );
    assert_eq!(
        r.env_value("MEMGRAPH_COORDINATOR_HOSTNAME").as_deref(),
        Some("198.51.100.3")
    );
    // Replaced in place: still the 4th entry.
    assert_eq!(
        r.patched["spec"]["containers"][0]["env"][3]["name"],
        "MEMGRAPH_COORDINATOR_HOSTNAME"
    );
    assert_eq!(r.args(), vec!["--bolt-port=7687", "--also-log-to-stderr"]);
}

#[test]
fn own_external_service_beats_the_shared_coordinators_loadbalancer() {
    let r = run("pods/coordinator-3x.yaml", "loadbalancer.json");
    assert_eq!(r.annotation(ADDRESS_ANNOTATION), Some("198.51.100.1:7687"));
    assert!(r
        .annotation(SOURCE_ANNOTATION)
        .unwrap()
        .starts_with("LoadBalancer Service memgraph-coordinator-1-external"));
    assert!(r.decision.warnings.is_empty(), "{:?}", r.decision.warnings);
}

#[test]
fn shared_loadbalancer_never_becomes_a_2_22_raft_endpoint() {
    let mut cluster = state("loadbalancer.json");
    cluster.remove_service("memgraph", "memgraph-coordinator-1-external");
    let mut shared = cluster.service("memgraph", "coordinators").unwrap().clone();
    shared.ports = cluster
        .service("memgraph", "memgraph-coordinator-2-external")
        .unwrap()
        .ports
        .clone();
    cluster.upsert_service(shared);
    let r = run_with(
        pod_value("pods/coordinator-2.22.yaml"),
        &cluster,
        &Config::default(),
    );
    assert_eq!(
        r.annotation(ADDRESS_ANNOTATION),
        Some("198.51.100.100:7687")
    );
    assert!(r.args().iter().any(|a| a.ends_with("svc.cluster.local")));
    assert!(
        r.warned("is not this coordinator's own Service"),
        "{:?}",
        r.decision.warnings
    );
}

#[test]
fn loadbalancer_hostname_and_external_dns_annotation() {
    let r = run("pods/data-3x.yaml", "loadbalancer.json");
    assert_eq!(
        r.annotation(ADDRESS_ANNOTATION),
        Some("a1b2.elb.example.com:7687")
    );
    let r = run("pods/data-mage.yaml", "loadbalancer.json");
    assert_eq!(
        r.annotation(ADDRESS_ANNOTATION),
        Some("data-1.graph.example.com:7687")
    );
    assert!(r
        .annotation(SOURCE_ANNOTATION)
        .unwrap()
        .contains("external-dns"));
}

#[test]
fn pending_loadbalancer_denies_naming_the_service_or_allows_with_warning() {
    let r = run("pods/data-3x.yaml", "loadbalancer-pending.yaml");
    assert_eq!(r.decision.outcome, Outcome::Pending);
    let message = r.decision.denial.clone().unwrap();
    assert!(message.contains("memgraph-data-0-external"), "{message}");
    assert!(
        message.contains("no status.loadBalancer.ingress"),
        "{message}"
    );
    assert!(only_the_label(&r.decision.patch));

    let config = Config {
        on_pending: OnPending::Allow,
        ..Config::default()
    };
    let r = run_with(
        pod_value("pods/data-3x.yaml"),
        &state("loadbalancer-pending.yaml"),
        &config,
    );
    assert!(r.decision.denial.is_none());
    assert!(only_the_label(&r.decision.patch));
    assert!(r.warned("admitted without an external Bolt address"));
}

#[test]
fn external_host_annotation_needs_no_ingress() {
    let r = run("pods/data-mage.yaml", "loadbalancer-pending.yaml");
    assert_eq!(
        r.annotation(ADDRESS_ANNOTATION),
        Some("data-1.example.net:7687")
    );
}

#[test]
fn internal_ip_fallback_warns_and_prefers_ipv4() {
    let r = run("pods/data-3x.yaml", "nodeport-internal-only.yaml");
    assert_eq!(r.annotation(ADDRESS_ANNOTATION), Some("10.0.0.11:32000"));
    assert!(r.warned("InternalIP"));
}

#[test]
fn configured_address_order_and_ipv6_brackets() {
    let mut cluster = state("nodeport-internal-only.yaml");
    cluster.remove_node("node-b");
    let mut node = cluster.nodes().next().unwrap().clone();
    node.addresses.retain(|(_, a)| a.contains(':'));
    cluster.upsert_node(node);
    let config = Config {
        node_address_types: vec!["InternalIP".into()],
        ..Config::default()
    };
    let r = run_with(pod_value("pods/data-3x.yaml"), &cluster, &config);
    assert_eq!(r.annotation(ADDRESS_ANNOTATION), Some("[fd00::12]:32000"));
}

#[test]
fn no_usable_node_is_pending() {
    let mut cluster = state("nodeport.yaml");
    for name in ["node-a", "node-b"] {
        cluster.remove_node(name);
    }
    let r = run_with(pod_value("pods/data-3x.yaml"), &cluster, &Config::default());
    assert_eq!(r.decision.outcome, Outcome::Pending);
    let message = r.decision.denial.unwrap();
    assert!(message.contains("no Ready, schedulable Node"), "{message}");
}

#[test]
fn external_ips_use_the_service_port() {
    let mut cluster = state("nodeport.yaml");
    let mut svc = cluster
        .service("memgraph", "memgraph-data-0-external")
        .unwrap()
        .clone();
    svc.external_ips = vec!["192.0.2.7".into()];
    cluster.upsert_service(svc);
    let r = run_with(pod_value("pods/data-3x.yaml"), &cluster, &Config::default());
    assert_eq!(r.annotation(ADDRESS_ANNOTATION), Some("192.0.2.7:7687"));
}

#[test]
fn local_traffic_policy_warns() {
    let mut cluster = state("nodeport.yaml");
    let mut svc = cluster
        .service("memgraph", "memgraph-data-0-external")
        .unwrap()
        .clone();
    svc.external_traffic_policy_local = true;
    cluster.upsert_service(svc);
    let r = run_with(pod_value("pods/data-3x.yaml"), &cluster, &Config::default());
    assert!(r.warned("externalTrafficPolicy: Local"));
}

fn with_annotation(path: &str, key: &str, value: &str) -> Value {
    let mut pod = pod_value(path);
    pod["metadata"]["annotations"][key] = json!(value);
    pod
}

#[test]
fn named_service_missing_or_unqualified_denies_naming_it() {
    let cluster = state("nodeport.yaml");
    let pod = with_annotation("pods/data-3x.yaml", pod::SERVICE_ANNOTATION, "nope");
    let r = run_with(pod, &cluster, &Config::default());
    assert_eq!(r.decision.outcome, Outcome::NamedServiceMissing);
    assert!(r
        .decision
        .denial
        .unwrap()
        .contains("no Service nope exists in namespace memgraph"));

    let pod = with_annotation(
        "pods/data-3x.yaml",
        pod::SERVICE_ANNOTATION,
        "memgraph-data-0-internal",
    );
    let r = run_with(pod, &cluster, &Config::default());
    let message = r.decision.denial.unwrap();
    assert!(
        message.contains("memgraph-data-0-internal") && message.contains("ClusterIP"),
        "{message}"
    );

    let pod = with_annotation(
        "pods/data-3x.yaml",
        pod::SERVICE_ANNOTATION,
        "memgraph-data-1-external",
    );
    let r = run_with(pod, &cluster, &Config::default());
    assert!(r
        .decision
        .denial
        .unwrap()
        .contains("selector app=memgraph-data-1"));

    let pod = with_annotation(
        "pods/data-3x.yaml",
        pod::SERVICE_ANNOTATION,
        "memgraph-data-0-external",
    );
    let r = run_with(pod, &cluster, &Config::default());
    assert_eq!(r.annotation(ADDRESS_ANNOTATION), Some("203.0.113.10:32000"));
}

#[test]
fn headless_and_clusterip_services_never_match() {
    let mut cluster = state("nodeport.yaml");
    cluster.remove_service("memgraph", "memgraph-coordinator-1-external");
    let r = run_with(
        pod_value("pods/coordinator-3x.yaml"),
        &cluster,
        &Config::default(),
    );
    assert_eq!(r.decision.outcome, Outcome::NotExposed);
    assert!(only_the_label(&r.decision.patch) && r.decision.denial.is_none());
}

#[test]
fn a_tie_takes_the_first_by_name_and_names_every_candidate() {
    let mut cluster = state("nodeport.yaml");
    let mut twin = cluster
        .service("memgraph", "memgraph-data-0-external")
        .unwrap()
        .clone();
    twin.name = "another-data-0".into();
    twin.ports[0].node_port = Some(32500);
    cluster.upsert_service(twin);
    let mut pod = pod_value("pods/data-3x.yaml");
    pod["metadata"]["ownerReferences"] = json!([]);
    let r = run_with(pod, &cluster, &Config::default());
    assert_eq!(r.annotation(ADDRESS_ANNOTATION), Some("203.0.113.10:32500"));
    assert!(
        r.warned("another-data-0, memgraph-data-0-external"),
        "{:?}",
        r.decision.warnings
    );
}

#[test]
fn a_pod_name_selector_is_more_specific() {
    let mut cluster = state("nodeport.yaml");
    let mut own = cluster
        .service("memgraph", "memgraph-data-0-external")
        .unwrap()
        .clone();
    own.name = "zz-pod".into();
    own.selector = [(
        "statefulset.kubernetes.io/pod-name".to_string(),
        "memgraph-data-0-0".to_string(),
    )]
    .into();
    own.ports[0].node_port = Some(32600);
    cluster.upsert_service(own);
    let r = run_with(pod_value("pods/data-3x.yaml"), &cluster, &Config::default());
    assert_eq!(r.annotation(ADDRESS_ANNOTATION), Some("203.0.113.10:32600"));
}

#[test]
fn non_memgraph_and_opted_out_pods_are_untouched() {
    for path in ["pods/non-memgraph.yaml", "pods/opted-out.yaml"] {
        let r = run(path, "nodeport.yaml");
        assert_eq!(r.decision.outcome, Outcome::Ignored, "{path}");
        assert!(r.decision.patch.is_empty() && r.decision.denial.is_none());
    }
}

#[test]
fn existing_variable_with_value_from_is_replaced_in_place_and_duplicates_removed() {
    let mut pod = pod_value("pods/data-3x.yaml");
    pod["spec"]["containers"][0]["env"] = json!([
        {"name": DEFAULT_ENV_NAME, "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
        {"name": "KEEP", "value": "1"},
        {"name": DEFAULT_ENV_NAME, "value": "old"},
    ]);
    let r = run_with(pod, &state("nodeport.yaml"), &Config::default());
    assert_eq!(
        r.patched["spec"]["containers"][0]["env"],
        json!([{"name": DEFAULT_ENV_NAME, "value": "203.0.113.10:32000"}, {"name": "KEEP", "value": "1"}])
    );
}

#[test]
fn coordinator_flag_template_is_added_then_replaced_in_place() {
    let config = Config {
        coordinator_flag: Some(FlagTemplate::parse("--advertised-bolt={address}").unwrap()),
        ..Config::default()
    };
    let r = run_with(
        pod_value("pods/coordinator-3x.yaml"),
        &state("nodeport.yaml"),
        &config,
    );
    assert_eq!(
        r.args().last().unwrap(),
        "--advertised-bolt=203.0.113.10:31001"
    );
    let mut pod = pod_value("pods/coordinator-3x.yaml");
    pod["spec"]["containers"][0]["args"][0] = json!("--advertised-bolt=stale:1");
    let r = run_with(pod, &state("nodeport.yaml"), &config);
    assert_eq!(r.args()[0], "--advertised-bolt=203.0.113.10:31001");
    // Data instances never get it.
    let r = run_with(
        pod_value("pods/data-3x.yaml"),
        &state("nodeport.yaml"),
        &config,
    );
    assert!(!r.args().iter().any(|a| a.starts_with("--advertised-bolt")));
}

#[test]
fn bad_flag_templates_and_reserved_env_names_are_refused() {
    for bad in ["advertised={address}", "--x", "--a b={host}", "--={host}"] {
        assert!(FlagTemplate::parse(bad).is_err(), "{bad}");
    }
    for name in pod::MEMGRAPH_READS_ENV {
        let config = Config {
            env_name: name.to_string(),
            ..Config::default()
        };
        assert_eq!(
            config.validate(),
            Err(ConfigError::ReservedEnvName(name.to_string()))
        );
    }
    let config = Config {
        env_name: "1BAD".into(),
        ..Config::default()
    };
    assert!(config.validate().is_err());
    assert!(Config::default().validate().is_ok());
}

#[test]
fn version_annotation_overrides_the_tag_and_default_applies_to_latest() {
    // 3.x by annotation: the 2.22 hostname rule no longer applies.
    let pod = with_annotation(
        "pods/coordinator-2.22.yaml",
        pod::VERSION_ANNOTATION,
        "3.0.0",
    );
    let r = run_with(pod, &state("loadbalancer.json"), &Config::default());
    assert!(r.args().iter().any(|a| a.ends_with("svc.cluster.local")));
    let mut pod = pod_value("pods/coordinator-2.22.yaml");
    pod["spec"]["containers"][0]["image"] = json!("memgraph/memgraph:latest");
    let mut config = Config::default();
    config.recognition.default_version = Version::new(2, 22, 0);
    let r = run_with(pod, &state("loadbalancer.json"), &config);
    assert!(r
        .args()
        .contains(&"--coordinator-hostname=198.51.100.1".to_string()));
}

#[test]
fn annotation_keys_are_escaped_in_paths() {
    let r = run("pods/coordinator-2.22.yaml", "nodeport.yaml");
    let paths: Vec<String> = r.decision.patch.iter().map(|op| op.to_string()).collect();
    assert!(
        paths
            .iter()
            .any(|p| p.contains("/metadata/annotations/memgraph-address-injector~1bolt-address")),
        "{paths:?}"
    );
}

fn review(object: Value, operation: &str, sub_resource: Option<&str>) -> String {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "subResource": sub_resource,
            "operation": operation,
            "namespace": "memgraph",
            "dryRun": false,
            "object": object
        }
    })
    .to_string()
}

#[test]
fn review_round_trip_encodes_a_base64_patch_and_echoes_the_uid() {
    let body = review(pod_value("pods/data-3x.yaml"), "CREATE", None);
    let request = review::parse(body.as_bytes()).unwrap();
    let decision = decide(&request, &state("nodeport.yaml"), &Config::default());
    let out: Value = serde_json::from_slice(&review::encode(&request.uid, &decision)).unwrap();
    assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(out["kind"], "AdmissionReview");
    assert_eq!(
        out["response"]["uid"],
        "705ab4f5-6393-11e8-b7cc-42010a800002"
    );
    assert_eq!(out["response"]["allowed"], true);
    assert_eq!(out["response"]["patchType"], "JSONPatch");
    use base64::Engine;
    let ops = base64::engine::general_purpose::STANDARD
        .decode(out["response"]["patch"].as_str().unwrap())
        .unwrap();
    let ops: json_patch::Patch = serde_json::from_slice(&ops).unwrap();
    let mut pod = pod_value("pods/data-3x.yaml");
    json_patch::patch(&mut pod, &ops).unwrap();
    assert_eq!(
        pod["metadata"]["annotations"][ADDRESS_ANNOTATION],
        "203.0.113.10:32000"
    );
}

#[test]
fn other_operations_subresources_and_unreadable_pods_are_allowed_untouched() {
    let cluster = state("nodeport.yaml");
    for (op, sub) in [("UPDATE", None), ("CREATE", Some("ephemeralcontainers"))] {
        let body = review(pod_value("pods/data-3x.yaml"), op, sub);
        let decision = decide(
            &review::parse(body.as_bytes()).unwrap(),
            &cluster,
            &Config::default(),
        );
        assert_eq!(decision.outcome, Outcome::Ignored);
        assert!(decision.patch.is_empty());
    }
    let body = review(
        json!({"spec": {"containers": "not a list"}}),
        "CREATE",
        None,
    );
    let decision = decide(
        &review::parse(body.as_bytes()).unwrap(),
        &cluster,
        &Config::default(),
    );
    assert_eq!(decision.outcome, Outcome::Unreadable);
    assert!(decision.denial.is_none() && decision.patch.is_empty());
    assert!(decision.warnings[0]
        .detail
        .contains("could not read the Pod"));
}

#[test]
fn bad_envelopes_are_errors_naming_the_problem() {
    assert!(matches!(
        review::parse(b"not json"),
        Err(review::ReviewError::NotJson(_))
    ));
    let no_request = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#;
    assert!(matches!(
        review::parse(no_request),
        Err(review::ReviewError::NoRequest)
    ));
    let beta =
        br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{}}"#;
    let err = review::parse(beta).unwrap_err().to_string();
    assert!(err.contains("v1beta1"), "{err}");
}

#[test]
fn service_types_parse() {
    assert_eq!(ServiceType::parse(None), ServiceType::ClusterIp);
    assert_eq!(
        ServiceType::parse(Some("LoadBalancer")).as_str(),
        "LoadBalancer"
    );
}

#[test]
fn structs_given_as_arrays_are_unreadable_not_patched() {
    // Found by tests/fuzz.rs: serde accepts a struct as an array of its fields, which made a
    // patch path (/spec/containers/0/env) point into an array.
    for pod in [
        json!({"spec": {"containers": [["memgraph-data", "memgraph/memgraph:3.2.1"]]}}),
        json!({"spec": [[{"name": "memgraph-data", "image": "memgraph/memgraph:3.2.1"}]]}),
        json!({"metadata": [null, null, null, {"app": "memgraph-data-0"}], "spec": {"containers": [{"name": "memgraph-data"}]}}),
    ] {
        let body = review(pod, "CREATE", None);
        let decision = decide(
            &review::parse(body.as_bytes()).unwrap(),
            &state("nodeport.yaml"),
            &Config::default(),
        );
        assert_eq!(decision.outcome, Outcome::Unreadable);
        assert!(decision.patch.is_empty());
    }
}

#[test]
fn hostname_is_not_rewritten_when_a_coordination_port_is_not_on_the_command_line() {
    // Found in review: with --coordinator-port in a flag file, the Service could not be
    // checked for it.
    let mut pod = pod_value("pods/coordinator-2.22.yaml");
    let args = pod["spec"]["containers"][0]["args"].as_array_mut().unwrap();
    args.retain(|a| !a.as_str().unwrap().starts_with("--coordinator-port"));
    pod["spec"]["containers"][0]["env"] =
        json!([{"name": "MEMGRAPH_CONFIG", "value": "/etc/memgraph/extra.conf"}]);
    let r = run_with(pod, &state("loadbalancer.json"), &Config::default());
    assert!(
        r.args().iter().any(|a| a.ends_with("svc.cluster.local")),
        "{:?}",
        r.args()
    );
    assert!(
        r.warned("coordinator port is not on the command line"),
        "{:?}",
        r.decision.warnings
    );
}

#[test]
fn coordinator_flag_may_not_set_memgraphs_own_flags() {
    for flag in [
        "--bolt-port={port}",
        "--coordinator-hostname={host}",
        "--coordinator_id=1",
        "--bolt-address={host}",
    ] {
        assert!(
            matches!(FlagTemplate::parse(flag), Err(ConfigError::MemgraphFlag(_))),
            "{flag}"
        );
    }
}

#[test]
fn a_longer_statefulset_name_is_not_the_owner() {
    assert!(service::named_after(
        "memgraph-coordinator-1-external",
        "memgraph-coordinator-1"
    ));
    assert!(service::named_after(
        "memgraph-coordinator-1",
        "memgraph-coordinator-1"
    ));
    assert!(!service::named_after(
        "memgraph-coordinator-10-external",
        "memgraph-coordinator-1"
    ));
    assert!(!service::named_after(
        "memgraph-coordinator-1x",
        "memgraph-coordinator-1"
    ));
}

/// The Service the decision picked for `pod` in `cluster`, with `annotation` set to `value`.
fn annotate_chosen(cluster: &mut ClusterState, pod: &Value, annotation: &str, value: &str) {
    let r = run_with(pod.clone(), cluster, &Config::default());
    let source = r.annotation(SOURCE_ANNOTATION).expect("a chosen Service");
    let name = source.split_whitespace().nth(2).expect("Service name");
    let mut svc = cluster.service("memgraph", name).expect("Service").clone();
    match annotation {
        view::EXTERNAL_HOST_ANNOTATION => svc.external_host_annotation = Some(value.into()),
        view::EXTERNAL_DNS_ANNOTATION => svc.external_dns_annotation = Some(value.into()),
        other => panic!("unexpected annotation {other}"),
    }
    cluster.upsert_service(svc);
}

#[test]
fn bad_hosts_from_annotations_never_reach_a_pod() {
    let pod = pod_value("pods/coordinator-2.22.yaml");
    let long = format!("{}.example.com", "a".repeat(300));
    for annotation in [
        view::EXTERNAL_HOST_ANNOTATION,
        view::EXTERNAL_DNS_ANNOTATION,
    ] {
        for bad in [
            "db.example.com:7687",
            "db example.com",
            "-db.example.com",
            long.as_str(),
            "*.example.com,",
            "db.example.com\"",
        ] {
            let mut cluster = state("loadbalancer.json");
            annotate_chosen(&mut cluster, &pod, annotation, bad);
            let r = run_with(pod.clone(), &cluster, &Config::default());
            if annotation == view::EXTERNAL_DNS_ANNOTATION && bad == "*.example.com," {
                // Only wildcards: the Service's own address is used, with a warning.
                assert_eq!(r.decision.outcome, Outcome::Injected, "{bad:?}");
                assert!(
                    r.warned("only wildcard entries"),
                    "{:?}",
                    r.decision.warnings
                );
                continue;
            }
            assert_eq!(
                r.decision.outcome,
                Outcome::InvalidHost,
                "{annotation} {bad:?}"
            );
            assert!(
                only_the_label(&r.decision.patch),
                "{bad:?}: {:?}",
                r.decision.patch
            );
            let denial = r.decision.denial.clone().expect("denied");
            assert!(denial.contains(annotation), "{denial}");
            assert!(denial.contains("memgraph-coordinator-1"), "{denial}");
            assert!(denial.len() < 600, "a 300-character value is cut: {denial}");

            let allow = Config {
                on_pending: OnPending::Allow,
                ..Config::default()
            };
            let r = run_with(pod.clone(), &cluster, &allow);
            assert!(r.decision.denial.is_none());
            assert!(only_the_label(&r.decision.patch), "never a rewritten flag");
            assert!(r.warned(annotation), "{:?}", r.decision.warnings);
        }
    }
}

#[test]
fn external_dns_lists_skip_wildcards() {
    let pod = pod_value("pods/data-3x.yaml");
    let mut cluster = state("loadbalancer.json");
    annotate_chosen(
        &mut cluster,
        &pod,
        view::EXTERNAL_DNS_ANNOTATION,
        "*.graph.example.com, data-0.graph.example.com,other.example.com",
    );
    let r = run_with(pod, &cluster, &Config::default());
    assert_eq!(
        r.annotation(ADDRESS_ANNOTATION),
        Some("data-0.graph.example.com:7687")
    );
}

#[test]
fn node_addresses_that_are_not_hosts_are_skipped() {
    let mut cluster = state("nodeport.yaml");
    // node-a (Ready) gets a bad ExternalIP, node-b (Ready) a good one: node-b is used.
    let node = |cluster: &view::ClusterState, name: &str| {
        cluster.nodes().find(|n| n.name == name).unwrap().clone()
    };
    let mut a = node(&cluster, "node-a");
    assert!(a.ready);
    for (kind, address) in &mut a.addresses {
        if kind == "ExternalIP" {
            *address = "203.0.113.10 --evil".into();
        }
    }
    cluster.upsert_node(a);
    let mut b = node(&cluster, "node-b");
    assert!(b.ready);
    b.addresses
        .push(("ExternalIP".into(), "203.0.113.11".into()));
    cluster.upsert_node(b);
    let r = run_with(pod_value("pods/data-3x.yaml"), &cluster, &Config::default());
    assert_eq!(r.decision.outcome, Outcome::Injected);
    let address = r.annotation(ADDRESS_ANNOTATION).expect("an address");
    assert!(address.starts_with("203.0.113.11:"), "{address}");
}

#[test]
fn when_every_node_address_of_a_type_is_not_a_host_the_pod_is_refused_by_name() {
    let mut cluster = state("nodeport.yaml");
    let names: Vec<String> = cluster.nodes().map(|n| n.name.clone()).collect();
    for name in &names {
        let mut node = cluster.nodes().find(|n| &n.name == name).unwrap().clone();
        for (kind, address) in &mut node.addresses {
            if kind == "ExternalIP" {
                *address = format!("{address}:7687");
            }
        }
        cluster.upsert_node(node);
    }
    // Ready nodes with an InternalIP remain (node-a, node-b), so a fallback was possible.
    assert!(cluster
        .nodes()
        .any(|n| n.ready && n.addresses.iter().any(|(kind, _)| kind == "InternalIP")));
    let pod = pod_value("pods/data-3x.yaml");
    let r = run_with(pod.clone(), &cluster, &Config::default());
    // Not the InternalIP instead: that would turn an external address into an internal one.
    assert_eq!(r.decision.outcome, Outcome::InvalidHost);
    assert!(only_the_label(&r.decision.patch), "{:?}", r.decision.patch);
    let denial = r.decision.denial.expect("denied");
    assert!(
        denial.contains("ExternalIP")
            && denial.contains(":7687\" carries a port")
            && denial.contains("status.addresses"),
        "{denial}"
    );
    assert!(
        names.iter().any(|n| denial.contains(n.as_str())),
        "{denial}"
    );
    let allow = Config {
        on_pending: OnPending::Allow,
        ..Config::default()
    };
    let r = run_with(pod, &cluster, &allow);
    assert!(r.decision.denial.is_none() && only_the_label(&r.decision.patch));
    assert!(r.warned("ExternalIP"), "{:?}", r.decision.warnings);
}

#[test]
fn a_bad_ingress_hostname_is_refused() {
    let mut cluster = state("loadbalancer.json");
    let pod = pod_value("pods/data-3x.yaml");
    let r = run_with(pod.clone(), &cluster, &Config::default());
    let name = r
        .annotation(SOURCE_ANNOTATION)
        .unwrap()
        .split_whitespace()
        .nth(2)
        .unwrap()
        .to_string();
    let mut svc = cluster.service("memgraph", &name).unwrap().clone();
    svc.ingress = vec![view::LoadBalancerIngress {
        ip: None,
        hostname: Some("elb.example.com:443".into()),
    }];
    cluster.upsert_service(svc);
    let r = run_with(pod, &cluster, &Config::default());
    assert_eq!(r.decision.outcome, Outcome::InvalidHost);
    assert!(r
        .decision
        .denial
        .unwrap()
        .contains("status.loadBalancer.ingress hostname"));
}

#[test]
fn warnings_are_short_and_their_detail_is_audited() {
    let mut pod = pod_value("pods/coordinator-2.22.yaml");
    // A very long Service name in every warning.
    let mut cluster = state("nodeport.yaml");
    let long_name = format!("memgraph-coordinator-1-{}", "x".repeat(40));
    let chosen: Vec<_> = cluster.services_in("memgraph").cloned().collect();
    for mut svc in chosen {
        svc.name = format!("{}-{}", svc.name, "x".repeat(40));
        cluster.upsert_service(svc);
    }
    pod["metadata"]["name"] = json!(long_name);
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u", "operation": "CREATE", "namespace": "memgraph",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "object": pod,
        }
    })
    .to_string();
    let request = review::parse(review.as_bytes()).unwrap();
    let decision = decide(&request, &cluster, &Config::default());
    assert!(!decision.warnings.is_empty());
    for w in &decision.warnings {
        assert!(
            w.summary.chars().count() <= MAX_WARNING_LEN,
            "{}",
            w.summary
        );
        assert!(w.detail.len() >= w.summary.len() - WARNING_PREFIX.len());
    }
    assert_eq!(
        decision.audit_annotations.get("warning-1"),
        Some(&decision.warnings[0].detail)
    );
    let encoded: Value = serde_json::from_slice(&review::encode("u", &decision)).unwrap();
    for w in encoded["response"]["warnings"].as_array().unwrap() {
        assert!(w.as_str().unwrap().chars().count() <= MAX_WARNING_LEN);
    }
    let pod_ref = decision.pod.unwrap();
    assert_eq!(pod_ref.to_string(), format!("memgraph/{long_name}"));
}

#[test]
fn pods_without_a_name_are_named_by_generate_name_and_owner() {
    let mut pod = pod_value("pods/data-3x.yaml");
    pod["metadata"].as_object_mut().unwrap().remove("name");
    pod["metadata"]["generateName"] = json!("memgraph-data-0-");
    let text = pod.to_string();
    let typed: Pod<'_> = serde_json::from_str(&text).unwrap();
    let pod_ref = PodRef::of(&typed, "memgraph");
    let shown = pod_ref.to_string();
    assert!(shown.starts_with("memgraph/memgraph-data-0-*"), "{shown}");
    assert!(shown.contains("StatefulSet"), "{shown}");
}

#[test]
fn bolt_port_from_value_from_or_env_from_is_a_warning() {
    let mut pod = pod_value("pods/data-3x.yaml");
    pod["spec"]["containers"][0]["env"] = json!([
        {"name": "MEMGRAPH_BOLT_PORT", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}
    ]);
    let r = run_with(pod.clone(), &state("nodeport.yaml"), &Config::default());
    assert!(
        r.warned("MEMGRAPH_BOLT_PORT with valueFrom"),
        "{:?}",
        r.decision.warnings
    );
    assert!(r.annotation(ADDRESS_ANNOTATION).is_some());

    let mut pod = pod_value("pods/data-3x.yaml");
    pod["spec"]["containers"][0]["envFrom"] = json!([{"configMapRef": {"name": "c"}}]);
    let r = run_with(pod, &state("nodeport.yaml"), &Config::default());
    assert!(r.warned("envFrom"), "{:?}", r.decision.warnings);
}

fn nodeport_service_for(pod: &Value, cluster: &ClusterState) -> ServiceView {
    let r = run_with(pod.clone(), cluster, &Config::default());
    let source = r.annotation(SOURCE_ANNOTATION).expect("a chosen Service");
    let name = source.split_whitespace().nth(2).unwrap();
    cluster.service("memgraph", name).unwrap().clone()
}

#[test]
fn a_node_in_use_stays_while_usable_and_moves_only_when_not() {
    let mut cluster = state("nodeport.yaml");
    cluster.upsert_node(view::NodeView {
        name: "node-c".into(),
        ready: true,
        unschedulable: false,
        addresses: vec![("ExternalIP".into(), "203.0.113.20".into())],
        labels: Default::default(),
    });
    let pod = pod_value("pods/data-3x.yaml");
    let svc = nodeport_service_for(&pod, &cluster);
    let types: Vec<String> = vec!["ExternalIP".into(), "InternalIP".into()];
    let selector = nodes::NodeSelector::default();
    let host = |cluster: &ClusterState, keep: Option<&str>| {
        let mut rules = nodes::NodeRules::new(&types, &selector);
        rules.keep_host = keep;
        match address::resolve(cluster, &svc, &svc.ports[0], &rules) {
            Resolution::Resolved(ext) => ext.host,
            other => panic!("{other:?}"),
        }
    };
    // Nothing in use: the first usable node by name with an ExternalIP.
    assert_eq!(host(&cluster, None), "203.0.113.10");
    // node-c's address in use stays while node-c is usable ...
    assert_eq!(host(&cluster, Some("203.0.113.20")), "203.0.113.20");
    // ... and an InternalIP in use stays too (the type is still allowed) ...
    assert_eq!(host(&cluster, Some("10.0.0.11")), "10.0.0.11");
    // ... until its node gains an ExternalIP (a cloud provider adds it after the kubelet
    // registered the node): the same node, by its preferred address.
    let mut gained = cluster.clone();
    let mut node_b = gained.nodes().find(|n| n.name == "node-b").unwrap().clone();
    node_b
        .addresses
        .push(("ExternalIP".into(), "203.0.113.11".into()));
    gained.upsert_node(node_b);
    assert_eq!(host(&gained, Some("10.0.0.11")), "203.0.113.11");
    assert_eq!(host(&gained, Some("203.0.113.11")), "203.0.113.11");
    // node-c cordoned: the address moves.
    let mut cordoned = cluster.clone();
    let mut node = cordoned
        .nodes()
        .find(|n| n.name == "node-c")
        .unwrap()
        .clone();
    node.unschedulable = true;
    cordoned.upsert_node(node);
    assert_eq!(host(&cordoned, Some("203.0.113.20")), "203.0.113.10");
    // A NotReady node's address, or one no node has, is not kept.
    assert_eq!(host(&cluster, Some("203.0.113.99")), "203.0.113.10");
    assert_eq!(host(&cluster, Some("192.0.2.1")), "203.0.113.10");
}

#[test]
fn node_selector_limits_the_nodes_for_webhook_decisions() {
    let mut cluster = state("nodeport.yaml");
    let names: Vec<String> = cluster.nodes().map(|n| n.name.clone()).collect();
    let last = names.last().unwrap().clone();
    let mut edge = cluster.nodes().find(|n| n.name == last).unwrap().clone();
    edge.labels.insert("edge".into(), "true".into());
    let edge_addresses: Vec<String> = edge.addresses.iter().map(|(_, a)| a.clone()).collect();
    cluster.upsert_node(edge);
    let config = Config {
        node_selector: "edge=true".parse().unwrap(),
        ..Config::default()
    };
    let r = run_with(pod_value("pods/data-3x.yaml"), &cluster, &config);
    let address = r.decision.address.clone().unwrap();
    assert!(
        edge_addresses
            .iter()
            .any(|a| address.starts_with(a.as_str())),
        "{address} is not on the edge node {edge_addresses:?}"
    );
    let none = Config {
        node_selector: "edge=nowhere".parse().unwrap(),
        ..Config::default()
    };
    let r = run_with(pod_value("pods/data-3x.yaml"), &cluster, &none);
    assert_eq!(r.decision.outcome, Outcome::Pending);
    assert!(r.decision.denial.unwrap().contains("--node-selector"));
}

#[test]
fn external_traffic_policy_local_uses_the_pods_node_once_scheduled() {
    let cluster = state("nodeport.yaml");
    let pod = pod_value("pods/data-3x.yaml");
    let mut svc = nodeport_service_for(&pod, &cluster);
    svc.external_traffic_policy_local = true;
    let types: Vec<String> = vec!["ExternalIP".into(), "InternalIP".into()];
    let selector = nodes::NodeSelector::default();
    let last = cluster.nodes().last().unwrap().clone();
    let mut rules = nodes::NodeRules::new(&types, &selector);
    rules.pod_node = Some(&last.name);
    match address::resolve(&cluster, &svc, &svc.ports[0], &rules) {
        Resolution::Resolved(ext) => {
            assert!(
                last.addresses.iter().any(|(_, a)| *a == ext.host),
                "{ext:?}"
            );
            assert!(ext.warnings.iter().all(|w| !w.detail.contains("Local")));
        }
        other => panic!("{other:?}"),
    }
    rules.pod_node = Some("gone-node");
    assert!(matches!(
        address::resolve(&cluster, &svc, &svc.ports[0], &rules),
        Resolution::Pending(why) if why.contains("gone-node")
    ));
}

#[test]
fn every_ha_pod_gets_the_reconciler_label_once() {
    let r = run("pods/coordinator-3x.yaml", "nodeport.yaml");
    assert_eq!(
        r.patched["metadata"]["labels"][pod::MANAGED_LABEL],
        serde_json::json!("true")
    );
    // Not exposed: no address, but still labelled, so the reconciler follows it.
    let r = run_with(
        pod_value("pods/coordinator-3x.yaml"),
        &ClusterState::default(),
        &Config::default(),
    );
    assert_eq!(r.decision.outcome, Outcome::NotExposed);
    assert!(only_the_label(&r.decision.patch) && !r.decision.patch.is_empty());
}

/// The chart 0.1.6 shape: a per-coordinator LoadBalancer exposing only 7687. The API server
/// keeps the start of a warning, so the failed condition (the Service and the port it
/// lacks) must be in its first 100 characters.
#[test]
fn the_2_22_hostname_warning_names_the_service_and_the_missing_port_first() {
    let mut cluster = state("loadbalancer.json");
    let mut own = cluster
        .service("memgraph", "memgraph-coordinator-1-external")
        .unwrap()
        .clone();
    own.ports.retain(|p| p.port == 7687);
    cluster.upsert_service(own);
    let r = run_with(
        pod_value("pods/coordinator-2.22.yaml"),
        &cluster,
        &Config::default(),
    );
    let warning = r
        .decision
        .warnings
        .iter()
        .find(|w| w.summary.contains("--coordinator-hostname"))
        .unwrap_or_else(|| panic!("{:?}", r.decision.warnings));
    let head: String = warning.summary.chars().take(100).collect();
    assert!(
        head.contains("Service memgraph-coordinator-1-external") && head.contains("port 12000"),
        "{head}"
    );
}

fn state_text(yaml: &str) -> ClusterState {
    crate::state::state_from_text(yaml, "test").unwrap()
}

#[test]
fn gateway_api_gives_the_gateway_address_and_the_listener_port() {
    let r = run("pods/data-3x.yaml", "gateway.yaml");
    assert_eq!(r.decision.outcome, Outcome::Injected);
    // IPv4 first among the IPAddress entries, which come before a Hostname.
    assert_eq!(
        r.env_value(DEFAULT_ENV_NAME).as_deref(),
        Some("203.0.113.80:9000")
    );
    assert_eq!(
        r.annotation(SOURCE_ANNOTATION),
        Some("Gateway memgraph/memgraph-gateway listener data-0-bolt (TCPRoute memgraph-data-0-bolt to Service memgraph-data-0) (status.addresses IPAddress)")
    );
    let c = run("pods/coordinator-3x.yaml", "gateway.yaml");
    assert_eq!(
        c.env_value(DEFAULT_ENV_NAME).as_deref(),
        Some("203.0.113.80:10001")
    );
}

#[test]
fn a_pending_gateway_a_missing_listener_and_a_hostname_only_gateway() {
    let yaml = fixture("states/gateway.yaml");
    // Not programmed yet: pending, naming the Gateway.
    let unprogrammed =
        yaml.split("status:").next().unwrap().to_string() + &yaml[yaml.find("---").unwrap()..];
    let r = run_with(
        pod_value("pods/data-3x.yaml"),
        &state_text(&unprogrammed),
        &Config::default(),
    );
    assert_eq!(r.decision.outcome, Outcome::Pending);
    let denial = r.decision.denial.clone().unwrap();
    assert!(
        denial.contains(
            "Gateway memgraph/memgraph-gateway has no IPAddress or Hostname in status.addresses"
        ),
        "{denial}"
    );
    // The route names a listener the Gateway lacks.
    let wrong = yaml.replace("sectionName: data-0-bolt", "sectionName: data-9-bolt");
    let r = run_with(
        pod_value("pods/data-3x.yaml"),
        &state_text(&wrong),
        &Config::default(),
    );
    assert_eq!(r.decision.outcome, Outcome::Pending);
    assert!(
        r.decision
            .denial
            .clone()
            .unwrap()
            .contains("has no such TCP listener"),
        "{:?}",
        r.decision.denial
    );
    // Only a Hostname, and a Hostname that is not a host.
    let hostname = yaml
        .replace("    - {type: IPAddress, value: \"2001:db8::5\"}\n", "")
        .replace("    - {type: IPAddress, value: 203.0.113.80}\n", "");
    let r = run_with(
        pod_value("pods/data-3x.yaml"),
        &state_text(&hostname),
        &Config::default(),
    );
    assert_eq!(
        r.env_value(DEFAULT_ENV_NAME).as_deref(),
        Some("gw.example.com:9000")
    );
    let bad = hostname.replace("gw.example.com", "gw.example.com:443");
    let r = run_with(
        pod_value("pods/data-3x.yaml"),
        &state_text(&bad),
        &Config::default(),
    );
    assert_eq!(r.decision.outcome, Outcome::InvalidHost);
    assert!(r.env_value(DEFAULT_ENV_NAME).is_none());
}

#[test]
fn external_dns_on_the_route_wins_over_the_gateway_and_its_addresses() {
    let yaml = fixture("states/gateway.yaml");
    let on_gateway = yaml.replace(
        "metadata: {name: memgraph-gateway, namespace: memgraph}",
        "metadata: {name: memgraph-gateway, namespace: memgraph, annotations: {external-dns.alpha.kubernetes.io/hostname: \"*.example.com,bolt.example.com\"}}",
    );
    let r = run_with(
        pod_value("pods/data-3x.yaml"),
        &state_text(&on_gateway),
        &Config::default(),
    );
    assert_eq!(
        r.env_value(DEFAULT_ENV_NAME).as_deref(),
        Some("bolt.example.com:9000")
    );
    let on_route = on_gateway.replace(
        "metadata: {name: memgraph-data-0-bolt, namespace: memgraph, labels: {app: memgraph-data-0}}",
        "metadata: {name: memgraph-data-0-bolt, namespace: memgraph, labels: {app: memgraph-data-0}, annotations: {external-dns.alpha.kubernetes.io/hostname: data-0.example.com}}",
    );
    let r = run_with(
        pod_value("pods/data-3x.yaml"),
        &state_text(&on_route),
        &Config::default(),
    );
    assert_eq!(
        r.env_value(DEFAULT_ENV_NAME).as_deref(),
        Some("data-0.example.com:9000")
    );
    assert!(r
        .annotation(SOURCE_ANNOTATION)
        .unwrap()
        .ends_with("(annotation external-dns.alpha.kubernetes.io/hostname)"));
}

#[test]
fn a_nodeport_service_beats_the_gateway_and_a_route_elsewhere_is_not_read() {
    let mut yaml = fixture("states/gateway.yaml");
    yaml.push_str("\n---\n");
    yaml.push_str(&fixture("states/nodeport.yaml"));
    let both = state_text(&yaml);
    let r = run_with(
        pod_value("pods/coordinator-3x.yaml"),
        &both,
        &Config::default(),
    );
    assert!(
        r.annotation(SOURCE_ANNOTATION)
            .unwrap()
            .starts_with("NodePort Service"),
        "{:?}",
        r.annotation(SOURCE_ANNOTATION)
    );
    // A TCPRoute in another namespace needs a ReferenceGrant, which is not read.
    let elsewhere = fixture("states/gateway.yaml").replace(
        "metadata: {name: memgraph-data-0-bolt, namespace: memgraph,",
        "metadata: {name: memgraph-data-0-bolt, namespace: tenant,",
    );
    let r = run_with(
        pod_value("pods/data-3x.yaml"),
        &state_text(&elsewhere),
        &Config::default(),
    );
    assert_eq!(r.decision.outcome, Outcome::NotExposed);
}

#[test]
fn ingress_nginx_gives_the_controller_address_and_the_entry_port() {
    let r = run("pods/data-3x.yaml", "ingress-nginx.yaml");
    assert_eq!(r.decision.outcome, Outcome::Injected);
    assert_eq!(
        r.env_value(DEFAULT_ENV_NAME).as_deref(),
        Some("198.51.100.7:9000")
    );
    assert_eq!(
        r.annotation(SOURCE_ANNOTATION),
        Some("ingress-nginx ingress-nginx/tcp-services port 9000 (LoadBalancer ingress-nginx/ingress-nginx-controller to Service memgraph-data-0) (status.loadBalancer.ingress ip)")
    );
    let c = run("pods/coordinator-3x.yaml", "ingress-nginx.yaml");
    assert_eq!(
        c.env_value(DEFAULT_ENV_NAME).as_deref(),
        Some("198.51.100.7:10001")
    );
    // Turned off, or pointed at another ConfigMap: not exposed.
    let off = Config {
        ingress_nginx: None,
        ..Config::default()
    };
    let r = run_with(
        pod_value("pods/data-3x.yaml"),
        &state("ingress-nginx.yaml"),
        &off,
    );
    assert_eq!(r.decision.outcome, Outcome::NotExposed);
}

#[test]
fn ingress_nginx_without_its_controller_ip_is_pending_and_a_bad_entry_is_skipped() {
    let yaml = fixture("states/ingress-nginx.yaml");
    let pending = yaml.replace("    ingress: [{ip: 198.51.100.7}]\n", "    ingress: []\n");
    let r = run_with(
        pod_value("pods/data-3x.yaml"),
        &state_text(&pending),
        &Config::default(),
    );
    assert_eq!(r.decision.outcome, Outcome::Pending);
    assert!(r.decision.denial.clone().unwrap().contains(
        "LoadBalancer Service ingress-nginx-controller has no status.loadBalancer.ingress"
    ));
    // The entry's port is not on the controller's Service.
    let unexposed = yaml.replace("\"9000\": memgraph", "\"9100\": memgraph");
    let r = run_with(
        pod_value("pods/data-3x.yaml"),
        &state_text(&unexposed),
        &Config::default(),
    );
    assert_eq!(r.decision.outcome, Outcome::Pending);
    assert!(r.decision.denial.clone().unwrap().contains("TCP port 9100"));
    // A malformed entry is not a route to anything.
    let malformed = yaml.replace("memgraph/memgraph-data-0:7687", "memgraph-data-0");
    let r = run_with(
        pod_value("pods/data-3x.yaml"),
        &state_text(&malformed),
        &Config::default(),
    );
    assert_eq!(r.decision.outcome, Outcome::NotExposed);
}
