//! A real Kubernetes control plane for the tests: etcd, kube-apiserver and
//! kube-controller-manager built from Go modules by `scripts/build-control-plane`, started on
//! free loopback ports in a temporary directory, and stopped on drop (also when a test panics).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, gen_certs, ChildGuard};

pub struct ControlPlane {
    // Dropped in reverse order of start: the controller manager first, etcd last.
    processes: Vec<ChildGuard>,
    bin: PathBuf,
    apiserver_args: Vec<String>,
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub api_port: u16,
    pub token: String,
    pub ca_pem: Vec<u8>,
    pub started_in: Duration,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        while let Some(mut process) = self.processes.pop() {
            let _ = process.terminate(Duration::from_secs(10));
        }
    }
}

/// Builds the binaries when missing (a no-op when cached) and returns their directory.
pub fn binaries() -> PathBuf {
    super::built_by("build-control-plane")
}

fn spawn(bin: &Path, args: &[String], log: &Path, name: &str) -> ChildGuard {
    let file = std::fs::File::create(log).expect("log file");
    let child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log"))
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
    ChildGuard {
        child,
        name: name.to_string(),
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<_> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// What a test needs beyond the default control plane (for a real node: tests/support/node.rs).
#[derive(Default, Clone)]
pub struct Options {
    /// More lines for the static token file (`token,user,uid,"group1,group2"`).
    pub extra_tokens: Vec<String>,
    /// Listen on every address and advertise this one as the `kubernetes` Service's endpoint
    /// (lease reconciler); it and the Service's first IP (10.96.0.1) go into the serving
    /// certificate, so pods on a node reach the API server.
    pub advertise_address: Option<String>,
    /// Controllers started beyond the default list (for a node: node-lifecycle-controller,
    /// endpointslice-controller).
    pub extra_controllers: Vec<String>,
    /// Also start kube-scheduler.
    pub scheduler: bool,
}

impl ControlPlane {
    pub fn start(dir: &Path) -> ControlPlane {
        ControlPlane::start_with(dir, &Options::default())
    }

    pub fn start_with(dir: &Path, options: &Options) -> ControlPlane {
        let bin = binaries();
        let started = Instant::now();
        let mut processes = Vec::new();

        // etcd
        let etcd_port = free_port();
        let peer_port = free_port();
        let etcd_log = dir.join("etcd.log");
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        processes.push(spawn(
            &bin.join("etcd"),
            &[
                format!("--data-dir={}", dir.join("etcd-data").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=default={peer_url}"),
                "--log-level=warn".into(),
                // Throwaway data: skip fsync, the slowest part of etcd on a shared disk.
                "--unsafe-no-fsync".into(),
                "--quota-backend-bytes=2147483648".into(),
            ],
            &etcd_log,
            "etcd",
        ));

        // Identities: the API server's serving certificate (our own gen-certs, with the
        // 127.0.0.1 SAN), a service-account signing key, an admin token.
        let pki = dir.join("pki");
        let mut sans = vec!["127.0.0.1"];
        if let Some(address) = &options.advertise_address {
            sans.extend([address.as_str(), "10.96.0.1"]);
        }
        gen_certs(&pki, &sans);
        let sa_key = rcgen::KeyPair::generate().expect("service-account key");
        std::fs::write(pki.join("sa.key"), sa_key.serialize_pem()).expect("sa.key");
        std::fs::write(pki.join("sa.pub"), sa_key.public_key_pem()).expect("sa.pub");
        let token = format!("e2e-{}", std::process::id());
        std::fs::write(
            pki.join("tokens.csv"),
            format!(
                "{token},admin,admin-uid,system:masters\n{}",
                options
                    .extra_tokens
                    .iter()
                    .map(|line| format!("{line}\n"))
                    .collect::<String>()
            ),
        )
        .expect("tokens.csv");
        let audit_policy = dir.join("audit-policy.yaml");
        std::fs::write(
            &audit_policy,
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Metadata\n  resources:\n  - group: \"\"\n    resources: [\"pods\"]\n  verbs: [\"create\"]\n- level: None\n",
        )
        .expect("audit policy");

        let api_port = free_port();
        let api_log = dir.join("kube-apiserver.log");
        let pki_path = |f: &str| pki.join(f).display().to_string();
        let (bind, advertise, reconciler) = match &options.advertise_address {
            Some(address) => ("0.0.0.0", address.as_str(), "lease"),
            // A loopback advertise address cannot back the `kubernetes` Endpoints.
            None => ("127.0.0.1", "127.0.0.1", "none"),
        };
        let apiserver_args: Vec<String> = vec![
            format!("--etcd-servers={etcd_url}"),
            format!("--bind-address={bind}"),
            format!("--advertise-address={advertise}"),
            format!("--secure-port={api_port}"),
            format!("--tls-cert-file={}", pki_path("tls.crt")),
            format!("--tls-private-key-file={}", pki_path("tls.key")),
            format!("--client-ca-file={}", pki_path("ca.crt")),
            format!("--token-auth-file={}", pki_path("tokens.csv")),
            "--authorization-mode=RBAC".into(),
            format!("--service-account-key-file={}", pki_path("sa.pub")),
            format!("--service-account-signing-key-file={}", pki_path("sa.key")),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            "--service-node-port-range=30000-32767".into(),
            format!("--cert-dir={}", dir.join("apiserver-certs").display()),
            format!("--audit-policy-file={}", audit_policy.display()),
            format!("--audit-log-path={}", dir.join("audit.log").display()),
            "--enable-priority-and-fairness=false".into(),
            format!("--endpoint-reconciler-type={reconciler}"),
            // The chart's init containers are privileged (sysctl); real clusters allow it.
            "--allow-privileged=true".into(),
            "--v=1".into(),
        ];
        processes.push(spawn(
            &bin.join("kube-apiserver"),
            &apiserver_args,
            &api_log,
            "kube-apiserver",
        ));

        let ca_pem = std::fs::read(pki.join("ca.crt")).expect("ca.crt");
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_text(api_port, &ca_pem, &token))
            .expect("kubeconfig");

        let ready = readyz(api_port, &ca_pem, &token, Duration::from_secs(120));
        assert!(
            ready,
            "kube-apiserver did not become ready:\n{}\n--- etcd:\n{}",
            tail(&api_log),
            tail(&etcd_log)
        );

        let kcm_log = dir.join("kube-controller-manager.log");
        processes.push(spawn(
            &bin.join("kube-controller-manager"),
            &[
                format!("--kubeconfig={}", kubeconfig.display()),
                format!("--authentication-kubeconfig={}", kubeconfig.display()),
                format!("--authorization-kubeconfig={}", kubeconfig.display()),
                format!(
                    "--controllers=statefulset-controller,job-controller,serviceaccount-controller,serviceaccount-token-controller,namespace-controller,garbage-collector-controller,root-ca-certificate-publisher-controller{}",
                    options
                        .extra_controllers
                        .iter()
                        .map(|c| format!(",{c}"))
                        .collect::<String>()
                ),
                format!("--service-account-private-key-file={}", pki_path("sa.key")),
                format!("--root-ca-file={}", pki_path("ca.crt")),
                "--use-service-account-credentials=false".into(),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", free_port()),
                "--v=1".into(),
            ],
            &kcm_log,
            "kube-controller-manager",
        ));
        if options.scheduler {
            processes.push(spawn(
                &bin.join("kube-scheduler"),
                &[
                    format!("--kubeconfig={}", kubeconfig.display()),
                    format!("--authentication-kubeconfig={}", kubeconfig.display()),
                    format!("--authorization-kubeconfig={}", kubeconfig.display()),
                    "--leader-elect=false".into(),
                    "--bind-address=127.0.0.1".into(),
                    format!("--secure-port={}", free_port()),
                    "--v=1".into(),
                ],
                &dir.join("kube-scheduler.log"),
                "kube-scheduler",
            ));
        }
        std::thread::sleep(Duration::from_millis(300));
        let mut plane = ControlPlane {
            processes,
            bin: bin.clone(),
            apiserver_args,
            dir: dir.to_path_buf(),
            kubeconfig,
            api_port,
            token,
            ca_pem,
            started_in: Duration::ZERO,
        };
        if let Ok(Some(status)) = plane.processes[2].child.try_wait() {
            panic!(
                "kube-controller-manager exited with {status}:\n{}",
                tail(&kcm_log)
            );
        }
        plane.started_in = started.elapsed();
        plane
    }

    /// The directory of the binaries scripts/build-control-plane built.
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![("KUBECONFIG", self.kubeconfig.display().to_string())]
    }

    pub async fn client(&self) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("client config");
        kube::Client::try_from(config).expect("client")
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    pub fn audit_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("audit.log")).unwrap_or_default()
    }

    /// Stops kube-apiserver (SIGTERM), leaving etcd and the controller manager running.
    pub fn stop_apiserver(&mut self) {
        let process = self
            .processes
            .iter_mut()
            .find(|p| p.name == "kube-apiserver")
            .expect("kube-apiserver");
        if process.terminate(Duration::from_secs(15)).is_none() {
            let _ = process.child.kill();
            let _ = process.child.wait();
        }
    }

    /// Starts kube-apiserver again with the same flags and port, and waits for /readyz.
    pub fn start_apiserver(&mut self) {
        let log = self.dir.join("kube-apiserver-restarted.log");
        let process = spawn(
            &self.bin.join("kube-apiserver"),
            &self.apiserver_args,
            &log,
            "kube-apiserver",
        );
        let slot = self
            .processes
            .iter_mut()
            .find(|p| p.name == "kube-apiserver")
            .expect("kube-apiserver");
        *slot = process;
        assert!(
            readyz(
                self.api_port,
                &self.ca_pem,
                &self.token,
                Duration::from_secs(120)
            ),
            "kube-apiserver did not come back:\n{}",
            tail(&log)
        );
    }

    pub fn is_running(&mut self, name: &str) -> bool {
        self.processes
            .iter_mut()
            .find(|p| p.name == name)
            .is_some_and(|p| matches!(p.child.try_wait(), Ok(None)))
    }
}

fn kubeconfig_text(port: u16, ca_pem: &[u8], token: &str) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: https://127.0.0.1:{port}
    certificate-authority-data: {ca}
users:
- name: admin
  user:
    token: {token}
contexts:
- name: e2e
  context:
    cluster: e2e
    user: admin
current-context: e2e
"
    )
}

fn readyz(port: u16, ca_pem: &[u8], token: &str, timeout: Duration) -> bool {
    // Its own thread and runtime: callers may be inside an async test.
    let (ca_pem, token) = (ca_pem.to_vec(), token.to_string());
    std::thread::spawn(move || readyz_blocking(port, &ca_pem, &token, timeout))
        .join()
        .unwrap_or(false)
}

fn readyz_blocking(port: u16, ca_pem: &[u8], token: &str, timeout: Duration) -> bool {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem).expect("CA"))
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let url = format!("https://127.0.0.1:{port}/readyz");
    let mut ready = false;
    wait_until_or(timeout, || {
        ready = runtime.block_on(async {
            match client.get(&url).bearer_auth(token).send().await {
                Ok(r) => r.status().is_success(),
                Err(_) => false,
            }
        });
        ready
    });
    ready
}

fn wait_until_or(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}
