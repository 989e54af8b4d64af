//! The install, run for real: a control plane and a real node (containerd, kubelet,
//! kube-proxy) on this machine (tests/support/node.rs). Tests share the machine's fixed
//! kubelet paths, so they run one at a time (a lock in the support code).

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;

use support::chart::{from, wait_for};
use support::control_plane::ControlPlane;
use support::node::{control_plane_options, Node, NODE_IP, NODE_NAME, PAUSE_IMAGE};

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Control plane + node start, a pod of the pause image gets Ready, teardown restores the host.
#[tokio::test]
async fn a_pod_runs_on_a_real_node_and_teardown_restores_the_host() {
    let dir = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let plane = ControlPlane::start_with(dir.path(), &control_plane_options());
    let plane_in = started.elapsed();
    let mut node = Node::start(&plane, dir.path());
    let node_in = started.elapsed();

    let client = plane.client().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let pod: Pod = from(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "pause"},
        "spec": {
            "containers": [{
                "name": "pause",
                "image": PAUSE_IMAGE,
                "imagePullPolicy": "Never",
                "securityContext": {
                    "runAsNonRoot": true,
                    "runAsUser": 65532,
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]},
                    "readOnlyRootFilesystem": true
                }
            }],
            "terminationGracePeriodSeconds": 1
        }
    }));
    let pod_start = Instant::now();
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create the pod");
    let running = wait_for(Duration::from_secs(60), "the pause pod Ready", || {
        let pods = pods.clone();
        async move { pods.get("pause").await.ok().filter(is_ready) }
    })
    .await;
    let pod_in = pod_start.elapsed();
    let spec = running.spec.as_ref().expect("spec");
    assert_eq!(spec.node_name.as_deref(), Some(NODE_NAME));
    let status = running.status.as_ref().expect("status");
    assert_eq!(status.host_ip.as_deref(), Some(NODE_IP));
    let pod_ip = status.pod_ip.clone().expect("a pod IP");
    assert!(pod_ip.starts_with("10.244.0."), "pod IP {pod_ip}");

    let teardown_start = Instant::now();
    let left = node.teardown();
    let teardown_in = teardown_start.elapsed();
    println!(
        "node timings: control plane ready {plane_in:.1?}, node Ready {node_in:.1?} \
         (node alone {:.1?}), pause pod Ready {pod_in:.1?} after create, \
         teardown {teardown_in:.1?}",
        node.started_in
    );
    assert!(left.is_empty(), "the host is not restored: {left:#?}");
}
