//! Shared test support: free loopback ports, the webhook binary as a child process that is
//! killed when the test ends (also on panic), and an HTTPS client that trusts its CA.
#![allow(dead_code)]

pub mod chart;
pub mod control_plane;
pub mod helm;
pub mod node;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

/// The webhook binary: Cargo's path in tests; for the demo example, the debug build that
/// scripts/demo makes first.
pub const BIN: &str = match option_env!("CARGO_BIN_EXE_memgraph-address-injector") {
    Some(path) => path,
    None => concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/target/debug/memgraph-address-injector"
    ),
};

pub fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A child process killed on drop.
pub struct ChildGuard {
    pub child: Child,
    pub name: String,
}

impl ChildGuard {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn gen_certs(dir: &Path, ips: &[&str]) {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "gen-certs",
        "--service",
        "memgraph-address-injector",
        "--namespace",
        "memgraph-address-injector",
        "--out",
    ])
    .arg(dir);
    for ip in ips {
        cmd.args(["--ip", ip]);
    }
    let out = cmd.output().expect("run gen-certs");
    assert!(
        out.status.success(),
        "gen-certs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct Webhook {
    pub process: ChildGuard,
    pub port: u16,
    pub health_port: u16,
    pub certs: PathBuf,
    pub log: PathBuf,
}

impl Webhook {
    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    pub fn health_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.health_port)
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.certs.join("ca.crt")).expect("ca.crt")
    }

    /// The value of one series on /metrics, e.g.
    /// `memgraph_address_injector_watch_errors_total`.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = reqwest::get(self.health_url("/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A failing test shows what the webhook logged last.
impl Drop for Webhook {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("--- the last lines of {} ---", self.log.display());
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Starts `serve` with fresh certificates in `dir`; `extra` are more serve flags (for example
/// `--cluster-state FILE`), `env` more environment (for example KUBECONFIG).
pub fn start_webhook(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Webhook {
    let certs = dir.join("certs");
    if !certs.join("ca.crt").exists() {
        gen_certs(&certs, &["127.0.0.1"]);
    }
    let port = free_port();
    let health_port = free_port();
    let log = dir.join(format!("webhook-{port}.log"));
    let log_file = std::fs::File::create(&log).expect("log file");
    let child = Command::new(BIN)
        .arg("serve")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--health-listen", &format!("127.0.0.1:{health_port}")])
        .arg("--tls-cert")
        .arg(certs.join("tls.crt"))
        .arg("--tls-key")
        .arg(certs.join("tls.key"))
        .args(extra)
        .envs(env.iter().copied())
        .env("MAI_LOG", "info,rustls=error")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("log"))
        .stderr(log_file)
        .spawn()
        .expect("spawn serve");
    let webhook = Webhook {
        process: ChildGuard {
            child,
            name: "webhook".into(),
        },
        port,
        health_port,
        certs,
        log,
    };
    wait_until(Duration::from_secs(60), "the webhook's /livez", || {
        std::net::TcpStream::connect(("127.0.0.1", health_port)).is_ok()
    });
    webhook
}

/// A body that sends `first` and then waits for `release` before sending `rest`.
pub fn stalled_body(
    first: Vec<u8>,
    rest: Vec<u8>,
    release: std::sync::Arc<tokio::sync::Notify>,
) -> reqwest::Body {
    let stream = futures::stream::unfold(0u8, move |step| {
        let (first, rest, release) = (first.clone(), rest.clone(), release.clone());
        async move {
            match step {
                0 => Some((Ok::<_, std::io::Error>(first), 1)),
                1 => {
                    release.notified().await;
                    Some((Ok(rest), 2))
                }
                _ => None,
            }
        }
    });
    reqwest::Body::wrap_stream(stream)
}

/// Polls an async check every 100 ms; returns how long it took.
pub async fn wait_async(
    timeout: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> bool,
) -> Duration {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if check().await {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

pub fn wait_until(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// A client that trusts only the webhook's CA.
pub fn https_client(ca_pem: &[u8]) -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem).expect("CA PEM"))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTPS client")
}

pub fn yaml_fixture(path: &str) -> serde_json::Value {
    serde_saphyr::from_str(&std::fs::read_to_string(fixture(path)).expect("fixture")).expect("YAML")
}

pub fn review_of(pod: &serde_json::Value, namespace: &str, uid: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "namespace": namespace,
            "dryRun": false,
            "object": pod
        }
    })
}

/// The status code of a plain-HTTP GET on 127.0.0.1, or None when nothing answers.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

/// The Python with the official neo4j driver (PyPI `neo4j`): `MAI_TEST_PYTHON` (set by
/// scripts/test, which creates .venv), else `.venv/bin/python`. Missing, the test fails: the
/// driver outside the cluster is the proof.
pub fn python() -> PathBuf {
    let python = std::env::var_os("MAI_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    let works = Command::new(&python)
        .args(["-c", "import neo4j"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        works,
        "{} cannot import the neo4j driver; run ./scripts/test (it creates .venv with `pip install neo4j`) or set MAI_TEST_PYTHON",
        python.display()
    );
    python
}

/// A child speaking one line per command (the Bolt test server, the driver probe); killed on
/// drop (also when the test panics).
pub struct LineProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    name: &'static str,
}

impl LineProcess {
    pub fn spawn(name: &'static str, command: &mut Command) -> Self {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Self {
            child,
            stdin,
            lines,
            name,
        }
    }

    pub fn line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("{} printed nothing within 60 s", self.name))
    }

    pub fn ask(&mut self, command: &str) -> String {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
        self.line()
    }
}

impl Drop for LineProcess {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `scripts/<script>` (each builds what it makes only when missing or stale, and prints
/// the path of what it made as its last stdout line) and returns that path.
pub fn built_by(script: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(script);
    let out = Command::new("bash")
        .arg(&path)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("run scripts/{script}: {e}"));
    assert!(out.status.success(), "scripts/{script} failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(
        stdout
            .lines()
            .last()
            .unwrap_or_else(|| panic!("scripts/{script} printed no path"))
            .trim(),
    )
}
