//! `./scripts/demo`: a real control plane (etcd, kube-apiserver, kube-controller-manager), the
//! webhook, and a Memgraph HA-shaped cluster with NodePort Services and two Nodes. Prints each
//! pod's role, Service and injected address, then keeps running until Ctrl-C.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use support::chart::*;
use support::control_plane::ControlPlane;
use support::*;

#[tokio::main]
async fn main() {
    let dir = std::env::temp_dir().join(format!(
        "memgraph-address-injector-demo-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("demo directory");
    eprintln!(
        "starting etcd, kube-apiserver and kube-controller-manager in {} ...",
        dir.display()
    );
    let plane = ControlPlane::start(&dir);
    eprintln!("control plane ready in {:.1?}", plane.started_in);
    let client = plane.client().await;
    let kubeconfig = plane.kubeconfig.display().to_string();
    let webhook = start_webhook(&dir, &[], &[("KUBECONFIG", kubeconfig.as_str())]);
    let health_port = webhook.health_port;
    tokio::task::spawn_blocking(move || {
        wait_until(Duration::from_secs(30), "webhook readiness", || {
            http_status(health_port, "/readyz") == Some(200)
        })
    })
    .await
    .expect("webhook ready");
    register_webhook(&client, &webhook).await;

    node(
        &client,
        "node-a",
        &[("InternalIP", "10.0.0.10"), ("ExternalIP", "203.0.113.10")],
    )
    .await;
    node(
        &client,
        "node-b",
        &[("InternalIP", "10.0.0.11"), ("ExternalIP", "203.0.113.11")],
    )
    .await;
    let ns = "memgraph";
    namespace(&client, ns).await;
    let instances: Vec<String> =
        create_chart_cluster(&client, ns, "memgraph/memgraph:3.2.1", "NodePort")
            .await
            .into_iter()
            .map(|(name, _)| name)
            .collect();

    println!();
    println!(
        "{:<28} {:<12} {:<34} {:<22}",
        "POD", "ROLE", "SERVICE", "MEMGRAPH_EXTERNAL_BOLT_ADDRESS"
    );
    for name in &instances {
        let pod = wait_pod(&client, ns, &format!("{name}-0")).await;
        let role = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("role"))
            .cloned()
            .unwrap_or_default();
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        let source = annotations
            .get("memgraph-address-injector/source")
            .cloned()
            .unwrap_or_default();
        let service = source.split(' ').nth(2).unwrap_or("-").to_string();
        let env = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers[0].env.as_ref())
            .and_then(|env| {
                env.iter()
                    .find(|e| e.name == "MEMGRAPH_EXTERNAL_BOLT_ADDRESS")
                    .and_then(|e| e.value.clone())
            });
        println!(
            "{:<28} {:<12} {:<34} {:<22}",
            format!("{name}-0"),
            role,
            service,
            env.unwrap_or_else(|| "-".into())
        );
    }
    println!();
    println!("The cluster keeps running. Try:");
    println!("  export KUBECONFIG={kubeconfig}");
    println!("  kubectl -n {ns} get pods -o custom-columns=NAME:.metadata.name,ADDRESS:.metadata.annotations.memgraph-address-injector/bolt-address");
    println!("Webhook log: {}", webhook.log.display());
    println!("Press Ctrl-C to stop everything.");
    let _ = tokio::signal::ctrl_c().await;
    eprintln!("stopping ...");
    drop(webhook);
    drop(plane);
    let _ = std::fs::remove_dir_all(&dir);
}
