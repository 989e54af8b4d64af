//! End to end against a real kube-apiserver, kube-controller-manager and etcd (built from Go
//! modules by scripts/build-control-plane). The webhook runs as its own `serve` process with
//! real watches; StatefulSets shaped like the Memgraph HA chart make the StatefulSet
//! controller create the pods, which is how users create them. No scheduler or kubelet: pods
//! stay Pending, which is all admission needs.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Event, Namespace, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use memgraph_address_injector::decision::state::parse_documents;
use serde_json::{json, Value};
use support::chart::*;
use support::control_plane::ControlPlane;
use support::*;

const ENV: &str = "MEMGRAPH_EXTERNAL_BOLT_ADDRESS";

const SOURCE: &str = "memgraph-address-injector/source";

fn annotation<'p>(pod: &'p Pod, key: &str) -> Option<&'p str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

fn env_value(pod: &Pod, name: &str) -> Option<String> {
    let container = &pod.spec.as_ref()?.containers[0];
    let matching: Vec<_> = container
        .env
        .as_ref()?
        .iter()
        .filter(|e| e.name == name)
        .collect();
    assert!(matching.len() <= 1, "duplicate {name}");
    matching.first().and_then(|e| e.value.clone())
}

fn args(pod: &Pod) -> Vec<String> {
    pod.spec.as_ref().unwrap().containers[0]
        .args
        .clone()
        .unwrap_or_default()
}

async fn node_port(client: &Client, ns: &str, service: &str) -> i32 {
    let api: Api<Service> = Api::namespaced(client.clone(), ns);
    let svc = api.get(service).await.expect("service");
    svc.spec.unwrap().ports.unwrap()[0]
        .node_port
        .expect("nodePort allocated")
}

/// Waits for an Event of ours (`reason`) on StatefulSet `statefulset`; returns its message.
async fn our_event(client: &Client, ns: &str, statefulset: &str, reason: &str) -> String {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    wait_for(
        Duration::from_secs(60),
        &format!("a {reason} Event on StatefulSet {ns}/{statefulset}"),
        || async {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().find_map(|e| {
                let on = &e.involved_object;
                (e.reason.as_deref() == Some(reason)
                    && on.kind.as_deref() == Some("StatefulSet")
                    && on.name.as_deref() == Some(statefulset)
                    && on.uid.is_some()
                    && e.reporting_component.as_deref() == Some("memgraph-address-injector"))
                .then(|| e.message.unwrap_or_default())
            })
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_a_real_control_plane() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut plane = ControlPlane::start(dir.path());
    eprintln!("control plane ready in {:.1?}", plane.started_in);
    let client = plane.client().await;
    let kubeconfig = plane.kubeconfig.display().to_string();
    let mut webhook = start_webhook(dir.path(), &[], &[("KUBECONFIG", kubeconfig.as_str())]);
    let health_port = webhook.health_port;
    tokio::task::spawn_blocking(move || {
        wait_until(Duration::from_secs(30), "webhook readiness", || {
            http_status(health_port, "/readyz") == Some(200)
        })
    })
    .await
    .unwrap();
    register_webhook(&client, &webhook).await;
    eprintln!("webhook registered after {:.1?}", started.elapsed());
    // No Gateway API here: that exposure is off, said once, and readiness did not wait on it.
    let log = webhook.log_text();
    for kind in ["Gateway", "TCPRoute"] {
        let said = format!("the Gateway API's {kind} is not installed");
        assert_eq!(log.matches(&said).count(), 1, "{said:?} once in:\n{log}");
    }

    node(
        &client,
        "node-a",
        &[("InternalIP", "10.0.0.10"), ("ExternalIP", "203.0.113.10")],
    )
    .await;
    node(&client, "node-b", &[("InternalIP", "10.0.0.11")]).await;

    nodeport_cluster(&client).await;
    eprintln!("scenario 1 (NodePort, 3.x coordinators and data) passed");
    routing_in_cluster(&client, &kubeconfig, dir.path()).await;
    eprintln!("routing check/sync --in-cluster against the API server passed");
    pending_loadbalancer(&client).await;
    eprintln!("scenario 2 (pending LoadBalancer) passed");
    forged_reviews_write_no_events(&client, &webhook).await;
    eprintln!("reviews posted to /mutate directly write Events only about real owners");
    memgraph_222(&client).await;
    eprintln!("scenario 3 (Memgraph 2.22 coordinators) passed");
    bad_host_annotation(&client).await;
    eprintln!("bad host values (denied with an Event, then admitted once fixed) passed");
    untouched_pods(&client).await;
    eprintln!("scenario 5 (non-Memgraph, opted out, dryRun) passed");
    manifests_accepted(&client).await;
    eprintln!("scenario 7 (manifests accepted by server-side dry run) passed");
    least_privilege(&client).await;
    eprintln!("least privilege (RBAC by SubjectAccessReview, restricted Pod Security) passed");
    // The caBundle trusts the next CA before the API server restarts, so the restarted server
    // has it for sure when the certificate is rotated below.
    let next_certs = trust_the_next_ca(&client, &webhook).await;
    let outage = Instant::now();
    apiserver_restart(&client, &mut plane, &webhook).await;
    eprintln!("API server restart passed in {:.1?}", outage.elapsed());
    audit_annotations_recorded(&plane);
    rotation_through_the_api_server(&client, &webhook, &next_certs).await;
    // Last: it stops the webhook.
    webhook_down(&client, &mut webhook).await;
    eprintln!(
        "scenario 6 (webhook down) passed; e2e took {:.1?}",
        started.elapsed()
    );
}

/// /mutate without a client certificate answers anyone who reaches it: a review naming a
/// StatefulSet the API server does not have, or a real one with a wrong UID, gets its answer
/// but writes no Event; the same review naming the real owner does (sent last: Events go
/// out in order, so when it shows, the forged ones were handled).
async fn forged_reviews_write_no_events(client: &Client, webhook: &Webhook) {
    let ns = "e2e-lb";
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    services
        .create(
            &PostParams::default(),
            &external_service("forged", "LoadBalancer", &[7687]),
        )
        .await
        .unwrap();
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let real_uid = sets
        .get("memgraph-data-0")
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap();
    let https = https_client(&webhook.ca_pem());
    let post = async |pod_name: &str, owner: &str, uid: &str| {
        let mut pod = memgraph_pod(pod_name, json!({}));
        pod["metadata"]["labels"]["app"] = json!("forged");
        pod["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "StatefulSet",
            "name": owner, "uid": uid, "controller": true}]);
        let answer: Value = https
            .post(webhook.url("/mutate"))
            .header("content-type", "application/json")
            .json(&review_of(&pod, ns, pod_name))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["response"]["allowed"], false, "{pod_name}: {answer}");
    };
    post(
        "forged-missing-0",
        "no-such-statefulset",
        "0d3c1a2b-0000-4000-8000-000000000001",
    )
    .await;
    post(
        "forged-wrong-uid-0",
        "memgraph-data-0",
        "0d3c1a2b-0000-4000-8000-000000000002",
    )
    .await;
    post("forged-control-0", "memgraph-data-0", &real_uid).await;
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    wait_for(
        Duration::from_secs(30),
        "the control review's Event",
        || async {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items
                .iter()
                .any(|e| {
                    e.message
                        .as_deref()
                        .unwrap_or_default()
                        .contains("forged-control-0")
                })
                .then_some(())
        },
    )
    .await;
    let list = events.list(&ListParams::default()).await.unwrap();
    for e in &list.items {
        let message = e.message.as_deref().unwrap_or_default();
        assert!(
            !message.contains("forged-missing-0") && !message.contains("forged-wrong-uid-0"),
            "an Event about a forged owner: {message}"
        );
        assert_ne!(
            e.involved_object.name.as_deref(),
            Some("no-such-statefulset")
        );
    }
    assert!(webhook
        .log_text()
        .contains("an admission review named a StatefulSet the API server does not have"));
    services
        .delete("forged-external", &DeleteParams::default())
        .await
        .unwrap();
}

/// Scenarios 1 and 4: the chart with NodePort external Services; coordinators on 3.x get the
/// env var and no flag.
async fn nodeport_cluster(client: &Client) {
    let ns = "e2e-nodeport";
    namespace(client, ns).await;
    let expected = create_chart_cluster(client, ns, "memgraph/memgraph:3.2.1", "NodePort").await;
    for (name, original_args) in expected {
        let pod = wait_pod(client, ns, &format!("{name}-0")).await;
        let port = node_port(client, ns, &format!("{name}-external")).await;
        let want = format!("203.0.113.10:{port}");
        assert_eq!(
            env_value(&pod, ENV).as_deref(),
            Some(want.as_str()),
            "{name}"
        );
        assert_eq!(annotation(&pod, ADDRESS), Some(want.as_str()), "{name}");
        assert_eq!(
            annotation(&pod, SOURCE),
            Some(format!("NodePort Service {name}-external (Node node-a ExternalIP)").as_str())
        );
        // Memgraph 3.x: no flag added or changed, no coordination variable added.
        assert_eq!(args(&pod), original_args, "{name}");
        assert!(env_value(&pod, "MEMGRAPH_COORDINATOR_HOSTNAME").is_none());
    }
}

/// Scenario 2: a LoadBalancer without ingress denies the pod (the StatefulSet's events say
/// why); once a "cloud controller" sets the ingress, the controller's retry is admitted.
async fn pending_loadbalancer(client: &Client) {
    let ns = "e2e-lb";
    namespace(client, ns).await;
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    services
        .create(
            &PostParams::default(),
            &external_service("memgraph-data-0", "LoadBalancer", &[7687]),
        )
        .await
        .unwrap();
    sets.create(
        &PostParams::default(),
        &chart_statefulset(
            "memgraph-data-0",
            "data",
            "memgraph/memgraph:3.2.1",
            &data_args(),
        ),
    )
    .await
    .unwrap();
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let message = wait_for(
        Duration::from_secs(60),
        "a FailedCreate event naming the Service",
        || async {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().find_map(|e| {
                let m = e.message.unwrap_or_default();
                (e.reason.as_deref() == Some("FailedCreate")
                    && m.contains("memgraph-data-0-external"))
                .then_some(m)
            })
        },
    )
    .await;
    assert!(
        message.contains("no status.loadBalancer.ingress"),
        "{message}"
    );
    // The same reason as our own Event on the StatefulSet, naming the pod.
    let ours = our_event(client, ns, "memgraph-data-0", "ExternalAddressPending").await;
    assert!(
        ours.contains("memgraph-data-0-0") && ours.contains("memgraph-data-0-external"),
        "{ours}"
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    assert!(pods.get_opt("memgraph-data-0-0").await.unwrap().is_none());

    let status = json!({"status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}]}}});
    services
        .patch_status(
            "memgraph-data-0-external",
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await
        .unwrap();
    let pod = wait_pod(client, ns, "memgraph-data-0-0").await;
    assert_eq!(env_value(&pod, ENV).as_deref(), Some("198.51.100.7:7687"));
    assert_eq!(annotation(&pod, ADDRESS), Some("198.51.100.7:7687"));
}

/// Scenario 3: Memgraph 2.22 coordinators. Behind a LoadBalancer exposing 7687, 10000 and
/// 12000 `--coordinator-hostname` is rewritten; behind a NodePort it is kept, with a warning.
async fn memgraph_222(client: &Client) {
    let ns = "e2e-222";
    namespace(client, ns).await;
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let image = "memgraph/memgraph:2.22.0";

    services
        .create(
            &PostParams::default(),
            &external_service(
                "memgraph-coordinator-1",
                "LoadBalancer",
                &[7687, 10000, 12000],
            ),
        )
        .await
        .unwrap();
    let status = json!({"status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.21"}]}}});
    services
        .patch_status(
            "memgraph-coordinator-1-external",
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await
        .unwrap();
    services
        .create(
            &PostParams::default(),
            &external_service("memgraph-coordinator-2", "NodePort", &[7687]),
        )
        .await
        .unwrap();
    // Give the webhook's watch a moment to see the status; a miss would deny and retry anyway.
    for id in [1, 2] {
        let name = format!("memgraph-coordinator-{id}");
        sets.create(
            &PostParams::default(),
            &chart_statefulset(
                &name,
                "coordinator",
                image,
                &chart_222_coordinator_args(id, ns),
            ),
        )
        .await
        .unwrap();
    }
    let pod = wait_pod(client, ns, "memgraph-coordinator-1-0").await;
    let mut want = chart_222_coordinator_args(1, ns);
    want[6] = "--coordinator-hostname=198.51.100.21".into();
    assert_eq!(args(&pod), want);
    assert_eq!(env_value(&pod, ENV).as_deref(), Some("198.51.100.21:7687"));

    let pod = wait_pod(client, ns, "memgraph-coordinator-2-0").await;
    assert_eq!(args(&pod), chart_222_coordinator_args(2, ns));
    // The StatefulSet controller drops admission warnings: the Event carries the explanation.
    let warning = our_event(
        client,
        ns,
        "memgraph-coordinator-2",
        "ExternalAddressWarning",
    )
    .await;
    assert!(
        warning.contains("--coordinator-hostname") && warning.contains("memgraph-coordinator-2-0"),
        "{warning}"
    );
    let port = node_port(client, ns, "memgraph-coordinator-2-external").await;
    assert_eq!(env_value(&pod, ENV), Some(format!("203.0.113.10:{port}")));

    // The warning reaches the client that creates such a pod.
    let mut direct: Value = serde_json::to_value(chart_statefulset(
        "memgraph-coordinator-2",
        "coordinator",
        image,
        &chart_222_coordinator_args(2, ns),
    ))
    .unwrap()["spec"]["template"]
        .clone();
    direct["metadata"]["name"] = json!("direct-coordinator-2");
    let (status, warnings, created) = create_pod_raw(client, ns, &direct, true).await;
    assert_eq!(status, 201, "{created}");
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("--coordinator-hostname") && w.contains("left unchanged")),
        "{warnings:?}"
    );
    // `299 - "text"`: each text within kube-core's 120 characters.
    for w in &warnings {
        let text = w.trim_start_matches("299 - ").trim_matches('"');
        assert!(
            text.chars().count() <= 120,
            "{} characters: {text}",
            text.chars().count()
        );
    }
}

/// A host annotation that is not a host (here with a port) never reaches a pod: the pod is
/// denied with a message naming the Service and the annotation, our Event on the StatefulSet
/// says the same, and once the annotation is fixed the controller's retry is admitted.
async fn bad_host_annotation(client: &Client) {
    let ns = "e2e-badhost";
    namespace(client, ns).await;
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let mut svc = external_service("memgraph-data-0", "NodePort", &[7687]);
    svc.metadata.annotations = Some(std::collections::BTreeMap::from([(
        "memgraph-address-injector/external-host".to_string(),
        "db.example.com:7687".to_string(),
    )]));
    services.create(&PostParams::default(), &svc).await.unwrap();
    sets.create(
        &PostParams::default(),
        &chart_statefulset(
            "memgraph-data-0",
            "data",
            "memgraph/memgraph:3.12.0",
            &data_args(),
        ),
    )
    .await
    .unwrap();
    let denied = our_event(client, ns, "memgraph-data-0", "ExternalAddressDenied").await;
    assert!(
        denied.contains("memgraph-address-injector/external-host")
            && denied.contains("memgraph-data-0-external")
            && denied.contains("carries a port"),
        "{denied}"
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    assert!(pods.get_opt("memgraph-data-0-0").await.unwrap().is_none());

    let fix = json!({"metadata": {"annotations": {"memgraph-address-injector/external-host": "db.example.com"}}});
    services
        .patch(
            "memgraph-data-0-external",
            &PatchParams::default(),
            &Patch::Merge(&fix),
        )
        .await
        .unwrap();
    let pod = wait_pod(client, ns, "memgraph-data-0-0").await;
    let port = node_port(client, ns, "memgraph-data-0-external").await;
    assert_eq!(env_value(&pod, ENV), Some(format!("db.example.com:{port}")));
}

/// Scenario 5: a non-Memgraph pod, an opted-out pod and a dryRun create.
async fn untouched_pods(client: &Client) {
    let ns = "e2e-nodeport";
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let nginx: Pod = from(json!({
        "metadata": {"name": "nginx", "labels": {"app": "memgraph-data-0"}},
        "spec": {"containers": [{"name": "nginx", "image": "nginx:1.27"}]}
    }));
    let created = pods.create(&PostParams::default(), &nginx).await.unwrap();
    assert!(annotation(&created, ADDRESS).is_none());

    let opted = from::<Pod>(memgraph_pod(
        "opted-out",
        json!({"memgraph-address-injector/inject": "false"}),
    ));
    let created = pods.create(&PostParams::default(), &opted).await.unwrap();
    assert!(annotation(&created, ADDRESS).is_none());
    assert!(env_value(&created, ENV).is_none());

    let (status, _, dry) =
        create_pod_raw(client, ns, &memgraph_pod("dry-run", json!({})), true).await;
    assert_eq!(status, 201);
    assert!(
        dry.pointer("/metadata/annotations")
            .and_then(|a| a.get(ADDRESS))
            .is_some(),
        "{dry}"
    );
    assert!(
        pods.get_opt("dry-run").await.unwrap().is_none(),
        "a dryRun create left a pod behind"
    );
}

/// The objects of a kustomize directory (its `resources`, with its `namespace` applied).
fn kustomization_objects(dir: &str) -> Vec<kube::api::DynamicObject> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let kustomization: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap())
            .unwrap();
    let namespace = kustomization["namespace"].as_str().map(String::from);
    let mut objects = Vec::new();
    for file in kustomization["resources"].as_array().unwrap() {
        let path = dir.join(file.as_str().unwrap());
        if path.is_dir() {
            // An overlay's base is checked on its own.
            continue;
        }
        let text = std::fs::read_to_string(path).unwrap();
        for value in parse_documents(&text, file.as_str().unwrap()).unwrap() {
            let mut obj: kube::api::DynamicObject = from(value);
            if obj.metadata.namespace.is_none() {
                obj.metadata.namespace = namespace.clone();
            }
            objects.push(obj);
        }
    }
    objects
}

async fn api_for(
    client: &Client,
    discovery: &kube::Discovery,
    obj: &kube::api::DynamicObject,
) -> Api<kube::api::DynamicObject> {
    let types = obj.types.clone().expect("apiVersion and kind");
    let gvk = kube::api::GroupVersionKind::try_from(&types).unwrap();
    let (resource, caps) = discovery.resolve_gvk(&gvk).expect("a known kind");
    match (caps.scope, obj.metadata.namespace.as_deref()) {
        (kube::discovery::Scope::Namespaced, Some(ns)) => {
            Api::namespaced_with(client.clone(), ns, &resource)
        }
        _ => Api::all_with(client.clone(), &resource),
    }
}

/// Scenario 7: every object in manifests/base and manifests/routing-sync is accepted by the
/// API server. Namespaces, ServiceAccounts and RBAC are created for real (the least-privilege
/// checks need them); everything else is a server-side dry run.
async fn manifests_accepted(client: &Client) {
    let discovery = kube::Discovery::new(client.clone())
        .run()
        .await
        .expect("discovery");
    let base = kustomization_objects("manifests/base");
    assert!(
        base.len() >= 8,
        "expected every manifest, found {}",
        base.len()
    );
    let routing_sync = kustomization_objects("manifests/routing-sync");
    assert!(
        routing_sync.len() >= 4,
        "expected the routing-sync manifests, found {}",
        routing_sync.len()
    );
    // The reconciler overlay's own objects (its RBAC); its Deployment patch is the base's.
    let reconcile = kustomization_objects("manifests/routing-reconcile");
    assert_eq!(reconcile.len(), 4, "the routing-reconcile RBAC");
    // The ingress-nginx overlay's Role and RoleBinding for the tcp-services ConfigMap.
    let nginx = kustomization_objects("manifests/ingress-nginx");
    assert_eq!(nginx.len(), 2, "the ingress-nginx RBAC");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in ["memgraph", "ingress-nginx"] {
        if namespaces.get_opt(ns).await.unwrap().is_none() {
            namespace(client, ns).await;
        }
    }
    let dry = |objs: Vec<kube::api::DynamicObject>, only_dry: bool| {
        objs.into_iter().map(move |o| (o, only_dry))
    };
    // The reconciler's RBAC is only dry-run: the least-privilege check is of the base.
    for (obj, only_dry) in dry(base, false)
        .chain(dry(routing_sync, false))
        .chain(dry(reconcile, true))
        .chain(dry(nginx, true))
    {
        let api = api_for(client, &discovery, &obj).await;
        let kind = obj.types.as_ref().unwrap().kind.clone();
        let name = obj.metadata.name.clone().unwrap_or_default();
        let real = matches!(
            kind.as_str(),
            "Namespace"
                | "ServiceAccount"
                | "ClusterRole"
                | "ClusterRoleBinding"
                | "Role"
                | "RoleBinding"
        );
        let params = PostParams {
            dry_run: !real || only_dry,
            ..Default::default()
        };
        // The webhook configuration already exists under this name; dry-run it renamed.
        let mut obj = obj;
        if kind == "MutatingWebhookConfiguration" {
            obj.metadata.name = Some(format!("{name}-dry-run"));
        }
        api.create(&params, &obj)
            .await
            .unwrap_or_else(|e| panic!("{kind} {name} rejected: {e}"));
    }
}

/// Least privilege: the webhook's ServiceAccount may get/list/watch Services and Nodes,
/// create Events and get StatefulSets, and nothing else; its pod passes the `restricted` Pod Security Standard that its namespace
/// enforces (and that enforcement is live: a privileged pod is refused there).
async fn least_privilege(client: &Client) {
    use k8s_openapi::api::authorization::v1::SubjectAccessReview;
    let reviews: Api<SubjectAccessReview> = Api::all(client.clone());
    let user = "system:serviceaccount:memgraph-address-injector:memgraph-address-injector";
    // `resource` is "GROUP/RESOURCE" outside the core group.
    let can = async |verb: &str, resource: &str, namespace: Option<&str>| {
        let (group, resource) = resource.split_once('/').unwrap_or(("", resource));
        let review: SubjectAccessReview = from(json!({
            "spec": {
                "user": user,
                "groups": ["system:serviceaccounts", "system:serviceaccounts:memgraph-address-injector", "system:authenticated"],
                "resourceAttributes": {"verb": verb, "resource": resource, "group": group, "namespace": namespace}
            }
        }));
        let answer = reviews
            .create(&PostParams::default(), &review)
            .await
            .expect("SubjectAccessReview");
        answer.status.map(|s| s.allowed).unwrap_or(false)
    };
    for resource in ["services", "nodes"] {
        for verb in ["get", "list", "watch"] {
            assert!(
                can(verb, resource, None).await,
                "{verb} {resource} must be allowed"
            );
        }
        for verb in ["create", "update", "patch", "delete"] {
            assert!(
                !can(verb, resource, Some("e2e-nodeport")).await,
                "{verb} {resource} must be denied"
            );
        }
    }
    assert!(
        can("create", "events", Some("e2e-nodeport")).await,
        "create events must be allowed"
    );
    for verb in ["get", "list", "watch", "update", "patch", "delete"] {
        assert!(
            !can(verb, "events", Some("e2e-nodeport")).await,
            "{verb} events must be denied"
        );
    }
    // A get of the StatefulSet an admission Event names confirms its UID; nothing more.
    assert!(
        can("get", "apps/statefulsets", Some("e2e-nodeport")).await,
        "get statefulsets must be allowed"
    );
    for verb in ["list", "watch", "update", "patch", "delete"] {
        assert!(
            !can(verb, "apps/statefulsets", Some("e2e-nodeport")).await,
            "{verb} statefulsets must be denied"
        );
    }
    // The Gateway API's two kinds a pod can be exposed through, read-only.
    for resource in [
        "gateway.networking.k8s.io/gateways",
        "gateway.networking.k8s.io/tcproutes",
    ] {
        for verb in ["get", "list", "watch"] {
            assert!(
                can(verb, resource, Some("e2e-nodeport")).await,
                "{verb} {resource} must be allowed"
            );
        }
        for verb in ["create", "update", "patch", "delete"] {
            assert!(
                !can(verb, resource, Some("e2e-nodeport")).await,
                "{verb} {resource} must be denied"
            );
        }
    }
    for (verb, resource) in [
        ("get", "gateway.networking.k8s.io/httproutes"),
        ("list", "gateway.networking.k8s.io/gatewayclasses"),
        ("get", "secrets"),
        ("list", "secrets"),
        ("list", "pods"),
        ("create", "pods"),
        ("list", "configmaps"),
        ("get", "endpoints"),
    ] {
        assert!(
            !can(verb, resource, Some("e2e-nodeport")).await,
            "{verb} {resource} must be denied"
        );
    }
    // Without the ingress-nginx overlay (only dry-run above), not even its ConfigMaps.
    assert!(
        !can("get", "configmaps", Some("ingress-nginx")).await,
        "get configmaps in ingress-nginx must be denied without manifests/ingress-nginx"
    );

    let deployment = kustomization_objects("manifests/base")
        .into_iter()
        .find(|o| o.types.as_ref().is_some_and(|t| t.kind == "Deployment"))
        .unwrap();
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod"});
    pod["metadata"] = deployment.data["spec"]["template"]["metadata"].clone();
    pod["metadata"]["name"] = json!("restricted-check");
    pod["spec"] = deployment.data["spec"]["template"]["spec"].clone();
    let (status, _, body) = create_pod_raw(client, "memgraph-address-injector", &pod, true).await;
    assert_eq!(
        status, 201,
        "the webhook's pod does not pass restricted: {body}"
    );
    // A pod with default security settings: fine elsewhere, refused here.
    let privileged = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "unrestricted"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    let (status, _, body) =
        create_pod_raw(client, "memgraph-address-injector", &privileged, true).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.to_string().contains("PodSecurity"), "{body}");
}

/// Fault: the API server stops and comes back while the webhook runs. Decisions continue from
/// the cache meanwhile; the watches resume; a Service created after the restart is used.
async fn apiserver_restart(client: &Client, plane: &mut ControlPlane, webhook: &Webhook) {
    plane.stop_apiserver();
    let https = https_client(&webhook.ca_pem());
    let mut pod = serde_json::to_value(chart_statefulset(
        "memgraph-data-0",
        "data",
        "memgraph/memgraph:3.2.1",
        &data_args(),
    ))
    .unwrap()["spec"]["template"]
        .clone();
    pod["metadata"]["name"] = json!("memgraph-data-0-0");
    let review = review_of(&pod, "e2e-nodeport", "during-outage");
    let response: Value = https
        .post(webhook.url("/mutate"))
        .header("content-type", "application/json")
        .body(review.to_string())
        .send()
        .await
        .expect("the webhook answers while the API server is down")
        .json()
        .await
        .unwrap();
    assert_eq!(response["response"]["allowed"], true, "{response}");
    assert!(
        response["response"]["auditAnnotations"]["bolt-address"]
            .as_str()
            .unwrap()
            .starts_with("203.0.113.10:"),
        "{response}"
    );

    plane.start_apiserver();
    const CACHED: &str = r#"memgraph_address_injector_cached_objects{kind="Service"}"#;
    const LIVE_LISTS: &str = "memgraph_address_injector_live_service_lists_total";
    let cached = async || webhook.metric(CACHED).await.unwrap_or(0.0);
    let live_lists = async || webhook.metric(LIVE_LISTS).await.expect("live list counter");
    let before = cached().await;
    let lists_before = live_lists().await;
    let ns = "e2e-after-restart";
    namespace(client, ns).await;
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    services
        .create(
            &PostParams::default(),
            &external_service("memgraph-data-0", "NodePort", &[7687]),
        )
        .await
        .unwrap();
    // The resumed watch, not a live list, brings the new Service into the cache.
    wait_for(
        Duration::from_secs(60),
        "the resumed watch to deliver the new Service",
        || async { (cached().await > before).then_some(()) },
    )
    .await;
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    sets.create(
        &PostParams::default(),
        &chart_statefulset(
            "memgraph-data-0",
            "data",
            "memgraph/memgraph:3.2.1",
            &data_args(),
        ),
    )
    .await
    .unwrap();
    let created = wait_pod(client, ns, "memgraph-data-0-0").await;
    let port = node_port(client, ns, "memgraph-data-0-external").await;
    assert_eq!(
        env_value(&created, ENV),
        Some(format!("203.0.113.10:{port}"))
    );
    // The outage showed in the watch error counter (readiness stayed true by design).
    let errors = webhook
        .metric("memgraph_address_injector_watch_errors_total")
        .await
        .expect("watch error counter");
    assert!(
        errors > 0.0,
        "the outage left no trace in the watch error counter"
    );
    assert_eq!(
        live_lists().await,
        lists_before,
        "the Service came from a live list, not the watch"
    );
}

/// auditAnnotations reach the audit log, prefixed with the webhook's name.
fn audit_annotations_recorded(plane: &ControlPlane) {
    let audit = plane.audit_log();
    assert!(
        audit.contains("bolt-address.memgraph-address-injector.io/bolt-address"),
        "no audit annotation in the audit log"
    );
    // Warnings are audited with their whole explanation (the 2.22 NodePort coordinator).
    assert!(
        audit.contains("bolt-address.memgraph-address-injector.io/warning-1")
            && audit.contains("left unchanged because"),
        "no warning audit annotation in the audit log"
    );
}

/// Scenario 6: with the webhook down, Memgraph pods fail with a clear error (failurePolicy
/// Fail) while other pods in the same namespace are still created (matchConditions).
async fn webhook_down(client: &Client, webhook: &mut Webhook) {
    let status = webhook
        .process
        .terminate(Duration::from_secs(15))
        .expect("webhook stops on SIGTERM");
    assert!(status.success(), "{status:?}");
    let ns = "e2e-nodeport";
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let err = pods
        .create(
            &PostParams::default(),
            &from(memgraph_pod("while-down", json!({}))),
        )
        .await
        .expect_err("a Memgraph pod must not be admitted without the webhook");
    let text = err.to_string();
    assert!(
        text.contains("failed calling webhook")
            && text.contains("bolt-address.memgraph-address-injector.io"),
        "{text}"
    );
    let other: Pod = from(json!({
        "metadata": {"name": "other-while-down"},
        "spec": {"containers": [{"name": "app", "image": "busybox:1.36"}]}
    }));
    pods.create(&PostParams::default(), &other)
        .await
        .expect("non-Memgraph pods do not depend on the webhook");
    let _ = pods
        .delete("other-while-down", &DeleteParams::default())
        .await;

    // The chart's Job and helm-test pods run the Memgraph image but are not HA instances:
    // they never reach the webhook, so they start while it is down.
    let image = "memgraph/memgraph:3.12.0";
    let (status, _, body) = create_pod_raw(client, ns, &chart_test_pod(image), false).await;
    assert_eq!(
        status, 201,
        "the helm test pod must not need the webhook: {body}"
    );
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), ns);
    jobs.create(&PostParams::default(), &from(chart_setup_job(image, ns)))
        .await
        .expect("cluster-setup Job");
    wait_for(
        Duration::from_secs(60),
        "the cluster-setup Job's pod, created by the job controller",
        || async {
            let list = pods
                .list(&ListParams::default().labels("job-name=cluster-setup"))
                .await
                .ok()?;
            (!list.items.is_empty()).then_some(())
        },
    )
    .await;
    // A Memgraph standalone (no HA flags) does not need it either ...
    let standalone = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "standalone"},
        "spec": {"containers": [{"name": "memgraph", "image": image, "args": ["--bolt-port=7687"]}]}});
    let (status, _, body) = create_pod_raw(client, ns, &standalone, false).await;
    assert_eq!(status, 201, "{body}");
    // ... but an HA instance does, whatever its container is called: by flag or by variable.
    for (name, container) in [
        (
            "ha-by-flag",
            json!({"name": "db", "image": image, "args": ["--management-port=10000", "--bolt-port=7687"]}),
        ),
        (
            "ha-by-env",
            json!({"name": "db", "image": image, "env": [{"name": "MEMGRAPH_COORDINATOR_ID", "value": "1"}]}),
        ),
        (
            "ha-by-name",
            json!({"name": "memgraph-coordinator", "image": "registry.example/custom:1"}),
        ),
    ] {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [container]}});
        let (status, _, body) = create_pod_raw(client, ns, &pod, false).await;
        assert_eq!(status, 500, "{name} must wait for the webhook: {body}");
        assert!(
            body.to_string().contains("failed calling webhook"),
            "{body}"
        );
    }
}

/// The first step of a CA rollover: a new CA and serving pair (in the returned directory),
/// and the caBundle trusting the old and the new CA.
async fn trust_the_next_ca(client: &Client, webhook: &Webhook) -> std::path::PathBuf {
    use base64::Engine;
    let next = webhook.certs.parent().unwrap().join("rotated-certs");
    gen_certs(&next, &["127.0.0.1"]);
    let mut bundle = webhook.ca_pem();
    bundle.extend(std::fs::read(next.join("ca.crt")).unwrap());
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let patch = json!({"webhooks": [{"name": "bolt-address.memgraph-address-injector.io",
        "clientConfig": {"url": webhook.url("/mutate"), "caBundle": base64::engine::general_purpose::STANDARD.encode(&bundle)}}]});
    configs
        .patch(
            "memgraph-address-injector",
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await
        .expect("caBundle with both CAs");
    next
}

/// Certificate rotation under load, with the API server as the client: while pods are
/// admitted through the webhook, its certificate files are replaced by the pair in `next`
/// (the caBundle already trusts the old and the new CA: `trust_the_next_ca`). No admission
/// fails.
async fn rotation_through_the_api_server(
    client: &Client,
    webhook: &Webhook,
    next: &std::path::Path,
) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for worker in 0..4 {
        let (client, stop) = (client.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let pod = memgraph_pod(&format!("rotation-{worker}"), json!({}));
                let (status, _, body) = create_pod_raw(&client, "e2e-nodeport", &pod, true).await;
                let mutated = body
                    .pointer("/metadata/annotations")
                    .and_then(|a| a.get(ADDRESS))
                    .is_some();
                if status == 201 && mutated {
                    ok += 1;
                } else {
                    failed.push(format!("{status}: {body}"));
                }
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for file in ["tls.crt", "tls.key"] {
        std::fs::copy(next.join(file), webhook.certs.join(file)).unwrap();
    }
    let new_ca = next.join("ca.crt");
    let url = webhook.url("/mutate");
    wait_for(
        Duration::from_secs(10),
        "the rotated certificate to be served",
        || async {
            let client = https_client(&std::fs::read(&new_ca).unwrap());
            client.get(&url).send().await.ok().map(|_| ())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for worker in workers {
        let (o, f) = worker.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    eprintln!(
        "rotation through the API server: {ok} pods admitted and mutated, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert!(ok > 10, "{ok}");
}

/// `routing check` and `routing sync --in-cluster` read Services, Pods and Nodes from the
/// real API server: a Memgraph 3.8-like Bolt test server (tests/bolt_server) registered with
/// the chart's in-cluster names for the e2e-nodeport cluster is checked, synced to the
/// external addresses the API server's objects give, and checked again.
async fn routing_in_cluster(client: &Client, kubeconfig: &str, dir: &std::path::Path) {
    use std::io::{BufRead, Write};
    let ns = "e2e-nodeport";
    // The chart's internal headless Services, whose names the registrations use.
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let instances = [
        "memgraph-coordinator-1",
        "memgraph-coordinator-2",
        "memgraph-coordinator-3",
        "memgraph-data-0",
        "memgraph-data-1",
    ];
    for name in instances {
        let svc: Service = from(
            json!({"metadata": {"name": name}, "spec": {"clusterIP": "None", "selector": {"app": name},
            "ports": [{"name": "tcp-bolt-port", "port": 7687, "targetPort": 7687}]}}),
        );
        services.create(&PostParams::default(), &svc).await.unwrap();
    }
    let table: Vec<Value> = instances
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let internal = |port: u16| format!("{name}.{ns}.svc.cluster.local:{port}");
            let mut entry = json!({"listen": "127.0.0.1:0", "bolt_server": internal(7687), "management_server": internal(10000)});
            if let Some(id) = name.strip_prefix("memgraph-coordinator-") {
                entry["name"] = json!(format!("coordinator_{id}"));
                entry["coordinator_server"] = json!(internal(12000));
                entry["role"] = json!(if id == "1" { "leader" } else { "follower" });
            } else {
                entry["name"] = json!(format!("instance_{}", i - 3));
                entry["role"] = json!(if i == 3 { "main" } else { "replica" });
            }
            entry
        })
        .collect();
    let config = dir.join("routing-cluster.json");
    std::fs::write(
        &config,
        json!({"ttl": 2, "version": "3.8.0", "bolt_versions": ["5.2", "4.3"], "instances": table,
               "journal": dir.join("routing-journal.jsonl")})
        .to_string(),
    )
    .unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/bolt_server/memgraph_coordinator.py");
    let mut server = ChildGuard {
        child: std::process::Command::new("python3")
            .arg(&script)
            .arg(&config)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 and the Bolt test server"),
        name: "bolt-test-server".into(),
    };
    let mut first = String::new();
    let mut stdout = std::io::BufReader::new(server.child.stdout.take().unwrap());
    stdout.read_line(&mut first).unwrap();
    let ready: Value = serde_json::from_str(&first).expect("the test server's listening line");
    let bolt = ready["listening"]["coordinator_1"]
        .as_str()
        .unwrap()
        .to_string();
    // The cluster was created at 3.2.1, which has no UPDATE CONFIG: upgraded to 3.8.0 (a
    // pod's image may change in place), as the test server plays. On 3.8 only the leader
    // takes the writes, reached by its pod IP (set here, playing the kubelet; the test server
    // also serves coordinator_1 there).
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    for name in instances {
        let pod = format!("{name}-0");
        let current = pods.get(&pod).await.unwrap();
        let container = current.spec.unwrap().containers[0].name.clone();
        let upgrade = json!({"spec": {"containers": [{"name": container, "image": "memgraph/memgraph:3.8.0"}]}});
        pods.patch(&pod, &PatchParams::default(), &Patch::Strategic(&upgrade))
            .await
            .unwrap();
    }
    let leader_ip = "127.0.13.11";
    writeln!(
        server.child.stdin.as_mut().unwrap(),
        "alias coordinator_1 {leader_ip}:7687"
    )
    .unwrap();
    let mut reply = String::new();
    stdout.read_line(&mut reply).unwrap();
    assert!(reply.starts_with("ok"), "{reply}");
    let status = json!({"status": {"phase": "Running", "podIP": leader_ip, "podIPs": [{"ip": leader_ip}],
        "conditions": [{"type": "Ready", "status": "True"}]}});
    pods.patch_status(
        "memgraph-coordinator-1-0",
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .unwrap();

    let routing = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .arg("routing")
            .args(args)
            .args(["--bolt", &bolt, "--in-cluster", "--namespace", ns])
            .env("KUBECONFIG", kubeconfig)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, text) = routing(&["check"]);
    assert_eq!(code, Some(1), "{text}");
    for name in instances {
        let port = node_port(client, ns, &format!("{name}-external")).await;
        assert!(
            text.contains(&format!("203.0.113.10:{port}")),
            "check does not suggest {name}'s external address:\n{text}"
        );
    }
    let (code, text) = routing(&["sync", "--apply"]);
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = routing(&["check"]);
    assert_eq!(code, Some(0), "after sync:\n{text}");
    let (code, text) = routing(&["sync"]);
    assert_eq!(code, Some(0), "a second sync must plan nothing:\n{text}");
    drop(server);
}
