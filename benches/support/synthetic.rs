//! A synthetic cluster for benchmarks: `services` Services spread over 100 namespaces (70%
//! ClusterIP, 20% NodePort, 10% LoadBalancer), the HA chart's external Services in namespace
//! `memgraph`, and 100 Ready Nodes. Output is a v1 List, as `kubectl get svc,nodes -A -o json`.

use serde_json::{json, Value};

pub fn cluster_list(services: usize, nodes: usize) -> Value {
    let mut items = Vec::with_capacity(services + nodes);
    let chart = [
        "memgraph-coordinator-1",
        "memgraph-coordinator-2",
        "memgraph-coordinator-3",
        "memgraph-data-0",
        "memgraph-data-1",
    ];
    for (i, instance) in chart.iter().enumerate() {
        items.push(service(
            "memgraph",
            &format!("{instance}-external"),
            "NodePort",
            json!({"app": instance}),
            7687,
            Some(31000 + i as i32),
        ));
    }
    items.push(service(
        "memgraph",
        "coordinators",
        "LoadBalancer",
        json!({"role": "coordinator"}),
        7687,
        Some(30999),
    ));
    for i in 0..services.saturating_sub(items.len()) {
        let namespace = format!("ns-{:03}", i % 100);
        let name = format!("svc-{i:05}");
        let selector = json!({"app": format!("app-{i}"), "tier": "backend"});
        let item = match i % 10 {
            0 => service(
                &namespace,
                &name,
                "LoadBalancer",
                selector,
                8080,
                Some(30000 + (i % 2000) as i32),
            ),
            1 | 2 => service(
                &namespace,
                &name,
                "NodePort",
                selector,
                8080,
                Some(30000 + (i % 2000) as i32),
            ),
            _ => service(&namespace, &name, "ClusterIP", selector, 8080, None),
        };
        items.push(item);
    }
    for n in 0..nodes {
        items.push(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": format!("node-{n:03}"), "labels": {"kubernetes.io/hostname": format!("node-{n:03}")}},
            "spec": {},
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": format!("10.0.{}.{}", n / 250, n % 250 + 1)},
                    {"type": "ExternalIP", "address": format!("203.0.{}.{}", 113 + n / 250, n % 250 + 1)},
                    {"type": "Hostname", "address": format!("node-{n:03}")}
                ],
                "conditions": [{"type": "Ready", "status": "True"}]
            }
        }));
    }
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

fn service(
    namespace: &str,
    name: &str,
    type_: &str,
    selector: Value,
    port: i32,
    node_port: Option<i32>,
) -> Value {
    let mut port_spec = json!({"name": "tcp", "port": port, "targetPort": port, "protocol": "TCP"});
    if let Some(node_port) = node_port {
        port_spec["nodePort"] = json!(node_port);
    }
    let external = type_ != "ClusterIP";
    let ingress = if type_ == "LoadBalancer" {
        json!([{"ip": "198.51.100.10"}])
    } else {
        json!([])
    };
    let mut service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {
            "name": name, "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "Helm"},
            "managedFields": [{"manager": "helm", "operation": "Update", "apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:ports": {}, "f:selector": {}}}}]
        },
        "spec": {"type": type_, "selector": selector, "ports": [port_spec], "clusterIP": "10.96.0.10", "sessionAffinity": "None"},
        "status": {"loadBalancer": {"ingress": ingress}}
    });
    if external {
        service["spec"]["externalTrafficPolicy"] = json!("Cluster");
    }
    service
}
