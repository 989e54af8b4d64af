//! `routing check` and `routing sync` against a Bolt test server that behaves as a Memgraph
//! HA cluster (tests/bolt_server/memgraph_coordinator.py), with the official neo4j Python
//! driver (PyPI `neo4j`) in routing mode as the client that shows the bug and the fix.
//!
//! Needs a Python with `neo4j`: `MAI_TEST_PYTHON` (set by scripts/test, which creates .venv),
//! else `.venv/bin/python`. Missing, the test fails: the proof is the point.

mod support;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use support::{python, LineProcess};

const BIN: &str = env!("CARGO_BIN_EXE_memgraph-address-injector");
const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");

fn script(name: &str) -> PathBuf {
    Path::new(MANIFEST).join("tests/bolt_server").join(name)
}

/// The test server and where each instance listens: at its external address (a node IP
/// and nodePort) and at its pod IP on the Bolt port, as in a cluster.
struct Cluster {
    server: LineProcess,
    listening: BTreeMap<String, String>,
    pod_ips: BTreeMap<String, String>,
    version: String,
    journal: PathBuf,
}

/// Each cluster of this binary gets its own loopback /24 for pod IPs (tests run at once).
static NEXT_POD_NET: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(40);

impl Cluster {
    fn start(dir: &Path, python: &Path, overrides: Value) -> Self {
        let text = std::fs::read_to_string(
            Path::new(MANIFEST).join("tests/fixtures/routing/cluster-3.8.json"),
        )
        .unwrap();
        let mut config: Value = serde_json::from_str(&text).unwrap();
        let journal = dir.join("journal.jsonl");
        config["journal"] = json!(journal);
        for (k, v) in overrides.as_object().unwrap() {
            config[k] = v.clone();
        }
        let config_path = dir.join("server.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let server = LineProcess::spawn(
            "the Bolt test server",
            Command::new(python)
                .arg(script("memgraph_coordinator.py"))
                .arg(&config_path),
        );
        let ready: Value = serde_json::from_str(&server.line()).unwrap();
        let listening: BTreeMap<String, String> =
            serde_json::from_value(ready["listening"].clone()).unwrap();
        let net = NEXT_POD_NET.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut cluster = Self {
            server,
            listening: listening.clone(),
            pod_ips: BTreeMap::new(),
            version: config["version"].as_str().unwrap_or("3.8.0").to_string(),
            journal,
        };
        for (i, name) in listening.keys().enumerate() {
            let ip = format!("127.0.{net}.{}", 11 + i);
            cluster.command(&format!("alias {name} {ip}:7687"));
            cluster.pod_ips.insert(name.clone(), ip);
        }
        cluster
    }

    /// Where `instance` listens at its pod IP.
    fn pod_address(&self, instance: &str) -> String {
        format!("{}:7687", self.pod_ips[instance])
    }

    fn at(&self, instance: &str) -> String {
        self.listening[instance].clone()
    }

    fn command(&mut self, command: &str) {
        let reply = self.server.ask(command);
        assert!(reply.starts_with("ok"), "{command}: {reply}");
    }

    /// Journal entries (instance, message, query) from entry `from` on.
    fn journal_from(&self, from: usize) -> Vec<(String, String, Option<String>)> {
        let text = std::fs::read_to_string(&self.journal).unwrap_or_default();
        // A line the server is still writing is not an entry yet.
        let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
        complete
            .lines()
            .skip(from)
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                (
                    v["instance"].as_str().unwrap().to_string(),
                    v["message"].as_str().unwrap().to_string(),
                    v["query"].as_str().map(str::to_string),
                )
            })
            .collect()
    }

    fn journal_len(&self) -> usize {
        self.journal_from(0).len()
    }

    /// The journal from `from` once `done` holds for it, or after 5 s whatever it has: the
    /// server journals what ends a connection (GOODBYE, a failed TLS handshake) only after
    /// the client has already gone, so a test that reads it at once can race it.
    fn journal_when(
        &self,
        from: usize,
        done: impl Fn(&[(String, String, Option<String>)]) -> bool,
    ) -> Vec<(String, String, Option<String>)> {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let journal = self.journal_from(from);
            if done(&journal) || std::time::Instant::now() > deadline {
                return journal;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The cluster view: the chart's Services, Pods and node, with the nodePorts the
    /// listeners got.
    fn cluster_file(&self, dir: &Path) -> PathBuf {
        let mut text = std::fs::read_to_string(
            Path::new(MANIFEST).join("tests/fixtures/routing/cluster.yaml.tmpl"),
        )
        .unwrap();
        for (name, address) in &self.listening {
            let port = address.rsplit_once(':').unwrap().1;
            text = text.replace(&format!("${{NODEPORT_{name}}}"), port);
            text = text.replace(&format!("${{PODIP_{name}}}"), &self.pod_ips[name]);
        }
        text = text.replace("${MEMGRAPH_TAG}", &self.version);
        let path = dir.join("cluster.yaml");
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("MAI_CLUSTER")
        .output()
        .unwrap();
    let result = (
        out.status.code().expect("killed by a signal"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    eprintln!(
        "$ memgraph-address-injector {}\n-> exit {}\n{}{}",
        args.join(" "),
        result.0,
        result.1,
        result.2
    );
    result
}

fn driver_call(driver: &mut LineProcess, command: &str) -> Value {
    let reply: Value = serde_json::from_str(&driver.ask(command)).unwrap();
    eprintln!("driver {command}: {reply}");
    reply
}

const TTL: Duration = Duration::from_secs(2);

fn past_ttl() {
    std::thread::sleep(TTL + Duration::from_millis(700));
}

#[test]
fn in_cluster_addresses_break_the_driver_and_routing_sync_fixes_them() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), &python, json!({"ttl": TTL.as_secs()}));
    let cluster_file = cluster.cluster_file(dir.path());
    let cluster_file = cluster_file.to_str().unwrap();
    let seed = cluster.at("coordinator_1");
    let mut driver = LineProcess::spawn(
        "the neo4j driver probe",
        Command::new(&python)
            .arg(script("driver_probe.py"))
            .arg(format!("neo4j://{seed}")),
    );
    let banner: Value = serde_json::from_str(&driver.line()).unwrap();
    eprintln!("neo4j driver {}", banner["driver"]);

    // 1. The seed's bug. The table's ROUTE entries are in-cluster names (the chart's setup
    //    Job registers them); the MAIN was registered with its external address, so the first
    //    query works: the driver got the table through the seed and wrote to the MAIN.
    let first = driver_call(&mut driver, "write");
    assert_eq!(first["ok"], true, "{first}");
    assert_eq!(first["server"], cluster.at("instance_0"));
    let seen = cluster.journal_from(0);
    assert!(seen.contains(&("coordinator_1".into(), "ROUTE".into(), None)));
    assert!(seen.contains(&(
        "instance_0".into(),
        "RUN".into(),
        Some("RETURN $n AS n".into())
    )));
    // A Raft election moves the leadership (sync must find the leader below).
    cluster.command("leader coordinator_2");
    // After the ttl the driver refreshes from the table's ROUTE servers: in-cluster names it
    // cannot resolve. Every coordinator, the seed included, is up and reachable at its
    // external address; the driver was never told those addresses, and neo4j 6.x gives up
    // on the first name that does not resolve, before trying its seed again.
    past_ttl();
    let mark = cluster.journal_len();
    let broken = driver_call(&mut driver, "write");
    assert_eq!(broken["ok"], false, "{broken}");
    assert_eq!(broken["type"], "ServiceUnavailable", "{broken}");
    let error = broken["error"].as_str().unwrap();
    assert!(
        error.contains("Unable to retrieve routing information")
            || (error.contains("Failed to DNS resolve address memgraph-coordinator-")
                && error.contains(".default.svc.cluster.local:7687")),
        "{broken}"
    );
    assert!(cluster
        .journal_from(mark)
        .iter()
        .all(|(_, message, _)| message != "ROUTE"));

    // 2. `routing check` (through a surviving coordinator) names every unusable address and
    //    what it should be.
    let bolt = cluster.at("coordinator_3");
    let (code, stdout, stderr) = cli(&[
        "routing",
        "check",
        "--bolt",
        &bolt,
        "--cluster",
        cluster_file,
    ]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    for bad in [
        "ROUTE memgraph-coordinator-1.default.svc.cluster.local:7687",
        "ROUTE memgraph-coordinator-2.default.svc.cluster.local:7687",
        "ROUTE memgraph-coordinator-3.default.svc.cluster.local:7687",
        "READ memgraph-data-1.default.svc.cluster.local:7687",
    ] {
        assert!(stderr.contains(bad), "{bad} not named in: {stderr}");
    }
    assert!(!stderr.contains(&cluster.at("instance_0")), "{stderr}");
    for instance in [
        "coordinator_1",
        "coordinator_2",
        "coordinator_3",
        "instance_1",
    ] {
        assert!(
            stdout.contains(&format!("{} (Service default/", cluster.at(instance))),
            "no external address suggested for {instance}: {stdout}"
        );
    }

    // 3. `routing sync`: a dry run changes nothing; --apply runs UPDATE CONFIG on the leader
    //    (coordinator_3 is a follower, and a 3.8 follower does not forward it: sync finds the
    //    leader in SHOW INSTANCES and reaches it by its pod IP from the cluster view, never
    //    at an address the server reports); a second run plans nothing; `routing check`
    //    passes. The version comes from the pods' image tag: coordinators refuse SHOW VERSION.
    let mark = cluster.journal_len();
    let (code, stdout, _) = cli(&[
        "routing",
        "sync",
        "--bolt",
        &bolt,
        "--cluster",
        cluster_file,
    ]);
    assert_eq!(code, 1, "a dry run with changes pending exits 1");
    let expected: Vec<String> = [
        ("COORDINATOR 1", "coordinator_1"),
        ("COORDINATOR 2", "coordinator_2"),
        ("COORDINATOR 3", "coordinator_3"),
        ("INSTANCE instance_1", "instance_1"),
    ]
    .iter()
    .map(|(what, instance)| {
        format!(
            "UPDATE CONFIG FOR {what} {{'bolt_server': '{}'}}",
            cluster.at(instance)
        )
    })
    .collect();
    for statement in &expected {
        assert!(
            stdout.contains(statement),
            "{statement} not planned: {stdout}"
        );
    }
    assert!(
        stdout.contains("instance_0: already registered"),
        "{stdout}"
    );
    let updates = |from: usize| -> Vec<(String, String)> {
        cluster
            .journal_from(from)
            .into_iter()
            .filter(|(_, message, _)| message == "RUN")
            .filter_map(|(instance, _, query)| {
                query
                    .filter(|q| q.starts_with("UPDATE CONFIG"))
                    .map(|q| (instance, q))
            })
            .collect()
    };
    assert!(updates(mark).is_empty(), "the dry run executed something");

    let mark = cluster.journal_len();
    let (code, stdout, stderr) = cli(&[
        "routing",
        "sync",
        "--bolt",
        &bolt,
        "--cluster",
        cluster_file,
        "--apply",
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("verified"), "{stdout}");
    let executed = updates(mark);
    assert!(
        stdout.contains(&format!(
            "(on the leader coordinator_2 at its pod IP {})",
            cluster.pod_address("coordinator_2")
        )),
        "{stdout}"
    );
    assert!(
        executed
            .iter()
            .all(|(instance, _)| instance == "coordinator_2"),
        "only the leader is written to: {executed:?}"
    );
    assert!(
        !cluster
            .journal_from(0)
            .iter()
            .any(|(_, _, q)| q.as_deref() == Some("SHOW VERSION")),
        "SHOW VERSION was sent"
    );
    let on_leader: Vec<&str> = executed
        .iter()
        .filter(|(instance, _)| instance == "coordinator_2")
        .map(|(_, q)| q.as_str())
        .collect();
    assert_eq!(
        on_leader,
        expected.iter().map(String::as_str).collect::<Vec<_>>()
    );

    let (code, stdout, _) = cli(&[
        "routing",
        "sync",
        "--bolt",
        &bolt,
        "--cluster",
        cluster_file,
    ]);
    assert_eq!(code, 0, "idempotent: {stdout}");
    assert!(stdout.contains("nothing to change"), "{stdout}");
    let (code, stdout, stderr) = cli(&[
        "routing",
        "check",
        "--bolt",
        &bolt,
        "--cluster",
        cluster_file,
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("every address is usable"), "{stdout}");

    // A driver that cached the old table keeps failing (its routers are still the
    // unresolvable names): applications must reconnect once after the sync.
    let stale = driver_call(&mut driver, "write");
    assert_eq!(stale["ok"], false, "{stale}");
    drop(driver);
    // A new driver with the same seed gets the fixed table and runs queries against the
    // instances it names, at their external addresses.
    let mut driver = LineProcess::spawn(
        "the neo4j driver probe",
        Command::new(&python)
            .arg(script("driver_probe.py"))
            .arg(format!("neo4j://{seed}")),
    );
    driver.line();
    let write = driver_call(&mut driver, "write");
    assert_eq!(write["ok"], true, "{write}");
    assert_eq!(write["server"], cluster.at("instance_0"));
    let read = driver_call(&mut driver, "read");
    assert_eq!(read["ok"], true, "{read}");
    assert_eq!(
        read["server"],
        cluster.at("instance_1"),
        "the replica, in-cluster before the sync"
    );

    // The fix itself: the seed goes away, and after the ttl the driver refreshes from
    // the other coordinators, whose external addresses the table now lists.
    cluster.command("down coordinator_1");
    past_ttl();
    let mark = cluster.journal_len();
    let write = driver_call(&mut driver, "write");
    assert_eq!(write["ok"], true, "{write}");
    assert_eq!(write["server"], cluster.at("instance_0"));
    let routed_by: Vec<String> = cluster
        .journal_from(mark)
        .into_iter()
        .filter(|(_, message, _)| message == "ROUTE")
        .map(|(instance, _, _)| instance)
        .collect();
    assert!(
        routed_by
            .iter()
            .any(|i| i == "coordinator_2" || i == "coordinator_3"),
        "the refresh did not go to a surviving coordinator: {routed_by:?}"
    );
}

/// Bolt 4.3 and 4.4 servers, credentials, and the one-line exit-2 errors.
#[test]
fn version_negotiation_credentials_and_connection_errors() {
    let python = python();
    for bolt_version in ["4.3", "4.4"] {
        let dir = tempfile::tempdir().unwrap();
        let cluster = Cluster::start(
            dir.path(),
            &python,
            json!({"bolt_versions": [bolt_version], "auth": {"user": "admin", "password": "s3cret"}}),
        );
        let bolt = cluster.at("coordinator_2");
        let good = dir.path().join("good");
        std::fs::write(&good, "s3cret\n").unwrap();
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "wrong").unwrap();

        // No cluster view: in-cluster names are still recognised; exit 1.
        let (code, stdout, stderr) = cli(&[
            "routing",
            "check",
            "--bolt",
            &bolt,
            "--user",
            "admin",
            "--password-file",
            good.to_str().unwrap(),
        ]);
        assert_eq!(code, 1, "Bolt {bolt_version}: {stdout}{stderr}");
        assert!(stdout.contains("ttl 2s"), "{stdout}");
        assert!(
            stdout.contains(&format!("WRITE  {}", cluster.at("instance_0"))),
            "{stdout}"
        );
        assert!(stderr.contains("ROUTE memgraph-coordinator-2.default.svc.cluster.local:7687"));
        // HELLO carried the credentials (no LOGON before 5.1), then ROUTE.
        let messages: Vec<String> = cluster
            .journal_when(0, |journal| journal.len() >= 3)
            .into_iter()
            .map(|(_, m, _)| m)
            .collect();
        assert_eq!(
            messages.get(..3),
            Some(&["HELLO".to_string(), "ROUTE".into(), "GOODBYE".into()][..]),
            "{messages:?}"
        );

        let (code, _, stderr) = cli(&[
            "routing",
            "check",
            "--bolt",
            &bolt,
            "--user",
            "admin",
            "--password-file",
            bad.to_str().unwrap(),
        ]);
        assert_eq!(code, 2);
        assert!(
            stderr.contains("refused the credentials") && stderr.contains("Authentication failure"),
            "{stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");

        // A data instance is not a coordinator.
        let (code, _, stderr) = cli(&[
            "routing",
            "check",
            "--bolt",
            &cluster.at("instance_1"),
            "--user",
            "admin",
            "--password-file",
            good.to_str().unwrap(),
        ]);
        assert_eq!(code, 2);
        assert!(stderr.contains("is not a Memgraph coordinator"), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }

    // Nothing listening.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, _, stderr) = cli(&["routing", "check", "--bolt", &format!("127.0.0.1:{port}")]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("cannot connect to 127.0.0.1:") && stderr.contains("refused"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");

    // A server that speaks no version we offer (Bolt 1.0 only).
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), &python, json!({"bolt_versions": ["1.0"]}));
    let (code, _, stderr) = cli(&["routing", "check", "--bolt", &cluster.at("coordinator_1")]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("speaks none of the Bolt versions"),
        "{stderr}"
    );
}

/// A CA and a serving certificate for the test server's listeners (127.0.0.2), from the
/// binary's own `gen-certs`. `namespace` goes into the CA's name, so two calls give two
/// unrelated CAs.
fn gen_certs(dir: &Path, namespace: &str) -> (PathBuf, Value) {
    let out = dir.join(namespace);
    let (code, stdout, stderr) = cli(&[
        "gen-certs",
        "--namespace",
        namespace,
        "--ip",
        "127.0.0.2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let tls = json!({"cert": out.join("tls.crt"), "key": out.join("tls.key")});
    (out.join("ca.crt"), tls)
}

/// The error of a failed command: exit 2 and exactly one line on stderr.
fn one_line_error(args: &[&str]) -> String {
    let (code, stdout, stderr) = cli(args);
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    stderr
}

/// Bolt over TLS (Memgraph with --bolt-cert-file): bolt+s:// verified against --bolt-ca,
/// bolt+ssc:// without verification; a wrong CA, a plain client on the TLS port and a TLS
/// client on a plain port are each one line and exit 2. The official driver, over
/// neo4j+s:// trusting the same CA, then gets the synced table.
#[test]
fn bolt_over_tls_check_sync_and_the_driver() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let (ca, tls) = gen_certs(dir.path(), "memgraph");
    let (other_ca, _) = gen_certs(dir.path(), "somebody-else");
    let cluster = Cluster::start(
        dir.path(),
        &python,
        json!({"tls": tls, "auth": {"user": "admin", "password": "s3cret"}}),
    );
    let password = dir.path().join("password");
    std::fs::write(&password, "s3cret\n").unwrap();
    let password = password.to_str().unwrap();
    let cluster_file = cluster.cluster_file(dir.path());
    let cluster_file = cluster_file.to_str().unwrap();
    let ca = ca.to_str().unwrap();
    let tls_port = cluster.at("coordinator_3");
    let auth = ["--user", "admin", "--password-file", password];

    // The right CA: the table is read (exit 1: in-cluster names, as without TLS).
    let bolt_s = format!("bolt+s://{tls_port}");
    let mut args = vec!["routing", "check", "--bolt", &bolt_s, "--bolt-ca", ca];
    args.extend(auth);
    let (code, stdout, stderr) = cli(&args);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("routing table from {tls_port}")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("WRITE  {}", cluster.at("instance_0"))),
        "{stdout}"
    );

    // The wrong CA: the verification failure, named.
    let other = other_ca.to_str().unwrap();
    let mut args = vec!["routing", "check", "--bolt", &bolt_s, "--bolt-ca", other];
    args.extend(auth);
    let stderr = one_line_error(&args);
    assert!(
        stderr.contains(&format!("{tls_port}'s TLS certificate failed verification"))
            && stderr.contains("--bolt-ca"),
        "{stderr}"
    );

    // A plain client on the TLS port.
    let mut args = vec!["routing", "check", "--bolt", &tls_port];
    args.extend(auth);
    let stderr = one_line_error(&args);
    assert!(
        stderr.contains(&tls_port) && stderr.contains("bolt+s://"),
        "{stderr}"
    );

    // A TLS client on a plain port (a second cluster, without TLS), verified or not.
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = Cluster::start(plain_dir.path(), &python, json!({}));
    let plain_port = plain.at("coordinator_1");
    for bolt in [
        format!("bolt+ssc://{plain_port}"),
        format!("neo4j+s://{plain_port}"),
    ] {
        let mut args = vec!["routing", "check", "--bolt", &bolt];
        if bolt.starts_with("neo4j+s:") {
            args.extend(["--bolt-ca", ca]);
        }
        let stderr = one_line_error(&args);
        assert!(
            stderr.contains(&plain_port)
                && stderr.contains("did not answer the TLS handshake with TLS")
                && stderr.contains("bolt://"),
            "{stderr}"
        );
    }
    drop(plain);

    // bolt+ssc:// needs no CA. sync --apply over it: coordinator_3 is a follower, so the
    // statements go to the leader (coordinator_1) at its pod IP, over TLS too.
    let bolt_ssc = format!("bolt+ssc://{tls_port}");
    let mut args = vec![
        "routing",
        "sync",
        "--bolt",
        &bolt_ssc,
        "--cluster",
        cluster_file,
        "--apply",
    ];
    args.extend(auth);
    let mark = cluster.journal_len();
    let (code, stdout, stderr) = cli(&args);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!(
            "(on the leader coordinator_1 at its pod IP {})",
            cluster.pod_address("coordinator_1")
        )),
        "{stdout}"
    );
    assert!(stdout.contains("verified"), "{stdout}");
    let updates_on_leader = cluster
        .journal_from(mark)
        .into_iter()
        .filter(|(instance, message, query)| {
            instance == "coordinator_1"
                && message == "RUN"
                && query
                    .as_deref()
                    .is_some_and(|q| q.starts_with("UPDATE CONFIG"))
        })
        .count();
    assert_eq!(updates_on_leader, 4);
    assert!(
        cluster
            .journal_from(mark)
            .iter()
            .all(|(_, message, _)| message != "TLS handshake failed"),
        "every connection of the sync was TLS"
    );

    // bolt+s:// again: every address usable now.
    let neo4j_s = format!("neo4j+s://{tls_port}");
    let mut args = vec![
        "routing",
        "check",
        "--bolt",
        &neo4j_s,
        "--bolt-ca",
        ca,
        "--cluster",
        cluster_file,
    ];
    args.extend(auth);
    let (code, stdout, stderr) = cli(&args);
    assert_eq!(code, 0, "{stdout}{stderr}");

    // The official driver over TLS: neo4j+s:// trusting the CA (through the system trust
    // store's SSL_CERT_FILE, as neo4j+s takes no CA option), and neo4j+ssc://. Each reads
    // the synced table and queries the instances it names, over TLS.
    let seed = cluster.at("coordinator_1");
    for (uri, trust) in [
        (format!("neo4j+s://{seed}"), Some(ca)),
        (format!("neo4j+ssc://{seed}"), None),
    ] {
        let mut command = Command::new(&python);
        command.arg(script("driver_probe.py")).arg(&uri).args([
            "--user",
            "admin",
            "--password",
            "s3cret",
        ]);
        if let Some(ca) = trust {
            command.env("SSL_CERT_FILE", ca);
        }
        let mut driver = LineProcess::spawn("the neo4j driver probe", &mut command);
        driver.line();
        let write = driver_call(&mut driver, "write");
        assert_eq!(write["ok"], true, "{uri}: {write}");
        assert_eq!(write["server"], cluster.at("instance_0"));
        let read = driver_call(&mut driver, "read");
        assert_eq!(read["ok"], true, "{uri}: {read}");
        assert_eq!(read["server"], cluster.at("instance_1"));
    }
    // And without the CA, neo4j+s:// refuses the server, as the binary does.
    let mut command = Command::new(&python);
    command
        .arg(script("driver_probe.py"))
        .arg(format!("neo4j+s://{seed}"))
        .args(["--user", "admin", "--password", "s3cret"])
        .env("SSL_CERT_FILE", other);
    let mut driver = LineProcess::spawn("the neo4j driver probe", &mut command);
    driver.line();
    let mark = cluster.journal_len();
    let refused = driver_call(&mut driver, "write");
    assert_eq!(refused["ok"], false, "{refused}");
    let handshake_failed = |journal: &[(String, String, Option<String>)]| {
        journal
            .iter()
            .any(|(_, message, _)| message == "TLS handshake failed")
    };
    assert!(
        handshake_failed(&cluster.journal_when(mark, handshake_failed)),
        "the driver gave up in the TLS handshake"
    );
}

/// `routing sync` exits 0 when all that is left is reported rather than failed: an external
/// address not known yet (a LoadBalancer without ingress), or on 3.0-3.7 the statements
/// printed to run by hand. A dry run with changes it could apply (3.8+) exits 1.
#[test]
fn sync_exit_codes_for_what_is_left() {
    let python = python();

    // 3.7: new registrations, printed, never executed; exit 0 with and without --apply.
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), &python, json!({"version": "3.7.2"}));
    let cluster_file = cluster.cluster_file(dir.path());
    let bolt = cluster.at("coordinator_1");
    for apply in [false, true] {
        let mut args = vec![
            "routing",
            "sync",
            "--bolt",
            &bolt,
            "--cluster",
            cluster_file.to_str().unwrap(),
        ];
        if apply {
            args.push("--apply");
        }
        let mark = cluster.journal_len();
        let (code, stdout, stderr) = cli(&args);
        assert_eq!(code, 0, "3.7, apply {apply}: {stdout}{stderr}");
        assert!(stdout.contains("Memgraph 3.7.2: new registrations, to run by hand"));
        assert!(
            stdout.contains(&format!(
                "  REMOVE COORDINATOR 2;\n  ADD COORDINATOR 2 WITH CONFIG {{'bolt_server': '{}'",
                cluster.at("coordinator_2")
            )),
            "{stdout}"
        );
        assert!(
            stdout.contains(&format!(
                "  UNREGISTER INSTANCE instance_1;\n  REGISTER INSTANCE instance_1 WITH CONFIG {{'bolt_server': '{}'",
                cluster.at("instance_1")
            )),
            "{stdout}"
        );
        let executed: Vec<_> = cluster
            .journal_from(mark)
            .into_iter()
            .filter_map(|(_, _, query)| query)
            .filter(|q| q != "SHOW VERSION" && q != "SHOW INSTANCES")
            .collect();
        assert!(executed.is_empty(), "3.7: nothing executed: {executed:?}");
    }
    drop(cluster);

    // 3.8 with instance_1's Service a LoadBalancer still waiting for its address.
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), &python, json!({}));
    let cluster_file = cluster.cluster_file(dir.path());
    let text = std::fs::read_to_string(&cluster_file).unwrap();
    let at = text.find("name: memgraph-data-1-external").unwrap();
    let (head, tail) = text.split_at(at);
    let tail = tail.replacen("type: NodePort", "type: LoadBalancer", 1);
    std::fs::write(&cluster_file, format!("{head}{tail}")).unwrap();
    let bolt = cluster.at("coordinator_1");
    let cluster_file = cluster_file.to_str().unwrap();
    let sync = |apply: bool| {
        let mut args = vec![
            "routing",
            "sync",
            "--bolt",
            &bolt,
            "--cluster",
            cluster_file,
        ];
        if apply {
            args.push("--apply");
        }
        cli(&args)
    };
    // Changes it could apply, not applied: 1.
    let (code, stdout, stderr) = sync(false);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stdout.contains("unknown   instance_1:"), "{stdout}");
    // Applied; instance_1 still unknown, reported: 0.
    let (code, stdout, stderr) = sync(true);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("verified"), "{stdout}");
    assert!(stdout.contains("unknown   instance_1:"), "{stdout}");
    // Nothing left but the unknown address: 0, dry run or not.
    let (code, stdout, stderr) = sync(false);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("nothing to change"), "{stdout}");
    assert!(stdout.contains("unknown   instance_1:"), "{stdout}");
}

/// The test server is a model of Memgraph release by release: its own unit tests check each
/// answer it gives against what the cited source does (tests/bolt_server/test_model.py).
#[test]
fn the_test_server_answers_as_each_memgraph_release_does() {
    let out = Command::new(python())
        .args(["-m", "unittest", "-v", "test_model"])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bolt_server"))
        .output()
        .expect("python runs");
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the model's tests failed:\n{report}");
    assert!(report.contains("Ran "), "no test ran:\n{report}");
}

/// `routing sync` against each release's rules: 3.9+ forwards from any coordinator; 3.8
/// writes only on the leader, reached by its pod IP (refused, naming --in-cluster, when the
/// view has none); an unknown version (tag `latest`) is tried on the leader and, when the
/// release has no UPDATE CONFIG, refused with both ways out. No SHOW VERSION, ever.
#[test]
fn sync_follows_what_each_memgraph_release_accepts() {
    let python = python();
    let sync = |file: &Path, bolt: &str| {
        cli(&[
            "routing",
            "sync",
            "--bolt",
            bolt,
            "--cluster",
            file.to_str().unwrap(),
            "--apply",
        ])
    };
    let updates = |journal: &[(String, String, Option<String>)]| -> Vec<String> {
        journal
            .iter()
            .filter(|(_, m, q)| {
                m == "RUN" && q.as_deref().is_some_and(|q| q.starts_with("UPDATE CONFIG"))
            })
            .map(|(i, _, _)| i.clone())
            .collect()
    };
    let no_show_version = |journal: &[(String, String, Option<String>)]| {
        assert!(
            !journal
                .iter()
                .any(|(_, _, q)| q.as_deref() == Some("SHOW VERSION")),
            "SHOW VERSION sent: {journal:?}"
        );
    };

    // 3.9: the follower at --bolt takes the writes and forwards them.
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), &python, json!({"version": "3.9.0"}));
    let file = cluster.cluster_file(dir.path());
    let follower = cluster.at("coordinator_2");
    let (code, stdout, stderr) = sync(&file, &follower);
    assert_eq!(code, 0, "3.9: {stdout}{stderr}");
    let journal = cluster.journal_from(0);
    let written = updates(&journal);
    assert!(
        !written.is_empty() && written.iter().all(|i| i == "coordinator_2"),
        "{journal:?}"
    );
    assert!(
        journal
            .iter()
            .any(|(i, m, _)| i == "coordinator_1" && m == "FORWARDED"),
        "{journal:?}"
    );
    assert!(
        !journal.iter().any(|(_, m, _)| m == "FAILURE"),
        "{journal:?}"
    );
    no_show_version(&journal);
    cluster.command("leader coordinator_1");
    drop(cluster);

    // 3.8 with no pod IPs in the view: the leader cannot be reached, nothing is written.
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), &python, json!({}));
    let file = cluster.cluster_file(dir.path());
    let text = std::fs::read_to_string(&file).unwrap();
    let without: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("podIP:"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&file, without).unwrap();
    let (code, stdout, stderr) = sync(&file, &cluster.at("coordinator_2"));
    assert_eq!(code, 2, "3.8 without pod IPs: {stdout}{stderr}");
    assert!(stderr.contains("--in-cluster"), "{stderr}");
    let journal = cluster.journal_from(0);
    assert!(updates(&journal).is_empty(), "{journal:?}");
    no_show_version(&journal);
    drop(cluster);

    // Tag `latest` on a 3.8 cluster: tried on the leader, which accepts it.
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), &python, json!({}));
    cluster.version = "latest".into();
    let file = cluster.cluster_file(dir.path());
    let (code, stdout, stderr) = sync(&file, &cluster.at("coordinator_2"));
    assert_eq!(code, 0, "latest on 3.8: {stdout}{stderr}");
    assert!(stdout.contains("Memgraph version unknown"), "{stdout}");
    let journal = cluster.journal_from(0);
    let written = updates(&journal);
    assert!(
        !written.is_empty() && written.iter().all(|i| i == "coordinator_1"),
        "{journal:?}"
    );
    no_show_version(&journal);
    drop(cluster);

    // Tag `latest` on a 3.7 cluster: the leader cannot parse UPDATE CONFIG; exit 2 naming
    // --memgraph-version and the statements to run by hand.
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), &python, json!({"version": "3.7.2"}));
    cluster.version = "latest".into();
    let file = cluster.cluster_file(dir.path());
    let (code, stdout, stderr) = sync(&file, &cluster.at("coordinator_1"));
    assert_eq!(code, 2, "latest on 3.7: {stdout}{stderr}");
    assert!(stderr.contains("--memgraph-version"), "{stderr}");
    assert!(stderr.contains("REMOVE COORDINATOR"), "{stderr}");
    no_show_version(&cluster.journal_from(0));
}

/// What Memgraph cannot store is refused before any write: an IPv6 literal (Memgraph splits
/// bolt_server on ':') and a value that is not a host; exit 2, the rest still written.
#[test]
fn sync_refuses_addresses_memgraph_cannot_register() {
    let python = python();
    for (value, why) in [
        ("2001:db8::7", "IPv6"),
        ("db.example.com:7687", "not a host"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cluster = Cluster::start(dir.path(), &python, json!({}));
        let file = cluster.cluster_file(dir.path());
        let text = std::fs::read_to_string(&file).unwrap();
        let anchor = "    name: memgraph-data-1-external\n";
        let annotated = text.replacen(
            anchor,
            &format!(
                "{anchor}    annotations:\n      external-dns.alpha.kubernetes.io/hostname: \"{value}\"\n"
            ),
            1,
        );
        assert_ne!(annotated, text, "the fixture has {anchor:?}");
        std::fs::write(&file, annotated).unwrap();
        let (code, stdout, stderr) = cli(&[
            "routing",
            "sync",
            "--bolt",
            &cluster.at("coordinator_1"),
            "--cluster",
            file.to_str().unwrap(),
            "--apply",
        ]);
        assert_eq!(code, 2, "{value}: {stdout}{stderr}");
        let refused = stdout
            .lines()
            .chain(stderr.lines())
            .find(|l| l.contains("instance_1") && l.contains("refused"))
            .unwrap_or_else(|| panic!("{value}: no refusal line for instance_1: {stdout}{stderr}"));
        assert!(
            refused.contains(value) || refused.contains(why),
            "{value}: {refused}"
        );
        let journal = cluster.journal_from(0);
        let writes: Vec<&String> = journal
            .iter()
            .filter_map(|(_, m, q)| q.as_ref().filter(|_| m == "RUN"))
            .filter(|q| q.starts_with("UPDATE CONFIG"))
            .collect();
        assert!(
            !writes.iter().any(|q| q.contains("instance_1")),
            "{value}: {writes:?}"
        );
        assert!(
            writes.iter().any(|q| q.contains("COORDINATOR 2")),
            "{value}: the others written: {writes:?}"
        );
    }
}
