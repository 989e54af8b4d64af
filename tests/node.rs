//! The install, run for real: a control plane and a real node (containerd, kubelet,
//! kube-proxy) on this machine (tests/support/node.rs). Tests share the machine's fixed
//! kubelet paths, so they run one at a time (a lock in the support code).

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use memgraph_address_injector::routing::bolt::{BoltAddress, ConnectOptions, Connection};
use memgraph_address_injector::routing::table::{Role, RoutingTable};
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
        "node timings: control plane ready {plane_in:.1?}; node start {:.1?} (Ready {node_in:.1?} \
         after the test began, including any wait for the node lock held by another node \
         test); pause pod Ready {pod_in:.1?} after create; teardown {teardown_in:.1?}",
        node.started_in
    );
    assert!(left.is_empty(), "the host is not restored: {left:#?}");
}

const RELEASE: &str = "memgraph-address-injector";
const NS: &str = "memgraph-address-injector";

/// The webhook's image archive from scripts/build-image (it skips the build when nothing
/// changed) and its tag.
fn webhook_image() -> (std::path::PathBuf, String) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // MAI_SKIP_IMAGE_BUILD=1: use the archive as it is (re-running a test while the sources
    // change under you; the release build takes minutes on 2 cores).
    if std::env::var_os("MAI_SKIP_IMAGE_BUILD").is_none_or(|v| v != "1") {
        let status = std::process::Command::new("bash")
            .arg(root.join("scripts/build-image"))
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run scripts/build-image");
        assert!(status.success(), "scripts/build-image failed");
    }
    let version = env!("CARGO_PKG_VERSION");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let archive = target
        .join("image")
        .join(format!("memgraph-address-injector-{version}.docker.tar"));
    assert!(archive.exists(), "{} is missing", archive.display());
    (archive, version.to_string())
}

async fn webhook_pods(client: &kube::Client) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let params =
        kube::api::ListParams::default().labels(&format!("app.kubernetes.io/instance={RELEASE}"));
    pods.list(&params).await.expect("webhook pods").items
}

fn injected(pod: &serde_json::Value) -> Option<String> {
    pod.pointer("/metadata/annotations")?
        .get(support::chart::ADDRESS)?
        .as_str()
        .map(str::to_string)
}

/// The chart installed by helm with the project's image: two replicas Ready under the
/// `restricted` Pod Security Standard, called by the API server through its Service
/// (ClusterIP, kube-proxy nftables) with the chart's generated certificate; a Memgraph pod
/// gets the node's address and NodePort; one replica deleted under admission load: no
/// admission fails; the serving certificate rotated through the Secret under load (the
/// kubelet's volume swap, both replicas serve the new one, no admission fails); the PDB
/// allows one eviction and refuses the next (429) while one replica is Ready, under load;
/// `helm upgrade` turns the routing reconciler on: one Lease holder, taken over by the other
/// replica when the leader is deleted; a coordinator and two data instances as the HA chart
/// renders them (StatefulSets with a privileged init container and a sidecar, the Bolt test
/// server playing each instance), registered under in-cluster names by the chart's
/// cluster-setup Job (never sent to the webhook), are corrected by the reconciler to the
/// node's address and NodePorts, and the neo4j driver on the host writes through that table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_runs_on_a_real_node() {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
    use support::chart::{create_pod_raw, external_service, memgraph_pod, namespace};

    let (archive, tag) = webhook_image();
    let dir = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let plane = ControlPlane::start_with(dir.path(), &control_plane_options());
    let mut node = Node::start(&plane, dir.path());
    node.import_image(&archive);
    let up_in = started.elapsed();
    let client = plane.client().await;
    // kube's default client retries 429, 503 and 504: a refused eviction or an admission
    // answered with one of those would be retried until it passes. Counted as sent here.
    let strict = {
        let kubeconfig =
            kube::config::Kubeconfig::read_from(&plane.kubeconfig).expect("kubeconfig");
        let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("client config");
        config.default_retry = false;
        kube::Client::try_from(config).expect("client")
    };

    // The release namespace enforces the `restricted` Pod Security Standard.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &from(json!({"metadata": {"name": NS, "labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest"
            }}})),
        )
        .await
        .expect("release namespace");
    // Enforced, not just labelled: a root pod is refused there.
    let (status, _, body) = create_pod_raw(
        &client,
        NS,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "root"},
                "spec": {"containers": [{"name": "c", "image": PAUSE_IMAGE}]}}),
        true,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.to_string().contains("restricted"), "{body}");

    // 1. helm install, waiting for both replicas.
    let install_start = Instant::now();
    let helm = support::helm::Helm::new(Some(&plane.kubeconfig));
    let chart = support::helm::chart_dir().display().to_string();
    let tag_value = format!("image.tag={tag}");
    let helm_out = tokio::task::block_in_place(|| {
        helm.run(&[
            "install",
            RELEASE,
            &chart,
            "-n",
            NS,
            "--set",
            &tag_value,
            // The short name the imported image resolves to (docker.io/library/...).
            "--set",
            "image.repository=memgraph-address-injector",
            "--set",
            "image.pullPolicy=Never",
            "--wait",
            "--timeout",
            "180s",
        ])
    });
    if !helm_out.status.success() {
        let pods = webhook_pods(&client).await;
        panic!(
            "helm install failed: {}\npods: {:#?}\n--- kubelet:\n{}",
            String::from_utf8_lossy(&helm_out.stderr),
            pods.iter().map(|p| &p.status).collect::<Vec<_>>(),
            node.log("kubelet")
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let install_in = install_start.elapsed();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let deployment = deployments.get(RELEASE).await.expect("the Deployment");
    let ready = deployment.status.and_then(|s| s.ready_replicas);
    assert_eq!(ready, Some(2), "both replicas Ready");
    let pods = webhook_pods(&client).await;
    assert_eq!(pods.len(), 2);
    for pod in &pods {
        assert!(is_ready(pod));
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(spec.node_name.as_deref(), Some(NODE_NAME));
        assert_eq!(
            spec.containers[0].image.as_deref(),
            Some(format!("memgraph-address-injector:{tag}").as_str())
        );
    }

    // The API server calls the webhook through its Service, trusting the chart's CA.
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let config = configs.get(RELEASE).await.expect("webhook configuration");
    let client_config = &config.webhooks.as_ref().expect("webhooks")[0].client_config;
    assert_eq!(client_config.url, None);
    let service_ref = client_config.service.as_ref().expect("a Service reference");
    assert_eq!(
        (service_ref.name.as_str(), service_ref.namespace.as_str()),
        (RELEASE, NS)
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let secret = secrets
        .get(&format!("{RELEASE}-tls"))
        .await
        .expect("the generated Secret");
    let ca = secret.data.expect("Secret data")["ca.crt"].0.clone();
    assert_eq!(
        client_config.ca_bundle.as_ref().map(|b| b.0.clone()),
        Some(ca)
    );
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    let cluster_ip = services
        .get(RELEASE)
        .await
        .expect("the webhook Service")
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("a ClusterIP");
    assert!(cluster_ip.starts_with("10.96."), "{cluster_ip}");

    // 2. A Memgraph pod gets the node's address and its Service's NodePort.
    let ns = "memgraph";
    namespace(&client, ns).await;
    let memgraph_services: Api<Service> = Api::namespaced(client.clone(), ns);
    let svc = memgraph_services
        .create(
            &PostParams::default(),
            &external_service("memgraph-data-0", "NodePort", &[7687]),
        )
        .await
        .expect("the NodePort Service");
    let node_port = svc.spec.and_then(|s| s.ports).expect("ports")[0]
        .node_port
        .expect("a NodePort");
    let want = format!("{NODE_IP}:{node_port}");
    let admitted_start = Instant::now();
    let admitted = wait_for(Duration::from_secs(60), "a mutated Memgraph pod", || {
        let client = client.clone();
        async move {
            let (status, _, pod) = create_pod_raw(
                &client,
                ns,
                &memgraph_pod("memgraph-data-0-0", json!({})),
                true,
            )
            .await;
            (status == 201).then(|| injected(&pod)).flatten()
        }
    })
    .await;
    assert_eq!(admitted, want);
    let first_admission_in = admitted_start.elapsed();

    // 3. One replica deleted under admission load: the other serves, nothing fails.
    let load = AdmissionLoad::start(&strict, ns, &want);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before_delete = load.admitted();
    let victim = pods[0].metadata.name.clone().expect("pod name");
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), NS);
    pod_api
        .delete(&victim, &Default::default())
        .await
        .expect("delete a webhook pod");
    let delete_start = Instant::now();
    // Until the deleted pod is gone and a replacement is Ready.
    wait_for(Duration::from_secs(90), "the replacement replica", || {
        let client = client.clone();
        let victim = victim.clone();
        async move {
            let pods = webhook_pods(&client).await;
            (pods.len() == 2
                && pods
                    .iter()
                    .all(|p| is_ready(p) && p.metadata.name.as_deref() != Some(victim.as_str())))
            .then_some(())
        }
    })
    .await;
    let replaced_in = delete_start.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (admitted, failed) = load.finish().await;
    println!(
        "chart on a real node: control plane + node up {up_in:.1?}, helm install --wait \
         (2 replicas Ready) {install_in:.1?}, first Memgraph pod admitted {first_admission_in:.1?} \
         later with {want}; one replica deleted under load: replaced in {replaced_in:.1?}, \
         {admitted} admissions ({before_delete} before the delete), {} failed",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} admissions failed while a replica was deleted; first: {:?}",
        failed.len(),
        admitted + failed.len(),
        failed.first()
    );
    assert!(
        admitted > before_delete,
        "admissions continued after the delete"
    );

    // 4. A Bolt server playing Memgraph (tests/bolt_server, python3 in an image) runs as the
    // Memgraph pod behind that NodePort; the official neo4j driver on the host connects to
    // the address the webhook injected.
    let bolt_start = Instant::now();
    node.import_image(&bolt_test_image());
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), ns);
    let cluster = json!({"instances": [{
        "name": "instance_0",
        "listen": "0.0.0.0:7687",
        "bolt_server": "@listen",
        "management_server": "memgraph-data-0.memgraph.svc.cluster.local:10000",
        "role": "main"
    }]});
    config_maps
        .create(
            &PostParams::default(),
            &from(json!({"metadata": {"name": "bolt-test"},
                         "data": {"cluster.json": cluster.to_string()}})),
        )
        .await
        .expect("the Bolt server's ConfigMap");
    let memgraph_pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod: Pod = from(json!({
        "metadata": {"name": "memgraph-data-0-0",
                     "labels": {"app": "memgraph-data-0", "role": "data"}},
        "spec": {
            "containers": [{
                "name": "memgraph-data",
                "image": BOLT_TEST_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["/usr/bin/python3", "/srv/memgraph_coordinator.py", "/config/cluster.json"],
                // The server reads commands on stdin and stops at its end: keep it open.
                "stdin": true,
                "ports": [{"containerPort": 7687}],
                "volumeMounts": [{"name": "config", "mountPath": "/config"}]
            }],
            "volumes": [{"name": "config", "configMap": {"name": "bolt-test"}}],
            "terminationGracePeriodSeconds": 1
        }
    }));
    let created = memgraph_pods
        .create(&PostParams::default(), &pod)
        .await
        .expect("the Memgraph-playing pod");
    let env_name = "MEMGRAPH_EXTERNAL_BOLT_ADDRESS";
    let address = created
        .spec
        .as_ref()
        .and_then(|s| s.containers[0].env.as_ref())
        .and_then(|env| env.iter().find(|e| e.name == env_name))
        .and_then(|e| e.value.clone())
        .expect("the injected address");
    assert_eq!(address, want);
    wait_for(Duration::from_secs(60), "the Bolt server pod Ready", || {
        let pods = memgraph_pods.clone();
        async move { pods.get("memgraph-data-0-0").await.ok().filter(is_ready) }
    })
    .await;
    let python = support::python();
    let probe =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bolt_server/driver_probe.py");
    let uri = format!("bolt://{address}");
    let reply = driver_until(&python, &probe, &uri, |r| r["ok"] == true)
        .await
        .unwrap_or_else(|last| panic!("the neo4j driver did not get through {uri}: {last}"));
    assert_eq!(reply["value"], 1, "{reply}");
    assert_eq!(reply["server"], address.as_str(), "{reply}");
    println!(
        "neo4j driver on the host -> {address} (injected) -> the Bolt server pod: {reply} \
         ({:.1?} with the image import)",
        bolt_start.elapsed()
    );

    // 5. The serving certificate rotated through the chart's Secret under admission load:
    // the kubelet swaps the Secret volume's `..data` link, each replica reloads, the API
    // server (trusting the old and the new CA during the swap) never fails an admission.
    // The chart's generated CA keeps no key, so the new pair comes from a new CA, added to
    // the caBundle first — the order a CA rotation takes.
    let certs = tempfile::tempdir().expect("tempdir");
    let files =
        memgraph_address_injector::certs::generate(RELEASE, NS, &[], certs.path(), false, 30)
            .expect("a new CA and serving certificate");
    let new_ca = std::fs::read(&files.ca).expect("new ca.crt");
    let new_cert = std::fs::read(&files.cert).expect("new tls.crt");
    let new_key = std::fs::read(&files.key).expect("new tls.key");
    let new_der = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(&new_cert)
            .expect("the new certificate")
            .to_vec()
    };
    let tls_secret = format!("{RELEASE}-tls");
    let secret = secrets.get(&tls_secret).await.expect("the TLS Secret");
    let old_ca = secret.data.as_ref().expect("Secret data")["ca.crt"]
        .0
        .clone();
    let pods_now = two_ready_replicas(&client, &[], "two Ready replicas before the rotation").await;
    for pod in &pods_now {
        let served = serving_certificate(&pod_ip(pod), &old_ca).await;
        assert!(
            served.is_ok_and(|der| der != new_der),
            "the old certificate is served first"
        );
    }
    let mut config = configs.get(RELEASE).await.expect("webhook configuration");
    let both = [old_ca.clone(), new_ca.clone()].concat();
    for webhook in config.webhooks.iter_mut().flatten() {
        webhook.client_config.ca_bundle = Some(k8s_openapi::ByteString(both.clone()));
    }
    configs
        .replace(RELEASE, &PostParams::default(), &config)
        .await
        .expect("caBundle with the old and the new CA");
    let load = AdmissionLoad::start(&strict, ns, &want);
    // The API server's webhook informer picks the bundle up; admissions under load meanwhile.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before_rotation = load.admitted();
    let mut secret = secret;
    let data = secret.data.as_mut().expect("Secret data");
    data.insert("ca.crt".into(), k8s_openapi::ByteString(new_ca.clone()));
    data.insert("tls.crt".into(), k8s_openapi::ByteString(new_cert.clone()));
    data.insert("tls.key".into(), k8s_openapi::ByteString(new_key.clone()));
    secrets
        .replace(&tls_secret, &PostParams::default(), &secret)
        .await
        .expect("the rotated Secret");
    let rotation_start = Instant::now();
    let rotated_at: Vec<Duration> = {
        let mut at = Vec::new();
        for pod in &pods_now {
            let ip = pod_ip(pod);
            let name = pod.metadata.name.clone().unwrap_or_default();
            wait_for(
                Duration::from_secs(70),
                &format!("{name} serving the new certificate"),
                || {
                    let (ip, new_ca, new_der) = (ip.clone(), new_ca.clone(), new_der.clone());
                    async move {
                        serving_certificate(&ip, &new_ca)
                            .await
                            .ok()
                            .filter(|der| *der == new_der)
                    }
                },
            )
            .await;
            at.push(rotation_start.elapsed());
        }
        at
    };
    let rotated_in = rotation_start.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (admitted, failed) = load.finish().await;
    println!(
        "chart on a real node: serving certificate rotated through the Secret: both replicas \
         serve the new one {:.1?} after the Secret update (each: {rotated_at:.1?}); \
         {admitted} admissions ({before_rotation} before the update), {} failed",
        rotated_in,
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} admissions failed during the rotation; first: {:?}",
        failed.len(),
        admitted + failed.len(),
        failed.first()
    );
    assert!(admitted > before_rotation, "admissions continued");
    // The old CA leaves the bundle: admissions now rest on the new certificate alone.
    let mut config = configs.get(RELEASE).await.expect("webhook configuration");
    for webhook in config.webhooks.iter_mut().flatten() {
        webhook.client_config.ca_bundle = Some(k8s_openapi::ByteString(new_ca.clone()));
    }
    configs
        .replace(RELEASE, &PostParams::default(), &config)
        .await
        .expect("caBundle with the new CA only");
    let only_new = wait_for(
        Duration::from_secs(30),
        "an admission trusting the new CA only",
        || {
            let client = client.clone();
            async move {
                let (status, _, pod) = create_pod_raw(
                    &client,
                    ns,
                    &memgraph_pod("memgraph-data-0-rotated", json!({})),
                    true,
                )
                .await;
                (status == 201).then(|| injected(&pod)).flatten()
            }
        },
    )
    .await;
    assert_eq!(only_new, want);

    // 6. The PodDisruptionBudget (minAvailable 1) under admission load: one eviction is
    // allowed; while only one replica is Ready the next is refused with 429.
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), NS);
    wait_for(
        Duration::from_secs(60),
        "the PDB allowing one disruption",
        || {
            let budgets = budgets.clone();
            async move {
                let pdb = budgets.get(RELEASE).await.ok()?;
                let status = pdb.status?;
                (status.disruptions_allowed == Some(1) && status.current_healthy == Some(2))
                    .then_some(())
            }
        },
    )
    .await;
    let pods_now = two_ready_replicas(&client, &[], "two Ready replicas before the eviction").await;
    let load = AdmissionLoad::start(&strict, ns, &want);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before_eviction = load.admitted();
    let first = pods_now[0].metadata.name.clone().expect("pod name");
    let second = pods_now[1].metadata.name.clone().expect("pod name");
    let evict_start = Instant::now();
    let evictions: Api<Pod> = Api::namespaced(strict.clone(), NS);
    evictions
        .evict(&first, &Default::default())
        .await
        .expect("the first eviction is allowed");
    let ready_now: Vec<String> = webhook_pods(&client)
        .await
        .into_iter()
        .filter(|p| is_ready(p) && !is_terminating(p))
        .filter_map(|p| p.metadata.name)
        .collect();
    assert_eq!(
        ready_now,
        vec![second.clone()],
        "only one replica Ready after the eviction"
    );
    match evictions.evict(&second, &Default::default()).await {
        Err(kube::Error::Api(status)) if status.code == 429 => {}
        other => panic!("the second eviction was not refused by the PDB: {other:?}"),
    }
    let refused_in = evict_start.elapsed();
    two_ready_replicas(
        &client,
        std::slice::from_ref(&first),
        "the evicted replica replaced",
    )
    .await;
    let evicted_replaced_in = evict_start.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (admitted, failed) = load.finish().await;
    println!(
        "chart on a real node: eviction of {first} allowed, of {second} refused (429) \
         {refused_in:.1?} later; replaced in {evicted_replaced_in:.1?}; {admitted} admissions \
         ({before_eviction} before the eviction), {} failed",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} admissions failed during the eviction; first: {:?}",
        failed.len(),
        admitted + failed.len(),
        failed.first()
    );
    assert!(admitted > before_eviction, "admissions continued");
    assert!(
        pod_api
            .get(&second)
            .await
            .is_ok_and(|p| !is_terminating(&p)),
        "the refused eviction left {second} running"
    );

    // 7. Before the fix: the chart's shapes on the node. A coordinator and two data
    // instances, each a StatefulSet as the chart renders one (privileged init container,
    // a sidecar, the `memgraph-secrets` env) whose pod runs the Bolt test server as that
    // instance; then the chart's cluster-setup Job (the Memgraph image, mgconsole's
    // stand-in) registers them under in-cluster names, as the real Job does for NodePort
    // tiers. Created while the reconciler is still off: the routing table an outside
    // client gets through the coordinator's NodePort names in-cluster addresses, and the
    // official neo4j driver on the host cannot write through it.
    let ha = "ha";
    namespace(&client, ha).await;
    let ha_services: Api<Service> = Api::namespaced(client.clone(), ha);
    let mut ports = std::collections::BTreeMap::new();
    let mut cluster_ips = std::collections::BTreeMap::new();
    for sts in [
        "memgraph-coordinator-1",
        "memgraph-data-0",
        "memgraph-data-1",
    ] {
        // The chart's in-cluster Service (ClusterIP), which the setup Job connects to.
        let internal_svc = ha_services
            .create(
                &PostParams::default(),
                &from(json!({"metadata": {"name": sts}, "spec": {
                    "selector": {"app": sts},
                    "ports": [{"name": "tcp-bolt-port", "port": 7687, "targetPort": 7687}]}})),
            )
            .await
            .expect("the internal Service");
        cluster_ips.insert(
            sts,
            internal_svc
                .spec
                .and_then(|s| s.cluster_ip)
                .expect("a ClusterIP"),
        );
        let svc = ha_services
            .create(
                &PostParams::default(),
                &external_service(sts, "NodePort", &[7687]),
            )
            .await
            .expect("the external Service");
        let port = svc.spec.and_then(|s| s.ports).expect("ports")[0]
            .node_port
            .expect("a NodePort");
        ports.insert(sts, port);
    }
    let internal = |sts: &str, port: u16| format!("{sts}.{ha}.svc.cluster.local:{port}");
    // Each pod plays its own instance on 7687. The coordinator starts with an empty table
    // (as Memgraph 3.x does) and learns every registration from the setup Job.
    let instance_config = |me: &str| match me {
        "coordinator_1" => json!({"ttl": 2, "version": "3.8.0", "instances": [
            {"name": "coordinator_1", "listen": "0.0.0.0:7687", "registered": false,
             "bolt_server": "", "management_server": "",
             "coordinator_server": internal("memgraph-coordinator-1", 12000),
             "role": "leader"}]}),
        data => json!({"version": "3.8.0", "instances": [
            {"name": data, "listen": "0.0.0.0:7687", "bolt_server": "@listen",
             "management_server": "", "role": "replica"}]}),
    };
    let ha_config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), ha);
    let ha_pods: Api<Pod> = Api::namespaced(client.clone(), ha);
    let ha_sets: Api<k8s_openapi::api::apps::v1::StatefulSet> = Api::namespaced(client.clone(), ha);
    // Pod -> the instance it plays and its role in the cluster view, for the demo's table.
    let ha_roles = [
        (
            "memgraph-coordinator-1-0",
            "coordinator_1 (coordinator, leader)",
        ),
        ("memgraph-data-0-0", "instance_0 (data, main)"),
        ("memgraph-data-1-0", "instance_1 (data, replica)"),
    ];
    let ha_start = Instant::now();
    for (sts, role, me, args) in [
        (
            "memgraph-coordinator-1",
            "coordinator",
            "coordinator_1",
            support::chart::coordinator_args(1, ha),
        ),
        (
            "memgraph-data-0",
            "data",
            "instance_0",
            support::chart::data_args(),
        ),
        (
            "memgraph-data-1",
            "data",
            "instance_1",
            support::chart::data_args(),
        ),
    ] {
        ha_config_maps
            .create(
                &PostParams::default(),
                &from(json!({"metadata": {"name": sts},
                             "data": {"cluster.json": instance_config(me).to_string()}})),
            )
            .await
            .expect("the Bolt server's ConfigMap");
        ha_sets
            .create(
                &PostParams::default(),
                &on_the_node(support::chart::chart_statefulset(
                    sts,
                    role,
                    BOLT_TEST_IMAGE,
                    &args,
                )),
            )
            .await
            .expect("a chart-shaped StatefulSet");
    }
    // The StatefulSet controller creates the pods; each is admitted with its NodePort.
    for (pod, sts) in [
        ("memgraph-coordinator-1-0", "memgraph-coordinator-1"),
        ("memgraph-data-0-0", "memgraph-data-0"),
        ("memgraph-data-1-0", "memgraph-data-1"),
    ] {
        let running = wait_for(
            Duration::from_secs(120),
            &format!("{pod} created by its StatefulSet and Ready"),
            || {
                let pods = ha_pods.clone();
                async move { pods.get(pod).await.ok().filter(is_ready) }
            },
        )
        .await;
        let owner = running
            .metadata
            .owner_references
            .as_ref()
            .and_then(|o| o.first())
            .map(|o| (o.kind.clone(), o.name.clone()));
        assert_eq!(owner, Some(("StatefulSet".to_string(), sts.to_string())));
        let value = serde_json::to_value(&running).expect("pod as JSON");
        assert_eq!(
            injected(&value),
            Some(format!("{NODE_IP}:{}", ports[sts])),
            "{pod}: the webhook's address"
        );
    }
    let setup_job = run_setup_job(
        &client,
        ha,
        &cluster_ips["memgraph-coordinator-1"],
        &[
            ("coordinator", "1", "memgraph-coordinator-1"),
            ("instance", "instance_0", "memgraph-data-0"),
            ("instance", "instance_1", "memgraph-data-1"),
        ],
        "instance_0",
    )
    .await;
    println!("chart on a real node: {setup_job}");
    let want_coordinator = format!("{NODE_IP}:{}", ports["memgraph-coordinator-1"]);
    let want_data = format!("{NODE_IP}:{}", ports["memgraph-data-0"]);
    let want_replica = format!("{NODE_IP}:{}", ports["memgraph-data-1"]);
    let seed = BoltAddress {
        host: NODE_IP.into(),
        port: u16::try_from(ports["memgraph-coordinator-1"]).expect("a port"),
    };
    let uri = format!("neo4j://{want_coordinator}");
    let before = wait_for(
        Duration::from_secs(120),
        "the coordinator answering ROUTE through its NodePort",
        || {
            let seed = seed.clone();
            async move { route_table(&seed).await }
        },
    )
    .await;
    let reachable_in = ha_start.elapsed();
    assert!(
        before
            .entries
            .iter()
            .any(|e| e.role == Role::Write && e.address == internal("memgraph-data-0", 7687)),
        "before the reconciler, the WRITE entry is the in-cluster registration: {before:?}"
    );
    let before_reply = driver_reply(&tokio::task::block_in_place(|| {
        driver_run(&python, &probe, &uri)
    }));
    assert!(
        before_reply["ok"] != true,
        "the driver wrote through in-cluster names: {before_reply}"
    );
    println!("demo: ===== BEFORE the fix (reconciler off; pods reachable {reachable_in:.1?} after creation)");
    demo_pods(&ha_pods, &ha_roles).await;
    demo_route(&seed, &before).await;
    println!("demo: neo4j driver on the host, seeded with {uri}, one write: {before_reply}");

    // 8. The routing reconciler on the node: `helm upgrade` turns it on; the two replicas
    // elect one writer on the Lease (holder = pod name, and exactly that replica reports
    // itself leader); the leader deleted, the other takes the Lease over.
    let before_upgrade: Vec<String> = webhook_pods(&client)
        .await
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    let upgrade_start = Instant::now();
    let helm_out = tokio::task::block_in_place(|| {
        helm.run(&[
            "upgrade",
            RELEASE,
            &chart,
            "-n",
            NS,
            "--reuse-values",
            "--set",
            "routing.reconcile.enabled=true",
            "--set",
            "routing.reconcile.namespaces={ha}",
            "--wait",
            "--timeout",
            "180s",
        ])
    });
    assert!(
        helm_out.status.success(),
        "helm upgrade failed: {}",
        String::from_utf8_lossy(&helm_out.stderr)
    );
    let upgraded = two_ready_replicas(&client, &before_upgrade, "the upgraded replicas").await;
    let upgrade_in = upgrade_start.elapsed();
    let names: Vec<String> = upgraded
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    for pod in &upgraded {
        let env = pod.spec.as_ref().expect("spec").containers[0]
            .env
            .clone()
            .unwrap_or_default();
        assert!(
            env.iter()
                .any(|e| e.name == "MAI_RECONCILE_ROUTING" && e.value.as_deref() == Some("true")),
            "the reconciler is on in {:?}",
            pod.metadata.name
        );
    }
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), NS);
    let holder = |leases: Api<k8s_openapi::api::coordination::v1::Lease>| async move {
        leases
            .get(ROUTING_LEASE)
            .await
            .ok()
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
    };
    let leader = wait_for(
        Duration::from_secs(60),
        "a replica holding the Lease",
        || {
            let (leases, names) = (leases.clone(), names.clone());
            async move { holder(leases).await.filter(|h| names.contains(h)) }
        },
    )
    .await;
    let elected_in = upgrade_start.elapsed();
    let ips: Vec<(String, String)> = upgraded
        .iter()
        .map(|p| (p.metadata.name.clone().unwrap_or_default(), pod_ip(p)))
        .collect();
    wait_for(
        Duration::from_secs(30),
        "exactly the Lease holder reporting itself leader",
        || {
            let (ips, leader) = (ips.clone(), leader.clone());
            async move {
                let mut leading = Vec::new();
                for (name, ip) in &ips {
                    match routing_leader(ip).await? {
                        1 => leading.push(name.clone()),
                        0 => {}
                        _ => return None,
                    }
                }
                (leading == [leader]).then_some(())
            }
        },
    )
    .await;
    let other = names
        .iter()
        .find(|n| **n != leader)
        .expect("the other replica")
        .clone();
    pod_api
        .delete(&leader, &Default::default())
        .await
        .expect("delete the leader");
    let takeover_start = Instant::now();
    // Whichever live replica renews first takes it: the survivor, or the replacement the
    // ReplicaSet started meanwhile (Ready in ~6 s, before the 15 s Lease runs out).
    let (new_leader, new_leader_ip) = wait_for(
        Duration::from_secs(60),
        "another live replica taking the Lease",
        || {
            let (client, leases, leader) = (client.clone(), leases.clone(), leader.clone());
            async move {
                let now = holder(leases).await.filter(|h| *h != leader)?;
                let pod = webhook_pods(&client).await.into_iter().find(|p| {
                    p.metadata.name.as_deref() == Some(now.as_str())
                        && is_ready(p)
                        && !is_terminating(p)
                })?;
                Some((now, pod_ip(&pod)))
            }
        },
    )
    .await;
    let takeover_in = takeover_start.elapsed();
    wait_for(
        Duration::from_secs(10),
        "the new leader reporting itself leader",
        || {
            let ip = new_leader_ip.clone();
            async move { (routing_leader(&ip).await? == 1).then_some(()) }
        },
    )
    .await;
    let which = if new_leader == other {
        "the surviving replica"
    } else {
        "the leader's replacement"
    };
    println!(
        "chart on a real node: helm upgrade --wait with routing.reconcile.enabled=true \
         {upgrade_in:.1?} (replicas replaced), Lease held by {leader} {elected_in:.1?} after the \
         upgrade began; leader deleted, {new_leader} ({which}) holds the Lease {takeover_in:.1?} \
         later"
    );
    assert!(
        takeover_in < Duration::from_secs(30),
        "takeover took {takeover_in:?}"
    );

    // 9. The fix: the leader replica rewrites the registrations to `<node IP>:<NodePort>`,
    // and the driver on the host, seeded with the coordinator's NodePort, writes through the
    // corrected table.
    let mut last = std::collections::BTreeMap::new();
    let mut corrected = false;
    for _ in 0..300 {
        if let Some(now) = show_instances(&seed).await {
            corrected = now.get("coordinator_1") == Some(&want_coordinator)
                && now.get("instance_0") == Some(&want_data)
                && now.get("instance_1") == Some(&want_replica);
            last = now;
            if corrected {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        corrected,
        "the reconciler did not correct the registrations (want {want_coordinator} and \
         {want_data}): {last:?}; pods: {:?}",
        ha_pods.list(&Default::default()).await.map(|l| l
            .items
            .into_iter()
            .map(|p| (p.metadata.name, p.status.map(|s| s.container_statuses)))
            .collect::<Vec<_>>())
    );
    let corrected_in = upgrade_start.elapsed();
    let reply = driver_until(&python, &probe, &uri, |r| r["ok"] == true)
        .await
        .unwrap_or_else(|last| panic!("the neo4j driver did not write through {uri}: {last}"));
    assert_eq!(reply["server"], want_data.as_str(), "{reply}");
    let after = route_table(&seed)
        .await
        .expect("the coordinator answering ROUTE after the fix");
    println!("demo: ===== AFTER the fix (helm upgrade --set routing.reconcile.enabled=true; corrected {corrected_in:.1?} after the upgrade began)");
    demo_pods(&ha_pods, &ha_roles).await;
    demo_route(&seed, &after).await;
    println!("demo: neo4j driver on the host, seeded with {uri}, one write: {reply}");
    println!(
        "chart on a real node: reconciler corrected the registrations to {want_coordinator} \
         (coordinator_1), {want_data} (instance_0) and {want_replica} (instance_1) \
         {corrected_in:.1?} after helm upgrade began; neo4j driver on the host via {uri} wrote through the table: {reply}"
    );

    // A NodePort changed in the running cluster: the reconciler moves the registration, and
    // the driver on the host follows it after its routing table's ttl.
    // Every nodePort in use on the cluster (the allocator hands out the top of the range too).
    let used: Vec<i32> = Api::<Service>::all(client.clone())
        .list(&Default::default())
        .await
        .expect("all Services")
        .items
        .iter()
        .filter_map(|s| s.spec.as_ref()?.ports.as_ref())
        .flatten()
        .filter_map(|p| p.node_port)
        .collect();
    let moved = (30000..=32767)
        .rev()
        .find(|p| !used.contains(p))
        .expect("a free nodePort");
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "replace", "path": "/spec/ports/0/nodePort", "value": moved}
    ]))
    .expect("a JSON patch");
    let changed = Instant::now();
    ha_services
        .patch(
            "memgraph-data-0-external",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Json::<()>(patch),
        )
        .await
        .expect("the NodePort changed");
    let want_moved = format!("{NODE_IP}:{moved}");
    let mut followed = false;
    for _ in 0..300 {
        if let Some(now) = show_instances(&seed).await {
            if now.get("instance_0") == Some(&want_moved) {
                followed = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        followed,
        "instance_0 was not moved to the new NodePort {want_moved}"
    );
    let moved_in = changed.elapsed();
    let reply = driver_until(&python, &probe, &uri, |r| {
        r["ok"] == true && r["server"] == want_moved.as_str()
    })
    .await
    .unwrap_or_else(|last| panic!("the driver did not write through {want_moved}: {last}"));
    // One driver across the routing table's ttl (2 s): a write, then after the ttl a read and
    // a write, each after the refresh, through the external addresses.
    let session = tokio::task::block_in_place(|| {
        driver_session(
            &python,
            &probe,
            &uri,
            &["write", "read", "write"],
            TTL_PAUSE,
        )
    });
    let replies: Vec<serde_json::Value> = session
        .lines()
        .skip(1)
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(replies.len(), 3, "{session}");
    assert!(replies.iter().all(|r| r["ok"] == true), "{session}");
    assert_eq!(
        replies[1]["server"],
        want_replica.as_str(),
        "the read: {session}"
    );
    assert_eq!(
        replies[2]["server"],
        want_moved.as_str(),
        "the write: {session}"
    );
    println!(
        "chart on a real node: a NodePort change ({} -> {moved}) corrected in {moved_in:.1?}; the driver writes through it: {reply}",
        ports["memgraph-data-0"]
    );

    let teardown_start = Instant::now();
    let left = node.teardown();
    println!(
        "chart on a real node: teardown {:.1?}, whole test {:.1?}",
        teardown_start.elapsed(),
        started.elapsed()
    );
    assert!(left.is_empty(), "the host is not restored: {left:#?}");
}

/// A chart-shaped StatefulSet (support::chart) made runnable on the test node without
/// changing its shape: the Memgraph container runs the Bolt test server with the chart's
/// flags as its args (the server ignores them; the webhook and the reconciler read them),
/// the privileged `init-sysctl` init container a no-op (the host's sysctls stay as they
/// are), the log-shipping sidecar the pause image. Nothing is pulled.
fn on_the_node(
    set: k8s_openapi::api::apps::v1::StatefulSet,
) -> k8s_openapi::api::apps::v1::StatefulSet {
    let name = set.metadata.name.clone().expect("a StatefulSet name");
    let mut set = serde_json::to_value(set).expect("StatefulSet as JSON");
    let spec = set
        .pointer_mut("/spec/template/spec")
        .expect("a pod template");
    let init = &mut spec["initContainers"][0];
    init["image"] = json!(BOLT_TEST_IMAGE);
    init["command"] = json!(["/usr/bin/python3", "-c", "pass"]);
    let memgraph = &mut spec["containers"][0];
    memgraph["command"] = json!([
        "/usr/bin/python3",
        "/srv/memgraph_coordinator.py",
        "/config/cluster.json"
    ]);
    // The server reads commands on stdin and stops at its end: keep it open.
    memgraph["stdin"] = json!(true);
    memgraph["volumeMounts"] = json!([{"name": "config", "mountPath": "/config"}]);
    let sidecar = &mut spec["containers"][1];
    sidecar["image"] = json!(PAUSE_IMAGE);
    sidecar.as_object_mut().expect("sidecar").remove("args");
    for list in ["initContainers", "containers"] {
        for container in spec[list].as_array_mut().into_iter().flatten() {
            container["imagePullPolicy"] = json!("Never");
        }
    }
    spec["volumes"] = json!([{"name": "config", "configMap": {"name": name}}]);
    spec["terminationGracePeriodSeconds"] = json!(1);
    from(set)
}

/// The chart's post-install cluster-setup Job (support::chart) on the test node: the
/// Memgraph image (here the Bolt test image, with bolt_console.py standing in for
/// mgconsole) registering every instance under its in-cluster name on the coordinator at
/// `coordinator_ip` (its ClusterIP: the test node has no cluster DNS), then setting `main`.
/// Waits for it to succeed and checks the webhook never touched its pod (the CEL sends only
/// HA instances). Returns one line for the log.
async fn run_setup_job(
    client: &kube::Client,
    ns: &str,
    coordinator_ip: &str,
    instances: &[(&str, &str, &str)],
    main: &str,
) -> String {
    use k8s_openapi::api::batch::v1::Job;
    let internal = |sts: &str, port: u16| format!("{sts}.{ns}.svc.cluster.local:{port}");
    let mut queries: Vec<String> = instances
        .iter()
        .map(|(kind, id, sts)| match *kind {
            "coordinator" => format!(
                "ADD COORDINATOR {id} WITH CONFIG {{\"bolt_server\": \"{}\", \
                 \"management_server\": \"{}\", \"coordinator_server\": \"{}\"}};",
                internal(sts, 7687),
                internal(sts, 10000),
                internal(sts, 12000)
            ),
            _ => format!(
                "REGISTER INSTANCE {id} WITH CONFIG {{\"bolt_server\": \"{}\", \
                 \"management_server\": \"{}\", \"replication_server\": \"{}\"}};",
                internal(sts, 7687),
                internal(sts, 10000),
                internal(sts, 20000)
            ),
        })
        .collect();
    queries.push(format!("SET INSTANCE {main} TO MAIN;"));
    let mut job = support::chart::chart_setup_job(BOLT_TEST_IMAGE, ns);
    let container = &mut job["spec"]["template"]["spec"]["containers"][0];
    let mut args = vec![
        "/srv/bolt_console.py".to_string(),
        coordinator_ip.to_string(),
        "7687".into(),
    ];
    args.extend(queries);
    container["command"] = json!(["/usr/bin/python3"]);
    container["args"] = json!(args);
    container["imagePullPolicy"] = json!("Never");
    // On failure its output (bolt_console's `error ...` line) is in the container status.
    container["terminationMessagePolicy"] = json!("FallbackToLogsOnError");
    let started = Instant::now();
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    jobs.create(&PostParams::default(), &from(job))
        .await
        .expect("the cluster-setup Job");
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let status = wait_for(
        Duration::from_secs(120),
        "the cluster-setup Job to finish",
        || {
            let jobs = jobs.clone();
            async move {
                let status = jobs.get("cluster-setup").await.ok()?.status?;
                (status.succeeded.unwrap_or(0) + status.failed.unwrap_or(0) > 0).then_some(status)
            }
        },
    )
    .await;
    let params = kube::api::ListParams::default().labels("job-name=cluster-setup");
    let job_pods = pods.list(&params).await.expect("the Job's pods").items;
    assert_eq!(
        status.succeeded,
        Some(1),
        "the cluster-setup Job failed: {status:?}; its pods: {:?}",
        job_pods
            .iter()
            .map(|p| p.status.as_ref().map(|s| &s.container_statuses))
            .collect::<Vec<_>>()
    );
    assert_eq!(job_pods.len(), 1, "one pod for the Job");
    let pod = serde_json::to_value(&job_pods[0]).expect("pod as JSON");
    assert_eq!(
        injected(&pod),
        None,
        "the webhook mutated the setup Job's pod"
    );
    let env = pod
        .pointer("/spec/containers/0/env")
        .cloned()
        .unwrap_or_default();
    assert!(
        !env.to_string().contains("MEMGRAPH_EXTERNAL_BOLT_ADDRESS"),
        "the setup Job's pod got an address: {env}"
    );
    format!(
        "the chart's cluster-setup Job (the Memgraph image, never sent to the webhook) \
         registered {} instances under in-cluster names in {:.1?}",
        instances.len(),
        started.elapsed()
    )
}

/// The routing table an outside client gets: ROUTE through `seed` (the coordinator's
/// NodePort), as `memgraph-address-injector routing check` asks it.
async fn route_table(seed: &BoltAddress) -> Option<RoutingTable> {
    let options = ConnectOptions {
        timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let mut conn = Connection::connect(seed, &options).await.ok()?;
    let rt = conn.route().await.ok()?;
    conn.close().await;
    RoutingTable::from_rt(&rt).ok()
}

/// The probe's reply line (after its version line), or the whole output as an error.
fn driver_reply(out: &str) -> serde_json::Value {
    out.lines()
        .nth(1)
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .unwrap_or_else(|| json!({"ok": false, "error": out}))
}

/// `demo:` lines: each HA pod, the instance it plays, and what the webhook injected.
async fn demo_pods(pods: &Api<Pod>, roles: &[(&str, &str)]) {
    let list = pods.list(&Default::default()).await.expect("the HA pods");
    println!(
        "demo: {:<26} {:<36} {:<34} ANNOTATION {}",
        "POD",
        "PLAYS",
        format!(
            "ENV {}",
            memgraph_address_injector::decision::DEFAULT_ENV_NAME
        ),
        support::chart::ADDRESS
    );
    for pod in &list.items {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let setup_job = pod
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key("job-name"));
        let plays = roles.iter().find(|(n, _)| *n == name).map_or(
            if setup_job {
                "the chart's setup Job"
            } else {
                "?"
            },
            |(_, r)| r,
        );
        let env = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .and_then(|c| c.env.as_ref())
            .and_then(|e| {
                e.iter()
                    .find(|e| e.name == memgraph_address_injector::decision::DEFAULT_ENV_NAME)
            })
            .and_then(|e| e.value.clone())
            .unwrap_or_else(|| "-".into());
        let annotation = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(support::chart::ADDRESS))
            .cloned()
            .unwrap_or_else(|| "-".into());
        println!("demo: {name:<26} {plays:<36} {env:<34} {annotation}");
    }
}

/// `demo:` lines: the ROUTE reply an outside client gets through `seed`, and whether each
/// address works from outside (an in-cluster name does not resolve there; others are tried).
async fn demo_route(seed: &BoltAddress, table: &RoutingTable) {
    println!(
        "demo: routing table from ROUTE via {}:{} (ttl {}s), as the outside client sees it:",
        seed.host, seed.port, table.ttl
    );
    println!("demo: {:<6} {:<48} FROM OUTSIDE", "ROLE", "ADDRESS");
    for entry in &table.entries {
        let host = entry
            .address
            .rsplit_once(':')
            .map_or(entry.address.as_str(), |(h, _)| h);
        let outside = if host.ends_with(".cluster.local") || host.ends_with(".svc") {
            "no: an in-cluster name, it does not resolve outside".to_string()
        } else {
            match tokio::time::timeout(
                Duration::from_secs(2),
                tokio::net::TcpStream::connect(entry.address.as_str()),
            )
            .await
            {
                Ok(Ok(_)) => "yes: connects".to_string(),
                Ok(Err(e)) => format!("no: {e}"),
                Err(_) => "no: no answer in 2s".to_string(),
            }
        };
        println!(
            "demo: {:<6} {:<48} {outside}",
            entry.role.to_string(),
            entry.address
        );
    }
}

const BOLT_TEST_IMAGE: &str = "localhost/memgraph-bolt-test:3.8.0";

/// scripts/build-bolt-test-image: the host's python3 and tests/bolt_server in an image.
fn bolt_test_image() -> std::path::PathBuf {
    support::built_by("build-bolt-test-image")
}

/// `driver_run` until its reply passes `accept`, up to 30 tries 1 s apart (the path through
/// kube-proxy and a new pod settles within seconds): the reply, or the last output.
async fn driver_until(
    python: &std::path::Path,
    probe: &std::path::Path,
    uri: &str,
    accept: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value, String> {
    let mut last = String::new();
    for _ in 0..30 {
        let out = tokio::task::block_in_place(|| driver_run(python, probe, uri));
        match out
            .lines()
            .nth(1)
            .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        {
            Some(r) if accept(&r) => return Ok(r),
            _ => last = out,
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(last)
}

/// One `write` through tests/bolt_server/driver_probe.py (the official neo4j driver); its
/// stdout (a version line, then the reply line) and stderr.
fn driver_run(python: &std::path::Path, probe: &std::path::Path, uri: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new(python)
        .arg(probe)
        .arg(uri)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect(
            "run the neo4j driver probe (python with the neo4j package: MAI_TEST_PYTHON or .venv)",
        );
    let _ = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"write\nquit\n");
    let out = child.wait_with_output().expect("driver probe");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Past the Bolt test server's routing ttl (2 s), so the driver refreshes between commands.
const TTL_PAUSE: Duration = Duration::from_millis(2700);

/// One driver (one routing table, refreshed after the ttl) running `commands` with `pause`
/// between them; its output lines.
fn driver_session(
    python: &std::path::Path,
    probe: &std::path::Path,
    uri: &str,
    commands: &[&str],
    pause: Duration,
) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new(python)
        .arg(probe)
        .arg(uri)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the neo4j driver probe");
    let mut stdin = child.stdin.take().expect("stdin");
    for (i, command) in commands.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(pause);
        }
        let _ = writeln!(stdin, "{command}");
        let _ = stdin.flush();
    }
    let _ = writeln!(stdin, "quit");
    drop(stdin);
    let out = child.wait_with_output().expect("driver probe");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Dry-run Memgraph pod creates from 4 concurrent workers until `finish`: each must be
/// admitted (201) with `want` injected; anything else is a failed admission.
struct AdmissionLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ok: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    failures: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl AdmissionLoad {
    fn start(client: &kube::Client, ns: &str, want: &str) -> AdmissionLoad {
        use std::sync::atomic::Ordering;
        let load = AdmissionLoad {
            stop: Default::default(),
            ok: Default::default(),
            failures: Default::default(),
            workers: Vec::new(),
        };
        let workers = (0..4)
            .map(|worker| {
                let (client, stop, ok, failures) = (
                    client.clone(),
                    load.stop.clone(),
                    load.ok.clone(),
                    load.failures.clone(),
                );
                let (ns, want) = (ns.to_string(), want.to_string());
                tokio::spawn(async move {
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let name = format!("memgraph-data-0-{worker}-{i}");
                        let (status, _, pod) = support::chart::create_pod_raw(
                            &client,
                            &ns,
                            &support::chart::memgraph_pod(&name, json!({})),
                            true,
                        )
                        .await;
                        match injected(&pod) {
                            Some(address) if status == 201 && address == want => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => failures
                                .lock()
                                .expect("failures")
                                .push(format!("{status}: {pod}")),
                        }
                    }
                })
            })
            .collect();
        AdmissionLoad { workers, ..load }
    }

    fn admitted(&self) -> usize {
        self.ok.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops the workers; the admitted count and the failures.
    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for worker in self.workers {
            worker.await.expect("load worker");
        }
        let failed = self.failures.lock().expect("failures").clone();
        (self.ok.load(std::sync::atomic::Ordering::Relaxed), failed)
    }
}

/// The serving certificate a webhook pod presents at `ip`:8443, if it verifies against
/// `ca_pem` for the Service's name (the name the API server checks).
async fn serving_certificate(ip: &str, ca_pem: &[u8]) -> Result<Vec<u8>, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from(format!("{RELEASE}.{NS}.svc"))
        .map_err(|e| e.to_string())?;
    let handshake = async {
        let tcp = tokio::net::TcpStream::connect((ip, 8443))
            .await
            .map_err(|e| e.to_string())?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (_, session) = tls.get_ref();
        session
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .ok_or_else(|| "no peer certificate".to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), handshake)
        .await
        .map_err(|_| "handshake timed out".to_string())?
}

fn pod_ip(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("a pod IP")
}

fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// Waits until the release runs exactly two Ready pods, none of them in `gone`.
async fn two_ready_replicas(client: &kube::Client, gone: &[String], what: &str) -> Vec<Pod> {
    wait_for(Duration::from_secs(90), what, || {
        let client = client.clone();
        async move {
            let pods = webhook_pods(&client).await;
            (pods.len() == 2
                && pods.iter().all(|p| {
                    is_ready(p)
                        && !is_terminating(p)
                        && !gone.iter().any(|g| p.metadata.name.as_deref() == Some(g))
                }))
            .then_some(pods)
        }
    })
    .await
}

/// The reconciler's Lease (the binary's default name).
const ROUTING_LEASE: &str = "memgraph-address-injector-routing";

/// `memgraph_address_injector_routing_leader` of the replica at `ip` (its health port).
async fn routing_leader(ip: &str) -> Option<u8> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?;
    let text = client
        .get(format!("http://{ip}:8080/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("memgraph_address_injector_routing_leader "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u8)
}

/// The registrations (name -> bolt_server) that the coordinator at `seed` reports.
async fn show_instances(seed: &BoltAddress) -> Option<std::collections::BTreeMap<String, String>> {
    let options = ConnectOptions {
        timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let mut conn = Connection::connect(seed, &options).await.ok()?;
    let result = conn.run("SHOW INSTANCES").await.ok()?;
    conn.close().await;
    let name = result.fields.iter().position(|f| f == "name")?;
    let bolt = result.fields.iter().position(|f| f == "bolt_server")?;
    result
        .records
        .iter()
        .map(|r| Some((r[name].as_str()?.to_string(), r[bolt].as_str()?.to_string())))
        .collect()
}
