//! The routing reconciler against a real control plane (etcd, kube-apiserver,
//! kube-controller-manager) and the Bolt test server acting as a Memgraph 3.8 HA cluster.
//! Pods are created by chart-shaped StatefulSets; with no kubelet here, the test plays the
//! kubelet and sets each pod's IP and readiness. Each pod IP is a loopback address on which
//! the test server listens as that instance, on the chart's Bolt port 7687 — the reconciler
//! reaches every coordinator by its in-cluster address only.
//!
//! `changes_are_corrected` walks the scenarios of the issue, each timed from the change to a
//! verified table; `correction_latency` (ignored; run by `scripts/bench`) repeats a change
//! 50+ times and prints p50/p99.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Event, Node, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use memgraph_address_injector::routing::bolt::{
    BoltAddress, ConnectOptions, Connection, Credentials,
};
use serde_json::{json, Value};
use support::chart::*;
use support::control_plane::ControlPlane;
use support::*;

const NS: &str = "rc";
/// Both tests listen on the same loopback addresses: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const LEASE_NS: &str = "mai-system";
const USER: &str = "admin";
const PASSWORD: &str = "s3cret";

/// The five instances of the chart: (StatefulSet, role, pod IP, Bolt test server name).
const INSTANCES: [(&str, &str, &str, &str); 5] = [
    (
        "memgraph-coordinator-1",
        "coordinator",
        "127.0.10.11",
        "coordinator_1",
    ),
    (
        "memgraph-coordinator-2",
        "coordinator",
        "127.0.10.12",
        "coordinator_2",
    ),
    (
        "memgraph-coordinator-3",
        "coordinator",
        "127.0.10.13",
        "coordinator_3",
    ),
    ("memgraph-data-0", "data", "127.0.10.20", "instance_0"),
    ("memgraph-data-1", "data", "127.0.10.21", "instance_1"),
];

struct TestServer {
    process: LineProcess,
    journal: std::path::PathBuf,
}

impl TestServer {
    fn start(
        dir: &std::path::Path,
        instances: &[(&str, &str, &str, &str)],
        tls: Option<Value>,
    ) -> Self {
        let journal = dir.join("journal.jsonl");
        let table: Vec<Value> = instances
            .iter()
            .enumerate()
            .map(|(i, (sts, role, ip, name))| {
                let internal = |port: u16| format!("{sts}.{NS}.svc.cluster.local:{port}");
                let mut entry = json!({"name": name, "listen": format!("{ip}:7687"),
                    "bolt_server": internal(7687), "management_server": internal(10000)});
                if *role == "coordinator" {
                    entry["coordinator_server"] = json!(internal(12000));
                    entry["role"] = json!(if i == 0 { "leader" } else { "follower" });
                } else {
                    entry["role"] = json!(if *name == "instance_0" {
                        "main"
                    } else {
                        "replica"
                    });
                }
                entry
            })
            .collect();
        let config = dir.join("cluster.json");
        std::fs::write(
            &config,
            json!({"ttl": 2, "version": "3.8.0", "instances": table, "journal": journal,
                   "auth": {"user": USER, "password": PASSWORD}, "tls": tls})
            .to_string(),
        )
        .unwrap();
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/bolt_server/memgraph_coordinator.py");
        let process = LineProcess::spawn(
            "the Bolt test server",
            std::process::Command::new("python3")
                .arg(&script)
                .arg(&config),
        );
        let first = process.line();
        assert!(first.contains("listening"), "{first}");
        Self { process, journal }
    }

    fn command(&mut self, line: &str) -> String {
        let reply = self.process.ask(line);
        assert!(reply.starts_with("ok"), "{line}: {reply}");
        reply
    }

    /// UPDATE CONFIG statements the server accepted, in order: a statement a follower
    /// refused (its RUN followed by a FAILURE entry) is not a write.
    fn updates(&self) -> Vec<String> {
        let mut accepted: Vec<(String, String)> = Vec::new();
        for entry in std::fs::read_to_string(&self.journal)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        {
            let (Some(instance), Some(message), Some(query)) = (
                entry["instance"].as_str(),
                entry["message"].as_str(),
                entry["query"].as_str(),
            ) else {
                continue;
            };
            if !query.starts_with("UPDATE CONFIG") {
                continue;
            }
            match message {
                "RUN" => accepted.push((instance.into(), query.into())),
                "FAILURE" => {
                    if let Some(at) = accepted
                        .iter()
                        .rposition(|(i, q)| i == instance && q == query)
                    {
                        accepted.remove(at);
                    }
                }
                _ => {}
            }
        }
        accepted.into_iter().map(|(_, query)| query).collect()
    }
}

/// `SHOW INSTANCES` as an operator would read it: name → bolt_server.
async fn registered() -> BTreeMap<String, String> {
    registered_over(memgraph_address_injector::routing::bolt::Transport::Plain).await
}

async fn registered_over(
    transport: memgraph_address_injector::routing::bolt::Transport,
) -> BTreeMap<String, String> {
    let options = ConnectOptions {
        credentials: Some(Credentials {
            user: USER.into(),
            password: PASSWORD.into(),
        }),
        transport,
        ..Default::default()
    };
    for (_, _, ip, _) in INSTANCES.iter().take(3) {
        let address = BoltAddress {
            host: ip.to_string(),
            port: 7687,
        };
        let Ok(mut conn) = Connection::connect(&address, &options).await else {
            continue;
        };
        let result = conn.run("SHOW INSTANCES").await.expect("SHOW INSTANCES");
        conn.close().await;
        let name = result.fields.iter().position(|f| f == "name").unwrap();
        let bolt = result
            .fields
            .iter()
            .position(|f| f == "bolt_server")
            .unwrap();
        return result
            .records
            .iter()
            .map(|r| {
                (
                    r[name].as_str().unwrap().to_string(),
                    r[bolt].as_str().unwrap().to_string(),
                )
            })
            .collect();
    }
    panic!("no coordinator of the test server answers");
}

/// Waits until `check` holds for the registrations; returns the time it took.
async fn until(what: &str, check: impl Fn(&BTreeMap<String, String>) -> bool) -> Duration {
    let started = Instant::now();
    loop {
        let now = registered().await;
        if check(&now) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}; SHOW INSTANCES: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn node_port(client: &Client, service: &str) -> i32 {
    let api: Api<Service> = Api::namespaced(client.clone(), NS);
    api.get(service).await.unwrap().spec.unwrap().ports.unwrap()[0]
        .node_port
        .expect("nodePort")
}

async fn set_node_ready(client: &Client, name: &str, ready: bool) {
    let api: Api<Node> = Api::all(client.clone());
    let status = json!({"status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" },
        "reason": "e2e", "message": "e2e", "lastHeartbeatTime": "2026-01-01T00:00:00Z",
        "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

/// Plays the kubelet: the pod runs, is Ready, and has `ip`.
async fn pod_running(client: &Client, pod: &str, ip: &str) {
    pod_running_in(client, NS, pod, ip).await
}

async fn pod_running_in(client: &Client, ns: &str, pod: &str, ip: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    wait_for(Duration::from_secs(60), &format!("pod {pod}"), || async {
        pods.get_opt(pod).await.ok().flatten()
    })
    .await;
    let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True"}]}});
    pods.patch_status(pod, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

/// Our Events on a pod with `reason`, their messages.
async fn events_on(client: &Client, pod: &str, reason: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), NS);
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.involved_object.kind.as_deref() == Some("Pod")
                && e.involved_object.name.as_deref() == Some(pod)
        })
        .filter_map(|e| e.message)
        .collect()
}

async fn wait_event(client: &Client, pod: &str, reason: &str, needle: &str) -> String {
    wait_for(
        Duration::from_secs(60),
        &format!("a {reason} Event on {pod} containing {needle:?}"),
        || async {
            events_on(client, pod, reason)
                .await
                .into_iter()
                .find(|m| m.contains(needle))
        },
    )
    .await
}

/// The official neo4j driver (PyPI `neo4j`) as the client outside the cluster, through
/// tests/bolt_server/driver_probe.py: one driver, so its routing table and its refresh after
/// the ttl behave as in an application.
struct Driver {
    process: LineProcess,
}

const TTL: Duration = Duration::from_secs(2);

impl Driver {
    fn start(seed: &str) -> Self {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/bolt_server/driver_probe.py");
        let process = LineProcess::spawn(
            "the neo4j driver probe",
            std::process::Command::new(python())
                .arg(script)
                .arg(format!("neo4j://{seed}"))
                .args(["--user", USER, "--password", PASSWORD]),
        );
        let hello = process.line();
        assert!(hello.contains("driver"), "{hello}");
        Self { process }
    }

    /// Runs `write` or `read`; returns the server that answered. Fails the test on an error.
    fn run(&mut self, command: &str) -> String {
        let reply: Value = serde_json::from_str(&self.process.ask(command)).unwrap();
        assert_eq!(reply["ok"], true, "the driver's {command}: {reply}");
        reply["server"].as_str().unwrap_or_default().to_string()
    }

    /// After the ttl, so that the driver refreshes its routing table first.
    async fn after_ttl(&mut self) -> (String, String) {
        tokio::time::sleep(TTL + Duration::from_millis(700)).await;
        (self.run("write"), self.run("read"))
    }
}

struct Cluster {
    _dir: tempfile::TempDir,
    plane: ControlPlane,
    client: Client,
    server: TestServer,
    password_file: std::path::PathBuf,
    /// The admission webhook that stamps the reconciler's label on the pods it admits.
    _admission: Webhook,
}

/// The control plane, three Nodes, the chart's cluster in `rc` (coordinators and data-0
/// behind NodePorts, data-1 behind a LoadBalancer still pending) and the test server.
async fn cluster() -> Cluster {
    cluster_with(None).await
}

async fn cluster_with(tls: Option<Value>) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let plane = ControlPlane::start(dir.path());
    let client = plane.client().await;
    namespace(&client, NS).await;
    namespace(&client, LEASE_NS).await;
    node(
        &client,
        "node-a",
        &[("InternalIP", "10.0.0.10"), ("ExternalIP", "127.0.11.1")],
    )
    .await;
    node(
        &client,
        "node-b",
        &[("InternalIP", "10.0.0.11"), ("ExternalIP", "127.0.11.2")],
    )
    .await;
    node(
        &client,
        "node-c",
        &[("InternalIP", "10.0.0.12"), ("ExternalIP", "127.0.11.3")],
    )
    .await;
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), NS);
    let admission = start_admission(dir.path(), &plane).await;
    // data-0 is created before the webhook is registered, as a cluster installed before us
    // is: its pod carries no label and is found by the reconciler's one full list.
    let mut order = INSTANCES.to_vec();
    order.rotate_left(3);
    for (i, (sts, role, _, _)) in order.into_iter().enumerate() {
        if i == 1 {
            register_webhook(&client, &admission).await;
        }
        // The chart's internal Service, whose name the registrations use.
        let internal: Service = from(
            json!({"metadata": {"name": sts}, "spec": {"clusterIP": "None",
            "selector": {"app": sts}, "ports": [{"name": "tcp-bolt-port", "port": 7687, "targetPort": 7687}]}}),
        );
        services
            .create(&PostParams::default(), &internal)
            .await
            .unwrap();
        let type_ = if sts == "memgraph-data-1" {
            "LoadBalancer"
        } else {
            "NodePort"
        };
        services
            .create(
                &PostParams::default(),
                &external_service(sts, type_, &[7687]),
            )
            .await
            .unwrap();
        create_instance(&sets, sts, role).await;
    }
    running(dir, plane, client, admission, tls).await
}

/// The chart's StatefulSet of one instance (Memgraph 3.8).
async fn create_instance(sets: &Api<StatefulSet>, sts: &str, role: &str) {
    let args = if role == "coordinator" {
        coordinator_args(sts.rsplit('-').next().unwrap().parse().unwrap(), NS)
    } else {
        data_args()
    };
    sets.create(
        &PostParams::default(),
        &chart_statefulset(sts, role, "memgraph/memgraph:3.8.0", &args),
    )
    .await
    .unwrap();
}

/// The test server up as the five instances, their pods running at their IPs.
async fn running(
    dir: tempfile::TempDir,
    plane: ControlPlane,
    client: Client,
    admission: Webhook,
    tls: Option<Value>,
) -> Cluster {
    let server = TestServer::start(dir.path(), &INSTANCES, tls);
    for (sts, _, ip, _) in INSTANCES {
        pod_running(&client, &format!("{sts}-0"), ip).await;
    }
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    Cluster {
        _dir: dir,
        plane,
        client,
        server,
        password_file,
        _admission: admission,
    }
}

/// The admission webhook (`--on-pending allow`: the reconciler follows late addresses),
/// started and ready, not yet registered.
async fn start_admission(dir: &std::path::Path, plane: &ControlPlane) -> Webhook {
    let kubeconfig = plane.kubeconfig.display().to_string();
    let admission_dir = dir.join("admission");
    std::fs::create_dir_all(&admission_dir).unwrap();
    let admission = start_webhook(
        &admission_dir,
        &["--on-pending", "allow"],
        &[("KUBECONFIG", kubeconfig.as_str())],
    );
    let health_port = admission.health_port;
    tokio::task::spawn_blocking(move || {
        wait_until(Duration::from_secs(30), "webhook readiness", || {
            http_status(health_port, "/readyz") == Some(200)
        })
    })
    .await
    .unwrap();
    admission
}

/// A `serve --reconcile-routing` replica; `fast` shortens the debounce (100 ms instead of the
/// default 200 ms) and the Lease (6 s instead of 15 s) so that the scenarios run quickly.
fn start_reconciler(c: &Cluster, identity: &str, fast: bool) -> Webhook {
    start_reconciler_with(c, identity, fast, &[])
}

fn start_reconciler_with(
    c: &Cluster,
    identity: &str,
    fast: bool,
    extra: &[(&str, &str)],
) -> Webhook {
    let kubeconfig = c.plane.kubeconfig.display().to_string();
    let password = c.password_file.display().to_string();
    let webhook_dir = c._dir.path().join(identity);
    std::fs::create_dir_all(&webhook_dir).unwrap();
    let mut env = vec![
        ("KUBECONFIG", kubeconfig.as_str()),
        ("POD_NAMESPACE", LEASE_NS),
        ("POD_NAME", identity),
        ("MAI_RECONCILE_BOLT_USER", USER),
        ("MAI_RECONCILE_BOLT_PASSWORD_FILE", password.as_str()),
        ("MAI_RECONCILE_NAMESPACES", NS),
        // The test server speaks plain Bolt here (bolt_over_tls covers TLS).
        ("MAI_RECONCILE_ALLOW_INSECURE_CREDENTIALS", "true"),
    ];
    if fast {
        env.extend([
            ("MAI_RECONCILE_DEBOUNCE_MS", "100"),
            ("MAI_RECONCILE_LEASE_SECONDS", "6"),
            ("MAI_RECONCILE_BOLT_TIMEOUT_MS", "2000"),
        ]);
    }
    env.extend(extra.iter().copied());
    start_webhook(&webhook_dir, &["--reconcile-routing"], &env)
}

/// Runs a reconciling replica whose `--listen` is `taken`; asserts that it exits non-zero
/// and does not hold the Lease afterwards, and returns its log.
async fn lease_of_failing_replica(c: &Cluster, taken: &str) -> String {
    let dir = c._dir.path().join("failing");
    std::fs::create_dir_all(&dir).unwrap();
    gen_certs(&dir.join("certs"), &["127.0.0.1"]);
    let log = dir.join("serve.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut child = std::process::Command::new(BIN)
        .args(["serve", "--reconcile-routing", "--listen", taken])
        .args(["--health-listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--tls-cert")
        .arg(dir.join("certs/tls.crt"))
        .arg("--tls-key")
        .arg(dir.join("certs/tls.key"))
        .env("KUBECONFIG", &c.plane.kubeconfig)
        .env("POD_NAMESPACE", LEASE_NS)
        .env("POD_NAME", "failing")
        .env("MAI_RECONCILE_NAMESPACES", NS)
        .env("MAI_RECONCILE_BOLT_USER", USER)
        .env("MAI_RECONCILE_BOLT_PASSWORD_FILE", &c.password_file)
        .env("MAI_RECONCILE_ALLOW_INSECURE_CREDENTIALS", "true")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let status = tokio::task::block_in_place(|| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "a replica that cannot listen kept running"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    assert!(!status.success(), "{status:?}");
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(c.client.clone(), LEASE_NS);
    if let Some(lease) = leases
        .get_opt("memgraph-address-injector-routing")
        .await
        .unwrap()
    {
        let holder = lease.spec.and_then(|s| s.holder_identity);
        assert_ne!(
            holder.as_deref(),
            Some("failing"),
            "the Lease is still held"
        );
    }
    std::fs::read_to_string(&log).unwrap()
}

async fn leader_of(replicas: &[&Webhook]) -> Option<usize> {
    let mut leaders = Vec::new();
    for (i, r) in replicas.iter().enumerate() {
        if r.metric("memgraph_address_injector_routing_leader").await == Some(1.0) {
            leaders.push(i);
        }
    }
    assert!(leaders.len() <= 1, "two leaders at once: {leaders:?}");
    leaders.first().copied()
}

fn external_nodeports(
    now: &BTreeMap<String, String>,
    host: &str,
    ports: &BTreeMap<String, i32>,
) -> bool {
    ports
        .iter()
        .all(|(name, port)| now.get(name) == Some(&format!("{host}:{port}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_are_corrected() {
    let _serial = SERIAL.lock().await;
    let mut c = cluster().await;
    let client = c.client.clone();
    let mut ports = BTreeMap::new();
    for (sts, _, _, name) in INSTANCES.iter().filter(|i| i.0 != "memgraph-data-1") {
        ports.insert(
            name.to_string(),
            node_port(&client, &format!("{sts}-external")).await,
        );
    }
    // Every node forwards its NodePorts (externalTrafficPolicy: Cluster), and the
    // LoadBalancer IPs answer: the test server also serves each instance there.
    for (name, port) in &ports {
        for ip in ["127.0.11.1", "127.0.11.2", "127.0.11.3"] {
            c.server.command(&format!("alias {name} {ip}:{port}"));
        }
    }
    for ip in ["127.0.12.50", "127.0.12.51"] {
        c.server.command(&format!("alias instance_1 {ip}:7687"));
    }
    let before = registered().await;
    assert!(
        before.values().all(|b| b.contains(".svc.cluster.local")),
        "{before:?}"
    );

    // Tenants that look like coordinators: a StatefulSet pod in a namespace the reconciler
    // does not serve, and a bare pod in `rc` (no StatefulSet), both labelled as the webhook
    // labels, Ready, with a memgraph container. Neither may get a connection (credentials).
    let trap = Trap::listen(&["127.0.10.30:7687", "127.0.10.31:7687"]);
    tenant_coordinators(&client).await;

    // Two replicas; one takes the Lease.
    let a = start_reconciler(&c, "replica-a", true);
    let b = start_reconciler(&c, "replica-b", true);
    let took = until("every NodePort entry on node-a", |now| {
        external_nodeports(now, "127.0.11.1", &ports)
    })
    .await;
    eprintln!("initial registrations corrected in {took:.1?}");
    wait_for(Duration::from_secs(30), "a leader", || async {
        leader_of(&[&a, &b]).await
    })
    .await;
    // The LoadBalancer has no IP yet: reported on the pod, not written.
    let pending = wait_event(
        &client,
        "memgraph-data-1-0",
        "RoutingAddressPending",
        "no status.loadBalancer.ingress",
    )
    .await;
    assert!(pending.contains("instance_1"), "{pending}");
    assert!(registered().await["instance_1"].contains(".svc.cluster.local"));
    let updated = wait_event(
        &client,
        "memgraph-coordinator-2-0",
        "RoutingAddressUpdated",
        "→ 127.0.11.1:",
    )
    .await;
    assert!(
        updated.contains("memgraph-coordinator-2.rc.svc.cluster.local:7687"),
        "{updated}"
    );

    // 1. The LoadBalancer gets its IP after the pods started.
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    let changed = Instant::now();
    services
        .patch_status(
            "memgraph-data-1-external",
            &PatchParams::default(),
            &Patch::Merge(
                &json!({"status": {"loadBalancer": {"ingress": [{"ip": "127.0.12.50"}]}}}),
            ),
        )
        .await
        .unwrap();
    until("instance_1 on the LoadBalancer IP", |now| {
        now["instance_1"] == "127.0.12.50:7687"
    })
    .await;
    eprintln!(
        "late LoadBalancer IP corrected in {:.1?}",
        changed.elapsed()
    );
    // Now every entry is external: the official driver, outside the cluster, uses the table.
    let mut driver = Driver::start(&format!("127.0.11.1:{}", ports["coordinator_1"]));
    let (write, read) = driver.after_ttl().await;
    assert_eq!(write, format!("127.0.11.1:{}", ports["instance_0"]));
    assert!(read.starts_with("127.0.1"), "{read}");

    // 2. The node in use is deleted: every NodePort entry moves to a usable node, together.
    let nodes: Api<Node> = Api::all(client.clone());
    let changed = Instant::now();
    nodes
        .delete("node-a", &DeleteParams::default())
        .await
        .unwrap();
    until("NodePort entries on node-b", |now| {
        external_nodeports(now, "127.0.11.2", &ports)
    })
    .await;
    eprintln!("deleted Node corrected in {:.1?}", changed.elapsed());
    // The driver refreshes within the ttl (its routers on node-a still answer while the
    // machine drains), then node-a's machine goes away: the driver goes on with node-b.
    driver.after_ttl().await;
    c.server.command("unalias 127.0.11.1");
    let (write, _) = driver.after_ttl().await;
    assert_eq!(write, format!("127.0.11.2:{}", ports["instance_0"]));
    // 3. ... then that one turns NotReady.
    let changed = Instant::now();
    set_node_ready(&client, "node-b", false).await;
    until("NodePort entries on node-c", |now| {
        external_nodeports(now, "127.0.11.3", &ports)
    })
    .await;
    eprintln!("NotReady Node corrected in {:.1?}", changed.elapsed());
    let (write, _) = driver.after_ttl().await;
    assert_eq!(write, format!("127.0.11.3:{}", ports["instance_0"]));
    // node-b Ready again: node-c stays in use (no needless move).
    set_node_ready(&client, "node-b", true).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(external_nodeports(
        &registered().await,
        "127.0.11.3",
        &ports
    ));

    // 4. Failover: another data instance becomes MAIN; the coordinator leader changes too.
    //    The WRITE entry is the new MAIN's registration, already external; the next change
    //    is written to the new leader (3.8 does not forward UPDATE CONFIG).
    c.server.command("main instance_1");
    c.server.command("leader coordinator_2");
    let changed = Instant::now();
    services
        .patch_status(
            "memgraph-data-1-external",
            &PatchParams::default(),
            &Patch::Merge(
                &json!({"status": {"loadBalancer": {"ingress": [{"ip": "127.0.12.51"}]}}}),
            ),
        )
        .await
        .unwrap();
    until(
        "instance_1 (now MAIN) on the new IP, through the new leader",
        |now| now["instance_1"] == "127.0.12.51:7687",
    )
    .await;
    eprintln!(
        "change after failover corrected in {:.1?}",
        changed.elapsed()
    );
    // The driver keeps writing, now to the new MAIN, through its external address.
    let (write, _) = driver.after_ttl().await;
    assert_eq!(write, "127.0.12.51:7687");
    drop(driver);

    // 5. Scale-out: a new data instance, registered with its in-cluster name.
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), NS);
    let internal_svc: Service = from(
        json!({"metadata": {"name": "memgraph-data-2"}, "spec": {"clusterIP": "None",
        "selector": {"app": "memgraph-data-2"}, "ports": [{"name": "tcp-bolt-port", "port": 7687, "targetPort": 7687}]}}),
    );
    services
        .create(&PostParams::default(), &internal_svc)
        .await
        .unwrap();
    services
        .create(
            &PostParams::default(),
            &external_service("memgraph-data-2", "NodePort", &[7687]),
        )
        .await
        .unwrap();
    sets.create(
        &PostParams::default(),
        &chart_statefulset(
            "memgraph-data-2",
            "data",
            "memgraph/memgraph:3.8.0",
            &data_args(),
        ),
    )
    .await
    .unwrap();
    let internal = |port: u16| format!("memgraph-data-2.{NS}.svc.cluster.local:{port}");
    c.server.command(&format!(
        "add {}",
        json!({"name": "instance_2", "listen": "127.0.10.22:7687", "bolt_server": internal(7687),
               "management_server": internal(10000), "role": "replica"})
    ));
    let changed = Instant::now();
    pod_running(&client, "memgraph-data-2-0", "127.0.10.22").await;
    let port = node_port(&client, "memgraph-data-2-external").await;
    // Any usable node's address with its nodePort (node-b and node-c are both Ready).
    until("the new instance external", |now| {
        ["127.0.11.2", "127.0.11.3"]
            .iter()
            .any(|host| now.get("instance_2") == Some(&format!("{host}:{port}")))
    })
    .await;
    eprintln!("scale-out corrected in {:.1?}", changed.elapsed());

    // 6. A Service annotation that is not a host: refused with an Event, nothing written.
    let writes = c.server.updates().len();
    let bad = json!({"metadata": {"annotations": {"memgraph-address-injector/external-host": "db.example.com:7687"}}});
    services
        .patch(
            "memgraph-data-0-external",
            &PatchParams::default(),
            &Patch::Merge(&bad),
        )
        .await
        .unwrap();
    let refused = wait_event(
        &client,
        "memgraph-data-0-0",
        "RoutingAddressRefused",
        "carries a port",
    )
    .await;
    assert!(
        refused.contains("memgraph-address-injector/external-host"),
        "{refused}"
    );
    assert_eq!(c.server.updates().len(), writes, "nothing written");
    assert_eq!(
        registered().await["instance_0"],
        format!("127.0.11.3:{}", ports["instance_0"])
    );
    let fix =
        json!({"metadata": {"annotations": {"memgraph-address-injector/external-host": null}}});
    services
        .patch(
            "memgraph-data-0-external",
            &PatchParams::default(),
            &Patch::Merge(&fix),
        )
        .await
        .unwrap();

    // 6b. A Node address that is not a host. node-b NotReady first, so every entry is on
    //     node-c (one Node: its address changes in one update). node-c's ExternalIP then
    //     carries a port: the entries are refused with an Event naming the Node, nothing is
    //     written, and they do not fall back to node-c's InternalIP. Restored, nothing moves.
    set_node_ready(&client, "node-b", false).await;
    until("every NodePort entry on node-c", |now| {
        external_nodeports(now, "127.0.11.3", &ports)
            && now.get("instance_2") == Some(&format!("127.0.11.3:{port}"))
    })
    .await;
    let writes = c.server.updates().len();
    let set_node_c_external = |external: Option<&'static str>| {
        let client = client.clone();
        async move {
            let mut addresses = vec![json!({"type": "InternalIP", "address": "10.0.0.12"})];
            addresses.extend(external.map(|a| json!({"type": "ExternalIP", "address": a})));
            let status = json!({"status": {"addresses": addresses}});
            Api::<Node>::all(client)
                .patch_status("node-c", &PatchParams::default(), &Patch::Merge(&status))
                .await
                .unwrap();
        }
    };
    set_node_c_external(Some("127.0.11.3:7687")).await;
    let refused = wait_event(
        &client,
        "memgraph-data-0-0",
        "RoutingAddressRefused",
        "status.addresses",
    )
    .await;
    assert!(
        refused.contains("node node-c's ExternalIP")
            && refused.contains("\"127.0.11.3:7687\" carries a port"),
        "{refused}"
    );
    assert_eq!(c.server.updates().len(), writes, "nothing written");
    let now = registered().await;
    assert!(external_nodeports(&now, "127.0.11.3", &ports), "{now:?}");
    set_node_c_external(Some("127.0.11.3")).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(c.server.updates().len(), writes, "nothing moved");

    // 6c. The node in use loses its ExternalIP: its InternalIP is all there is (written, with
    //     a warning); the ExternalIP comes back late (as a cloud provider adds it after the
    //     kubelet registered the node): the same node, by its ExternalIP again.
    set_node_c_external(None).await;
    until("every NodePort entry on node-c's InternalIP", |now| {
        external_nodeports(now, "10.0.0.12", &ports)
    })
    .await;
    let changed = Instant::now();
    set_node_c_external(Some("127.0.11.3")).await;
    until("every NodePort entry on node-c's late ExternalIP", |now| {
        external_nodeports(now, "127.0.11.3", &ports)
            && now.get("instance_2") == Some(&format!("127.0.11.3:{port}"))
    })
    .await;
    eprintln!(
        "late ExternalIP on the node in use corrected in {:.1?}",
        changed.elapsed()
    );
    let writes = c.server.updates().len();
    set_node_ready(&client, "node-b", true).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        c.server.updates().len(),
        writes,
        "node-b back: nothing moved"
    );

    // 7. A wrong password: an Event and a metric; the webhook stays ready.
    std::fs::write(&c.password_file, "wrong\n").unwrap();
    set_node_ready(&client, "node-c", false).await;
    let failed = wait_event(
        &client,
        "memgraph-coordinator-1-0",
        "RoutingUpdateFailed",
        "refused the credentials",
    )
    .await;
    assert!(failed.contains("pod IP"), "{failed}");
    // Whichever replica holds the Lease now counted it (the Lease may have moved meanwhile).
    // The Event is queued by the pass, the counter written when the pass ends: poll it.
    let series =
        r#"memgraph_address_injector_routing_reconciles_total{namespace="rc",result="auth"}"#;
    wait_for(
        Duration::from_secs(20),
        "the auth failure counted",
        || async {
            let mut auth = 0.0;
            for r in [&a, &b] {
                auth += r.metric(series).await.unwrap_or(0.0);
            }
            (auth >= 1.0).then_some(())
        },
    )
    .await;
    for r in [&a, &b] {
        assert_eq!(http_status(r.health_port, "/readyz"), Some(200));
    }
    std::fs::write(&c.password_file, format!("{PASSWORD}\n")).unwrap();
    until(
        "entries back on node-b after the password is fixed",
        |now| external_nodeports(now, "127.0.11.2", &ports),
    )
    .await;

    // 8. The leader dies: the other replica takes over; nothing was written twice.
    let leader = wait_for(Duration::from_secs(30), "the current leader", || async {
        leader_of(&[&a, &b]).await
    })
    .await;
    let mut replicas = [a, b];
    replicas[leader].process.child.kill().unwrap();
    let _ = replicas[leader].process.child.wait();
    let other = 1 - leader;
    let took_over = Instant::now();
    wait_for(
        Duration::from_secs(40),
        "the other replica to take the Lease",
        || async {
            (replicas[other]
                .metric("memgraph_address_injector_routing_leader")
                .await
                == Some(1.0))
            .then_some(())
        },
    )
    .await;
    eprintln!("the other replica took over in {:.1?}", took_over.elapsed());
    set_node_ready(&client, "node-c", true).await;
    set_node_ready(&client, "node-b", false).await;
    until("entries on node-c, written by the new leader", |now| {
        external_nodeports(now, "127.0.11.3", &ports)
    })
    .await;
    let updates = c.server.updates();
    let mut seen = std::collections::BTreeSet::new();
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    for u in &updates {
        // The same statement twice in a row for one instance would be a double write.
        let target = u.split('{').next().unwrap().to_string();
        assert_ne!(
            last.get(&target),
            Some(u),
            "written twice: {u}\nall: {updates:#?}"
        );
        last.insert(target, u.clone());
        seen.insert(u.clone());
    }
    eprintln!("{} UPDATE CONFIG statements, none repeated", updates.len());
    // The metrics of the new leader say what happened.
    // (The pass records its metrics after its read-back, a moment after the table changed.)
    let series =
        r#"memgraph_address_injector_routing_registrations{namespace="rc",state="external"}"#;
    let deadline = Instant::now() + Duration::from_secs(20);
    while replicas[other].metric(series).await != Some(6.0) {
        assert!(
            Instant::now() < deadline,
            "6 external registrations in the new leader's metrics; its log:\n{}",
            replicas[other].log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The pass records after its read-back: poll, since the table changes a moment earlier.
    let deadline = Instant::now() + Duration::from_secs(20);
    let count = "memgraph_address_injector_routing_correction_duration_seconds_count";
    while replicas[other].metric(count).await.unwrap_or(0.0) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the new leader's correction histogram is empty; log:\n{}",
            replicas[other].log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 9. Every coordinator unreachable: an Event and a metric, retried with backoff.
    for name in ["coordinator_1", "coordinator_2", "coordinator_3"] {
        c.server.command(&format!("down {name}"));
    }
    set_node_ready(&client, "node-b", true).await;
    let down = wait_event(
        &client,
        "memgraph-coordinator-1-0",
        "RoutingUpdateFailed",
        "cannot reach any coordinator",
    )
    .await;
    assert!(down.contains("127.0.10.11:7687"), "{down}");
    let series = r#"memgraph_address_injector_routing_reconciles_total{namespace="rc",result="unreachable"}"#;
    wait_for(Duration::from_secs(20), "the unreachable count", || async {
        (replicas[other].metric(series).await.unwrap_or(0.0) >= 1.0).then_some(())
    })
    .await;
    assert_eq!(
        http_status(replicas[other].health_port, "/readyz"),
        Some(200)
    );
    assert_eq!(
        trap.connections(),
        0,
        "the reconciler dialled a pod that is not a coordinator of a served StatefulSet"
    );
    // The pod created before the webhook was registered has no label, and was corrected
    // all the same (step 1): the full list found it.
    let data0: Api<Pod> = Api::namespaced(client.clone(), NS);
    let labels = data0
        .get("memgraph-data-0-0")
        .await
        .unwrap()
        .metadata
        .labels
        .unwrap_or_default();
    assert!(
        !labels.contains_key("memgraph-address-injector/managed"),
        "{labels:?}"
    );
}

/// Listeners that count who connects.
struct Trap {
    count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Trap {
    fn listen(addresses: &[&str]) -> Self {
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for address in addresses {
            let listener = std::net::TcpListener::bind(address).expect("trap address");
            let count = count.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if conn.is_ok() {
                        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            });
        }
        Self { count }
    }

    fn connections(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A coordinator-shaped StatefulSet in namespace `tenant` (pod IP 127.0.10.30) and a bare
/// coordinator-shaped pod in `rc` (127.0.10.31), both labelled, Ready.
async fn tenant_coordinators(client: &Client) {
    namespace(client, "tenant").await;
    let mut sts = chart_statefulset(
        "memgraph-coordinator-1",
        "coordinator",
        "memgraph/memgraph:3.8.0",
        &coordinator_args(1, "tenant"),
    );
    let template = sts
        .spec
        .as_mut()
        .unwrap()
        .template
        .metadata
        .as_mut()
        .unwrap();
    template
        .labels
        .get_or_insert_with(Default::default)
        .insert("memgraph-address-injector/managed".into(), "true".into());
    Api::<StatefulSet>::namespaced(client.clone(), "tenant")
        .create(&PostParams::default(), &sts)
        .await
        .unwrap();
    pod_running_in(client, "tenant", "memgraph-coordinator-1-0", "127.0.10.30").await;
    let mut bare = sts.spec.unwrap().template;
    let meta = bare.metadata.get_or_insert_with(Default::default);
    meta.name = Some("impostor-coordinator".into());
    let pod: Pod = from(json!({"metadata": meta, "spec": bare.spec}));
    Api::<Pod>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    pod_running(client, "impostor-coordinator", "127.0.10.31").await;
}

/// The figure for README (`scripts/bench` runs it): N changes of a LoadBalancer IP, each timed
/// from the Service status update to a verified `SHOW INSTANCES` listing the new address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: scripts/bench runs it"]
async fn correction_latency() {
    let changes: usize = std::env::var("MAI_BENCH_CHANGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(60);
    let _serial = SERIAL.lock().await;
    let c = cluster().await;
    // The defaults an install gets (200 ms debounce).
    let _reconciler = start_reconciler(&c, "bench", false);
    let services: Api<Service> = Api::namespaced(c.client.clone(), NS);
    until("the first pass", |now| {
        now["coordinator_1"].starts_with("127.0.11.")
    })
    .await;
    let mut took = Vec::with_capacity(changes);
    for i in 0..changes {
        let ip = format!("198.51.100.{}", 10 + i % 200);
        let changed = Instant::now();
        services
            .patch_status(
                "memgraph-data-1-external",
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}})),
            )
            .await
            .unwrap();
        let want = format!("{ip}:7687");
        until("the new LoadBalancer IP", |now| now["instance_1"] == want).await;
        took.push(changed.elapsed());
    }
    took.sort();
    let at = |q: f64| took[((took.len() as f64 * q).ceil() as usize).clamp(1, took.len()) - 1];
    println!(
        "correction latency over {} changes: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        took.len(),
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        took.last().unwrap().as_secs_f64() * 1e3
    );
    assert!(
        at(0.50) <= Duration::from_secs(1),
        "p50 above the 1 s target"
    );
    assert!(
        at(0.99) <= Duration::from_secs(5),
        "p99 above the 5 s target"
    );
}

/// Memgraph serving Bolt over TLS (`--bolt-cert-file`): a reconciler speaking plain Bolt gets
/// an Event and a metric, never a write; one with `--reconcile-bolt-tls verify` and the CA
/// (the certificate names the chart's `memgraph-coordinator-1.rc.svc.cluster.local`, while
/// the connection goes to the pod IP) corrects the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bolt_over_tls() {
    let _serial = SERIAL.lock().await;
    let certs = tempfile::tempdir().unwrap();
    let out = certs.path().join("bolt");
    let status = std::process::Command::new(BIN)
        .args([
            "gen-certs",
            "--service",
            "memgraph-coordinator-1",
            "--namespace",
            NS,
            "--out",
        ])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let tls = json!({"cert": out.join("tls.crt"), "key": out.join("tls.key")});
    let c = cluster_with(Some(tls)).await;
    let client = c.client.clone();
    let tls_transport = memgraph_address_injector::routing::tls::transport(
        memgraph_address_injector::routing::uri::Security::SelfSigned,
        None,
        "test",
    )
    .unwrap();

    // 0. A replica whose HTTPS listener cannot bind (the port is taken) exits with the
    //    reason, and gives the Lease back on the way out rather than leaving it to expire.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let failing = lease_of_failing_replica(&c, &taken.local_addr().unwrap().to_string()).await;
    assert!(failing.contains("cannot listen on"), "{failing}");
    assert!(failing.contains("Lease released"), "{failing}");
    drop(taken);

    // 1. TLS on the Bolt port, plain Bolt in the reconciler: an Event, a metric, no write.
    //    (The default 15 s Lease here, and no shutdown delay: see step 2.)
    let mut plain =
        start_reconciler_with(&c, "plain", false, &[("MAI_SHUTDOWN_DELAY_SECONDS", "0")]);
    let failed = wait_event(
        &client,
        "memgraph-coordinator-1-0",
        "RoutingUpdateFailed",
        "TLS",
    )
    .await;
    assert!(failed.contains("127.0.10.11:7687"), "{failed}");
    // The Event is queued by the pass, the counter written when the pass ends: poll it.
    wait_for(Duration::from_secs(20), "a failed pass counted", || async {
        let mut counted = 0.0;
        for result in ["tls", "unreachable"] {
            let series = format!(
                r#"memgraph_address_injector_routing_reconciles_total{{namespace="rc",result="{result}"}}"#
            );
            counted += plain.metric(&series).await.unwrap_or(0.0);
        }
        (counted >= 1.0).then_some(())
    })
    .await;
    assert!(c.server.updates().is_empty(), "nothing written");

    // 2. A replica that verifies the coordinator's certificate against the CA waits for the
    //    Lease; the plain one stops on SIGTERM and releases it (kube-lease-manager's waiting
    //    replica still polls at its own pace, so the handover takes up to about a Lease).
    let ca = out.join("ca.crt").display().to_string();
    let verified = start_reconciler_with(
        &c,
        "verified",
        false,
        &[
            ("MAI_RECONCILE_BOLT_TLS", "verify"),
            ("MAI_RECONCILE_BOLT_CA", ca.as_str()),
        ],
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        verified
            .metric("memgraph_address_injector_routing_leader")
            .await,
        Some(0.0)
    );
    let status = tokio::task::block_in_place(|| plain.process.terminate(Duration::from_secs(15)));
    let handover = Instant::now();
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert!(
        plain.log_text().contains("Lease released"),
        "{}",
        plain.log_text()
    );
    wait_for(
        Duration::from_secs(30),
        "the verified replica to lead",
        || async {
            (verified
                .metric("memgraph_address_injector_routing_leader")
                .await
                == Some(1.0))
            .then_some(())
        },
    )
    .await;
    let took = handover.elapsed();
    eprintln!("Lease handed over {took:.1?} after the SIGTERMed leader exited");
    // kube-lease-manager's waiter sleeps until the expiry it last saw (the 15 s Lease), then
    // 0.1-1 s of jitter and two API calls: within one Lease duration, with room for a
    // loaded machine.
    assert!(took < Duration::from_secs(25), "{took:?}");
    let started = Instant::now();
    loop {
        let now = registered_over(tls_transport.clone()).await;
        if now["coordinator_1"].starts_with("127.0.11.1:")
            && now["instance_0"].starts_with("127.0.11.1:")
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not corrected over TLS: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "corrected over Bolt+TLS in {:.1?} after the takeover",
        started.elapsed()
    );
}

/// What the reconciler may send credentials to is explicit: no served namespaces, a bad
/// namespace name, or a password over plain Bolt without the opt-in are refused at start,
/// each with one line naming the flag to set.
#[test]
fn credentials_go_nowhere_unless_the_operator_says_where_and_how() {
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "s3cret\n").unwrap();
    let password = password.to_str().unwrap();
    let serve = |extra: &[&str]| {
        let out = std::process::Command::new(BIN)
            .args([
                "serve",
                "--tls-cert",
                "/nonexistent",
                "--tls-key",
                "/nonexistent",
            ])
            .arg("--reconcile-routing")
            .args(extra)
            .env_remove("MAI_RECONCILE_NAMESPACES")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (extra, needle) in [
        (vec![], "needs --reconcile-namespaces"),
        (
            vec!["--reconcile-namespaces", "Bad_NS"],
            "\"Bad_NS\" in --reconcile-namespaces",
        ),
        (
            vec![
                "--reconcile-namespaces",
                "rc",
                "--reconcile-bolt-user",
                "admin",
                "--reconcile-bolt-password-file",
                password,
            ],
            "--reconcile-allow-insecure-credentials",
        ),
        (
            vec![
                "--reconcile-namespaces",
                "rc",
                "--reconcile-bolt-user",
                "admin",
                "--reconcile-bolt-password-file",
                password,
                "--reconcile-bolt-tls",
                "skip-verify",
            ],
            "--reconcile-allow-insecure-credentials",
        ),
    ] {
        let (code, stderr) = serve(&extra);
        assert_eq!(code, Some(2), "{extra:?}: {stderr}");
        assert!(stderr.contains(needle), "{extra:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{extra:?}: {stderr}");
    }
}

/// The chart's listener (Gateway) or tcp-services (ingress-nginx) port of an instance:
/// dataPortBase 9000 + id, coordinatorPortBase 10000 + id (chart 1.3.3 values.yaml).
fn proxy_port(sts: &str) -> u16 {
    let id: u16 = sts.rsplit('-').next().unwrap().parse().unwrap();
    if sts.contains("coordinator") {
        10000 + id
    } else {
        9000 + id
    }
}

fn gateway_api(client: &Client, version: &str, kind: &str) -> Api<kube::api::DynamicObject> {
    let gvk = kube::api::GroupVersionKind::gvk("gateway.networking.k8s.io", version, kind);
    Api::namespaced_with(client.clone(), NS, &kube::api::ApiResource::from_gvk(&gvk))
}

/// The chart's cluster in its Gateway API mode (templates/gateway.yaml, chart 1.3.3): the
/// instances' in-cluster ClusterIP Services, a Gateway with a TCP listener per instance at
/// portBase+id, and a v1alpha2 TCPRoute per instance to its Service, against the real CRDs
/// (sigs.k8s.io/gateway-api v1.6.3, experimental channel). No Gateway controller runs: the
/// Gateway has no address until the test gives it one, as a controller would, late.
async fn proxied_cluster() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let plane = ControlPlane::start(dir.path());
    let client = plane.client().await;
    namespace(&client, NS).await;
    namespace(&client, LEASE_NS).await;
    // The webhook discovers the Gateway API at start: the CRDs come first.
    support::helm::create_crds(&client).await;
    node(
        &client,
        "node-a",
        &[("InternalIP", "10.0.0.10"), ("ExternalIP", "127.0.11.1")],
    )
    .await;
    let admission = start_admission(dir.path(), &plane).await;
    register_webhook(&client, &admission).await;

    let listeners: Vec<Value> = INSTANCES
        .iter()
        .map(|(sts, _, _, _)| {
            let short = sts.trim_start_matches("memgraph-");
            json!({"name": format!("{short}-bolt"), "protocol": "TCP", "port": proxy_port(sts),
                   "allowedRoutes": {"kinds": [{"group": "gateway.networking.k8s.io", "kind": "TCPRoute"}]}})
        })
        .collect();
    let gateway: kube::api::DynamicObject = from(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "memgraph-gateway", "namespace": NS},
        "spec": {"gatewayClassName": "example", "listeners": listeners}
    }));
    gateway_api(&client, "v1", "Gateway")
        .create(&PostParams::default(), &gateway)
        .await
        .expect("the chart's Gateway");
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), NS);
    for (sts, role, _, _) in INSTANCES {
        let short = sts.trim_start_matches("memgraph-");
        let route: kube::api::DynamicObject = from(json!({
            "apiVersion": "gateway.networking.k8s.io/v1alpha2", "kind": "TCPRoute",
            "metadata": {"name": format!("memgraph-{short}-bolt"), "namespace": NS, "labels": {"app": sts}},
            "spec": {
                "parentRefs": [{"name": "memgraph-gateway", "namespace": NS, "sectionName": format!("{short}-bolt")}],
                "rules": [{"backendRefs": [{"name": sts, "port": 7687}]}]
            }
        }));
        gateway_api(&client, "v1alpha2", "TCPRoute")
            .create(&PostParams::default(), &route)
            .await
            .expect("the chart's TCPRoute");
        // templates/services-data.yaml, services-coordinators.yaml: ClusterIP, by app.
        let internal: Service = from(json!({"metadata": {"name": sts}, "spec": {
            "selector": {"app": sts},
            "ports": [{"name": "tcp-bolt-port", "protocol": "TCP", "port": 7687, "targetPort": 7687}]}}));
        services
            .create(&PostParams::default(), &internal)
            .await
            .unwrap();
        create_instance(&sets, sts, role).await;
    }
    running(dir, plane, client, admission, None).await
}

fn all_at(now: &BTreeMap<String, String>, host: &str) -> bool {
    INSTANCES
        .iter()
        .all(|(sts, _, _, name)| now.get(*name) == Some(&format!("{host}:{}", proxy_port(sts))))
}

/// The chart's Gateway API and IngressNginx modes (issue 17): the Gateway's address arrives
/// after the pods started and the reconciler registers every instance at it, the listener
/// port each; then the cluster moves to ingress-nginx (its tcp-services ConfigMap and the
/// controller's LoadBalancer Service; the TCPRoutes deleted) and the registrations follow.
/// Each time the neo4j driver outside writes and reads through the table it is handed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_are_followed() {
    let _serial = SERIAL.lock().await;
    let mut c = proxied_cluster().await;
    let client = c.client.clone();
    // The proxies' data planes: the Gateway's address and the ingress-nginx controller's
    // LoadBalancer IP forward each port to its instance.
    for (sts, _, _, name) in INSTANCES {
        for host in ["127.0.13.1", "127.0.14.1"] {
            c.server
                .command(&format!("alias {name} {host}:{}", proxy_port(sts)));
        }
    }
    let _reconciler = start_reconciler(&c, "replica-a", true);
    // No Gateway address yet: reported on the pod, nothing written.
    let pending = wait_event(
        &client,
        "memgraph-data-0-0",
        "RoutingAddressPending",
        "status.addresses",
    )
    .await;
    assert!(pending.contains("memgraph-gateway"), "{pending}");
    assert!(
        registered()
            .await
            .values()
            .all(|b| b.contains(".svc.cluster.local")),
        "written before the Gateway had an address"
    );

    // 1. The Gateway controller programs the Gateway.
    let changed = Instant::now();
    gateway_api(&client, "v1", "Gateway")
        .patch_status(
            "memgraph-gateway",
            &PatchParams::default(),
            &Patch::Merge(
                &json!({"status": {"addresses": [{"type": "IPAddress", "value": "127.0.13.1"}]}}),
            ),
        )
        .await
        .expect("the Gateway's status");
    until("every instance at the Gateway's address", |now| {
        all_at(now, "127.0.13.1")
    })
    .await;
    eprintln!(
        "late Gateway address corrected in {:.1?}",
        changed.elapsed()
    );
    let mut driver = Driver::start("127.0.13.1:10001");
    let (write, read) = driver.after_ttl().await;
    assert_eq!(write, "127.0.13.1:9000", "the MAIN through the Gateway");
    assert!(read.starts_with("127.0.13.1:900"), "{read}");
    // The webhook decides a pod created now the same way: its StatefulSet's new pod gets
    // the Gateway's address in its environment.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let old_uid = pods.get("memgraph-data-1-0").await.unwrap().metadata.uid;
    pods.delete(
        "memgraph-data-1-0",
        &DeleteParams::default().grace_period(0),
    )
    .await
    .unwrap();
    let recreated = wait_for(
        Duration::from_secs(60),
        "memgraph-data-1-0 recreated",
        || async {
            pods.get_opt("memgraph-data-1-0")
                .await
                .ok()
                .flatten()
                .filter(|p| p.metadata.uid != old_uid)
        },
    )
    .await;
    let env = recreated.spec.as_ref().unwrap().containers[0]
        .env
        .clone()
        .unwrap_or_default();
    assert!(
        env.iter()
            .any(|e| e.name == "MEMGRAPH_EXTERNAL_BOLT_ADDRESS"
                && e.value.as_deref() == Some("127.0.13.1:9001")),
        "{env:?}"
    );
    pod_running(&client, "memgraph-data-1-0", "127.0.10.21").await;

    // 2. ingress-nginx's TCP proxy is set up; while the TCPRoutes exist they win.
    namespace(&client, "ingress-nginx").await;
    let data: BTreeMap<String, String> = INSTANCES
        .iter()
        .map(|(sts, _, _, _)| (proxy_port(sts).to_string(), format!("{NS}/{sts}:7687")))
        .collect();
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), "ingress-nginx");
    config_maps
        .create(
            &PostParams::default(),
            &from(json!({"metadata": {"name": "tcp-services"}, "data": data})),
        )
        .await
        .unwrap();
    let ports: Vec<Value> = INSTANCES
        .iter()
        .map(|(sts, _, _, _)| {
            let short = sts
                .trim_start_matches("memgraph-")
                .replace("coordinator", "coord");
            json!({"name": format!("tcp-{short}"), "protocol": "TCP",
                   "port": proxy_port(sts), "targetPort": proxy_port(sts)})
        })
        .collect();
    let controllers: Api<Service> = Api::namespaced(client.clone(), "ingress-nginx");
    controllers
        .create(
            &PostParams::default(),
            &from(json!({"metadata": {"name": "ingress-nginx-controller"},
                "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                         "selector": {"app.kubernetes.io/name": "ingress-nginx"}, "ports": ports}})),
        )
        .await
        .unwrap();
    controllers
        .patch_status(
            "ingress-nginx-controller",
            &PatchParams::default(),
            &Patch::Merge(
                &json!({"status": {"loadBalancer": {"ingress": [{"ip": "127.0.14.1"}]}}}),
            ),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        all_at(&registered().await, "127.0.13.1"),
        "a TCPRoute's Gateway gave way to ingress-nginx"
    );
    let changed = Instant::now();
    let routes = gateway_api(&client, "v1alpha2", "TCPRoute");
    for (sts, _, _, _) in INSTANCES {
        let short = sts.trim_start_matches("memgraph-");
        routes
            .delete(&format!("memgraph-{short}-bolt"), &DeleteParams::default())
            .await
            .unwrap();
    }
    until(
        "every instance at the ingress-nginx controller's IP",
        |now| all_at(now, "127.0.14.1"),
    )
    .await;
    eprintln!(
        "move from the Gateway to ingress-nginx corrected in {:.1?}",
        changed.elapsed()
    );
    let (write, read) = driver.after_ttl().await;
    assert_eq!(write, "127.0.14.1:9000", "the MAIN through ingress-nginx");
    assert!(read.starts_with("127.0.14.1:900"), "{read}");
    let updated = wait_event(
        &client,
        "memgraph-data-0-0",
        "RoutingAddressUpdated",
        "→ 127.0.14.1:9000",
    )
    .await;
    assert!(updated.contains("127.0.13.1:9000"), "{updated}");
}
