//! Objects shaped as the Memgraph HA Helm chart renders them (shared/memgraph-ha.md), and
//! the cluster furniture around them (namespaces, Nodes), created through the API.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::{json, Value};

use super::Webhook;

pub const ADDRESS: &str = "memgraph-address-injector/bolt-address";

pub fn from<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("object")
}

pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    api.create(
        &PostParams::default(),
        &from(json!({"metadata": {"name": name}})),
    )
    .await
    .expect("namespace");
    // The serviceaccount controller must create `default` before pods can be admitted.
    let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), name);
    wait_for(
        Duration::from_secs(30),
        "the default ServiceAccount",
        || async { sa.get_opt("default").await.ok().flatten() },
    )
    .await;
}

/// A Node with addresses and a Ready condition, set through the status subresource as a
/// kubelet would.
pub async fn node(client: &Client, name: &str, addresses: &[(&str, &str)]) {
    let api: Api<Node> = Api::all(client.clone());
    api.create(
        &PostParams::default(),
        &from(json!({"metadata": {"name": name}})),
    )
    .await
    .expect("node");
    let addresses: Vec<Value> = addresses
        .iter()
        .map(|(t, a)| json!({"type": t, "address": a}))
        .collect();
    let status = json!({"status": {
        "addresses": addresses,
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "e2e", "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}]
    }});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("node status");
}

/// The labels chart 1.3.x puts on its objects besides `app` and `role`.
fn chart_labels(name: &str) -> Value {
    json!({
        "app": name,
        "app.kubernetes.io/name": "memgraph-high-availability",
        "app.kubernetes.io/instance": "memgraph-ha",
        "app.kubernetes.io/managed-by": "Helm",
        "helm.sh/chart": "memgraph-high-availability-1.3.3",
    })
}

/// A StatefulSet as the Memgraph HA chart (1.3.x) renders one: one per instance, replicas
/// 1, a privileged `init-sysctl` init container, a log-shipping sidecar, and the
/// `memgraph-secrets` environment (user, password, license).
pub fn chart_statefulset(name: &str, role: &str, image: &str, args: &[String]) -> StatefulSet {
    let container = if role == "coordinator" {
        "memgraph-coordinator"
    } else {
        "memgraph-data"
    };
    let secret = |key: &str| json!({"secretKeyRef": {"name": "memgraph-secrets", "key": key, "optional": true}});
    let mut pod_labels = chart_labels(name);
    pod_labels["role"] = json!(role);
    from(json!({
        "metadata": {"name": name, "labels": chart_labels(name)},
        "spec": {
            "replicas": 1,
            "serviceName": name,
            "podManagementPolicy": "OrderedReady",
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "initContainers": [{
                        "name": "init-sysctl",
                        "image": "busybox:1.36",
                        "command": ["sysctl", "-w", "vm.max_map_count=262144"],
                        "securityContext": {"privileged": true, "runAsUser": 0},
                    }],
                    "containers": [{
                        "name": container,
                        "image": image,
                        "args": args,
                        "env": [
                            {"name": "MEMGRAPH_USER", "valueFrom": secret("USER")},
                            {"name": "MEMGRAPH_PASSWORD", "valueFrom": secret("PASSWORD")},
                            {"name": "MEMGRAPH_ENTERPRISE_LICENSE", "valueFrom": secret("LICENSE")},
                            {"name": "MEMGRAPH_ORGANIZATION_NAME", "valueFrom": secret("ORGANIZATION")},
                        ],
                        "ports": [{"containerPort": 7687}, {"containerPort": 10000}, {"containerPort": 12000}],
                    }, {
                        "name": "vector",
                        "image": "timberio/vector:0.41.1-debian",
                        "args": ["--config", "/etc/vector/vector.yaml"],
                    }]
                }
            }
        }
    }))
}

/// The chart's post-install `cluster-setup` Job: the Memgraph image running mgconsole from a
/// shell, no Memgraph flags. It must never wait for the webhook.
pub fn chart_setup_job(image: &str, ns: &str) -> Value {
    json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "cluster-setup", "labels": chart_labels("cluster-setup"),
                     "annotations": {"helm.sh/hook": "post-install"}},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "cluster-setup",
                "image": image,
                "command": ["/bin/bash", "-c"],
                "args": [format!("echo 'SHOW INSTANCES;' | mgconsole --host memgraph-coordinator-1.{ns}.svc.cluster.local --port 7687 # --management-port=10000")],
            }]
        }}}
    })
}

/// The chart's helm test pod: also the Memgraph image, also mgconsole.
pub fn chart_test_pod(image: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "memgraph-ha-memgraph-test-connection",
                     "labels": {"app": "memgraph-ha-test-connection"},
                     "annotations": {"helm.sh/hook": "test"}},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "memgraph-test",
            "image": image,
            "command": ["/bin/bash", "-c"],
            "args": ["echo 'RETURN 0;' | mgconsole --host memgraph-data-0 --port 7687"],
        }]}
    })
}

pub fn coordinator_args(id: u32, ns: &str) -> Vec<String> {
    vec![
        "--bolt-port=7687".into(),
        "--management-port=10000".into(),
        "--coordinator-port=12000".into(),
        format!("--coordinator-id={id}"),
        format!("--coordinator-hostname=memgraph-coordinator-{id}.{ns}.svc.cluster.local"),
        "--data-directory=/var/lib/memgraph/mg_data".into(),
        "--log-level=TRACE".into(),
        "--also-log-to-stderr".into(),
        "--log-file=/var/log/memgraph/memgraph.log".into(),
    ]
}

pub fn chart_222_coordinator_args(id: u32, ns: &str) -> Vec<String> {
    vec![
        format!("--coordinator-id={id}"),
        "--coordinator-port=12000".into(),
        "--management-port=10000".into(),
        "--bolt-port=7687".into(),
        "--also-log-to-stderr".into(),
        "--log-level=TRACE".into(),
        format!("--coordinator-hostname=memgraph-coordinator-{id}.{ns}.svc.cluster.local"),
        "--log-file=/var/log/memgraph/memgraph.log".into(),
        "--nuraft-log-file=/var/log/memgraph/memgraph.log".into(),
    ]
}

pub fn data_args() -> Vec<String> {
    [
        "--management-port=10000",
        "--bolt-port=7687",
        "--also-log-to-stderr",
        "--log-level=TRACE",
    ]
    .map(String::from)
    .to_vec()
}

/// The chart's `<instance>-external` Service.
pub fn external_service(instance: &str, type_: &str, ports: &[u16]) -> Service {
    let ports: Vec<Value> = ports
        .iter()
        .map(|p| {
            let name = match p {
                7687 => "tcp-bolt-port".to_string(),
                10000 => "tcp-management-port".to_string(),
                12000 => "tcp-coordinator-port".to_string(),
                other => format!("tcp-{other}"),
            };
            json!({"name": name, "port": p, "targetPort": p, "protocol": "TCP"})
        })
        .collect();
    from(json!({
        "metadata": {"name": format!("{instance}-external")},
        "spec": {"type": type_, "selector": {"app": instance}, "ports": ports}
    }))
}

pub async fn wait_pod(client: &Client, ns: &str, name: &str) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    wait_for(
        Duration::from_secs(60),
        &format!("pod {ns}/{name}"),
        || async { pods.get_opt(name).await.ok().flatten() },
    )
    .await
}

/// Creates a pod directly through the API and returns the response's Warning headers.
pub async fn create_pod_raw(
    client: &Client,
    ns: &str,
    pod: &Value,
    dry_run: bool,
) -> (u16, Vec<String>, Value) {
    let mut uri = format!("/api/v1/namespaces/{ns}/pods");
    if dry_run {
        uri.push_str("?dryRun=All");
    }
    let request = http::Request::post(uri)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(pod).unwrap())
        .unwrap();
    let response = client
        .send(request.map(kube::client::Body::from))
        .await
        .expect("pod create");
    let status = response.status().as_u16();
    let warnings = response
        .headers()
        .get_all("warning")
        .iter()
        .map(|v| v.to_str().unwrap_or_default().to_string())
        .collect();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    (
        status,
        warnings,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

pub fn memgraph_pod(name: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "memgraph-data-0", "role": "data"}, "annotations": annotations},
        "spec": {"containers": [{"name": "memgraph-data", "image": "memgraph/memgraph:3.2.1", "args": data_args()}]}
    })
}

/// Registers manifests/base's MutatingWebhookConfiguration with only clientConfig changed,
/// then waits until a dryRun probe pod comes back mutated.
pub async fn register_webhook(client: &Client, webhook: &Webhook) {
    use base64::Engine;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("manifests/base/mutatingwebhookconfiguration.yaml");
    let mut config: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let ca = base64::engine::general_purpose::STANDARD.encode(webhook.ca_pem());
    config["webhooks"][0]["clientConfig"] = json!({"url": webhook.url("/mutate"), "caBundle": ca});
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    api.create(&PostParams::default(), &from(config))
        .await
        .expect("webhook configuration");

    namespace(client, "e2e-probe").await;
    let services: Api<Service> = Api::namespaced(client.clone(), "e2e-probe");
    let mut probe_svc = external_service("memgraph-data-0", "LoadBalancer", &[7687]);
    probe_svc.metadata.annotations = Some(BTreeMap::from([(
        "memgraph-address-injector/external-host".to_string(),
        "probe.example".to_string(),
    )]));
    services
        .create(&PostParams::default(), &probe_svc)
        .await
        .unwrap();
    wait_for(
        Duration::from_secs(60),
        "a mutated dryRun probe pod",
        || async {
            let (status, _, pod) =
                create_pod_raw(client, "e2e-probe", &memgraph_pod("probe", json!({})), true).await;
            (status == 201
                && pod
                    .pointer("/metadata/annotations")
                    .and_then(|a| a.get(ADDRESS))
                    .is_some())
            .then_some(())
        },
    )
    .await;
}

/// The HA chart's instances (coordinators 1-3, data 0-1), each a StatefulSet with its
/// `-external` Service of `service_type`, created in `ns`. Returns (instance, args).
pub async fn create_chart_cluster(
    client: &Client,
    ns: &str,
    image: &str,
    service_type: &str,
) -> Vec<(String, Vec<String>)> {
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let coordinators = (1..=3).map(|id| {
        (
            format!("memgraph-coordinator-{id}"),
            "coordinator",
            coordinator_args(id, ns),
        )
    });
    let data = (0..=1).map(|id| (format!("memgraph-data-{id}"), "data", data_args()));
    let mut created = Vec::new();
    for (name, role, args) in coordinators.chain(data) {
        services
            .create(
                &PostParams::default(),
                &external_service(&name, service_type, &[7687]),
            )
            .await
            .expect("external Service");
        sets.create(
            &PostParams::default(),
            &chart_statefulset(&name, role, image, &args),
        )
        .await
        .expect("StatefulSet");
        created.push((name, args));
    }
    created
}
