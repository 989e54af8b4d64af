//! Memory of the real watch-fed cache: 10,000 Services (over 100 namespaces, the bench's mix)
//! and 100 Nodes in a real API server, then the webhook lists and watches them. Ignored by
//! default (it takes a minute); `scripts/bench` runs it in full mode:
//! `cargo test --release --test scale -- --ignored --nocapture`.

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Api, PostParams};
use serde_json::Value;
use support::chart::*;
use support::control_plane::ControlPlane;
use support::*;

#[path = "../benches/support/synthetic.rs"]
mod synthetic;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a minute of setup; run by scripts/bench"]
async fn cache_memory_with_10000_services() {
    let services: usize = std::env::var("MAI_SCALE_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let dir = tempfile::tempdir().unwrap();
    let plane = ControlPlane::start(dir.path());
    let client = plane.client().await;
    let list = synthetic::cluster_list(services, 100);
    let items = list["items"].as_array().unwrap().clone();
    let mut namespaces: Vec<String> = items
        .iter()
        .filter_map(|i| i["metadata"]["namespace"].as_str().map(String::from))
        .collect();
    namespaces.sort();
    namespaces.dedup();
    for ns in &namespaces {
        namespace(&client, ns).await;
    }
    let started = Instant::now();
    let created = futures::stream::iter(items.into_iter().map(|item: Value| {
        let client = client.clone();
        async move {
            let mut item = item;
            if item["kind"] == "Node" {
                let api: Api<Node> = Api::all(client);
                let node: Node = from(item);
                api.create(&PostParams::default(), &node)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            } else {
                // Let the API server allocate ClusterIPs and nodePorts.
                item["spec"].as_object_mut().unwrap().remove("clusterIP");
                if let Some(ports) = item["spec"]["ports"].as_array_mut() {
                    for p in ports {
                        p.as_object_mut().unwrap().remove("nodePort");
                    }
                }
                // 3,000 external Services would exhaust the 2,768 nodePorts of the default
                // range; LoadBalancers here need none (their address is the ingress).
                if item["spec"]["type"] == "LoadBalancer" {
                    item["spec"]["allocateLoadBalancerNodePorts"] = Value::Bool(false);
                }
                let ns = item["metadata"]["namespace"].as_str().unwrap().to_string();
                item["metadata"]
                    .as_object_mut()
                    .unwrap()
                    .remove("managedFields");
                let api: Api<Service> = Api::namespaced(client, &ns);
                let svc: Service = from(item);
                api.create(&PostParams::default(), &svc)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        }
    }))
    .buffer_unordered(32)
    .collect::<Vec<_>>()
    .await;
    let failures: Vec<_> = created.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{} creates failed, first: {:?}",
        failures.len(),
        failures.first()
    );
    eprintln!(
        "created {} objects in {:.1?}",
        created.len(),
        started.elapsed()
    );

    let kubeconfig = plane.kubeconfig.display().to_string();
    let webhook = start_webhook(dir.path(), &[], &[("KUBECONFIG", kubeconfig.as_str())]);
    let listed = Instant::now();
    let port = webhook.health_port;
    tokio::task::spawn_blocking(move || {
        wait_until(Duration::from_secs(120), "readiness", || {
            http_status(port, "/readyz") == Some(200)
        })
    })
    .await
    .unwrap();
    let cached = webhook
        .metric(r#"memgraph_address_injector_cached_objects{kind="Service"}"#)
        .await
        .unwrap_or(0.0) as usize;
    // Ours, plus the API server's own `kubernetes` Service.
    assert_eq!(cached, services + 1, "Services in the cache");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", webhook.process.pid())).unwrap();
    let field = |name: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim()
            .trim_end_matches(" kB")
            .trim()
            .parse::<f64>()
            .unwrap()
            / 1024.0
    };
    println!(
        "SCALE services={} nodes=100 listed_in={:.1?} rss_mib={:.1} peak_rss_mib={:.1}",
        cached,
        listed.elapsed(),
        field("VmRSS:"),
        field("VmHWM:")
    );
}
