//! A real Kubernetes node for the tests: containerd (Debian's, with runc and the CNI bridge and
//! host-local plugins), kubelet and kube-proxy (nftables mode) built by
//! scripts/build-control-plane, next to a control plane started with [`control_plane_options`].
//!
//! Every address lives on one bridge this module creates (the node IP, the pods) and in the
//! pods' network namespaces; pods get a route to the Service range only, and an nftables guard
//! table drops anything forwarded off the bridge and API-server traffic from other interfaces.
//! Nothing can be pulled (containerd's proxy is a closed loopback port): images are imported.
//!
//! `Node::start` and `Node::teardown` (also run on drop, so a failing test cleans up too):
//! teardown restores what the node changed on the host — processes, mounts, cgroups, the
//! bridge, nftables tables, fixed host paths and the sysctls kubelet sets — and returns what
//! it could not restore. Fixed host paths (/var/lib/kubelet/device-plugins, /run/netns, ...)
//! mean one node per machine at a time; a lock file serialises test processes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::control_plane::{ControlPlane, Options};
use super::{free_port, ChildGuard};

pub const NODE_NAME: &str = "mai-node";
/// The node's address, on the bridge: kubelet, NodePorts, the API server for pods.
pub const NODE_IP: &str = "10.244.0.1";
pub const PAUSE_IMAGE: &str = "localhost/mai-pause:1";
const BRIDGE: &str = "mai-node0";
const POD_SUBNET: &str = "10.244.0.0/24";
const SERVICE_RANGE: &str = "10.96.0.0/16";
/// inet table with the forward/input guard.
const GUARD_TABLE: &str = "mai-node";
/// Host settings kubelet or kube-proxy may change (kubelet always sets the first three).
const SYSCTLS: &[&str] = &[
    "vm.overcommit_memory",
    "kernel.panic",
    "kernel.panic_on_oops",
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.forwarding",
    "net.ipv4.conf.all.route_localnet",
    "net.ipv6.conf.all.forwarding",
    "net.bridge.bridge-nf-call-iptables",
    "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_tcp_timeout_established",
    "net.netfilter.nf_conntrack_tcp_timeout_close_wait",
];
/// Fixed host paths kubelet, containerd and the CNI plugins use whatever they are told.
const HOST_PATHS: &[&str] = &[
    "/var/lib/kubelet",
    "/var/log/containers",
    "/var/log/pods",
    "/run/containerd",
    "/var/lib/containerd",
    "/var/lib/cni",
    "/run/netns",
    "/etc/cni",
    "/opt/cni",
    "/etc/kubernetes",
];
/// Where new mounts are expected (and unmounted at teardown), besides the node's directory.
const MOUNT_ROOTS: &[&str] = &["/var/lib/kubelet", "/run/containerd", "/run/netns"];

/// The control plane a node needs: the node's token, the API server reachable from pods,
/// the controllers that make a node Ready and Services work, and the scheduler.
pub fn control_plane_options() -> Options {
    Options {
        extra_tokens: vec![format!(
            "{},system:node:{NODE_NAME},{NODE_NAME}-uid,system:nodes",
            node_token()
        )],
        advertise_address: Some(NODE_IP.into()),
        extra_controllers: [
            "node-lifecycle-controller",
            "endpointslice-controller",
            "replicaset-controller",
            "deployment-controller",
            "disruption-controller",
        ]
        .map(String::from)
        .to_vec(),
        scheduler: true,
    }
}

fn node_token() -> String {
    format!("node-{}-{}", NODE_NAME, std::process::id())
}

/// What the host looked like before the node started.
#[derive(Clone, PartialEq)]
struct HostState {
    sysctls: Vec<(String, Option<String>)>,
    paths: Vec<(String, bool)>,
    nft_tables: BTreeSet<String>,
    mounts: BTreeSet<String>,
    links: BTreeSet<String>,
    cgroups: Vec<(PathBuf, bool)>,
}

fn sysctl_path(key: &str) -> PathBuf {
    Path::new("/proc/sys").join(key.replace('.', "/"))
}

fn read_sysctl(key: &str) -> Option<String> {
    std::fs::read_to_string(sysctl_path(key))
        .ok()
        .map(|v| v.trim().to_string())
}

fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn nft_tables() -> BTreeSet<String> {
    output("nft", &["list", "tables"])
        .lines()
        .filter_map(|l| l.strip_prefix("table "))
        .map(str::to_string)
        .collect()
}

/// Mount points, with mountinfo's octal escapes (\040 for a space) left as they are.
fn mounts() -> BTreeSet<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(str::to_string)
        .collect()
}

fn links() -> BTreeSet<String> {
    output("ip", &["-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

/// The `kubepods` directory of every cgroup hierarchy.
fn cgroup_roots() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            let dash = fields.iter().position(|f| *f == "-")?;
            let fstype = fields.get(dash + 1)?;
            (*fstype == "cgroup" || *fstype == "cgroup2")
                .then(|| Path::new(fields[4]).join("kubepods"))
        })
        .collect()
}

impl HostState {
    fn capture() -> HostState {
        HostState {
            sysctls: SYSCTLS
                .iter()
                .map(|k| (k.to_string(), read_sysctl(k)))
                .collect(),
            paths: HOST_PATHS
                .iter()
                .map(|p| (p.to_string(), Path::new(p).exists()))
                .collect(),
            nft_tables: nft_tables(),
            mounts: mounts(),
            links: links(),
            cgroups: cgroup_roots()
                .into_iter()
                .map(|p| {
                    let existed = p.exists();
                    (p, existed)
                })
                .collect(),
        }
    }
}

pub struct Node {
    dir: PathBuf,
    before: HostState,
    /// containerd, kubelet, kube-proxy (stopped in reverse order).
    processes: Vec<ChildGuard>,
    api: Api,
    socket: PathBuf,
    /// Ports seen on the bridge (checked after teardown).
    ports: BTreeSet<String>,
    torn_down: bool,
    _lock: std::fs::File,
    pub started_in: Duration,
}

/// Blocking access to the API server as admin (usable from Drop and from async tests).
#[derive(Clone)]
struct Api {
    port: u16,
    ca_pem: Vec<u8>,
    token: String,
}

impl Api {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<(u16, Value), String> {
        let api = self.clone();
        let (method, path) = (method.to_string(), path.to_string());
        std::thread::spawn(move || api.call_blocking(&method, &path, body))
            .join()
            .unwrap_or_else(|_| Err("the API call panicked".into()))
    }

    fn call_blocking(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(&self.ca_pem).map_err(|e| e.to_string())?,
            )
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?;
        let url = format!("https://127.0.0.1:{}{path}", self.port);
        let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let mut request = client
                .request(method.clone(), &url)
                .bearer_auth(&self.token);
            if let Some(body) = body {
                let content_type = if method == reqwest::Method::PATCH {
                    "application/merge-patch+json"
                } else {
                    "application/json"
                };
                request = request
                    .header("content-type", content_type)
                    .body(body.to_string());
            }
            let response = request.send().await.map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let value = response.json().await.unwrap_or(Value::Null);
            Ok((status, value))
        })
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<_> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn spawn(
    program: &Path,
    args: &[String],
    env: &[(&str, &str)],
    log: &Path,
    name: &str,
) -> ChildGuard {
    let file = std::fs::File::create(log).expect("log file");
    let child = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log"))
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
    ChildGuard {
        child,
        name: name.to_string(),
    }
}

fn wait(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Builds the pause image when missing (scripts/build-pause-image) and returns the archive.
pub fn pause_image() -> PathBuf {
    super::built_by("build-pause-image")
}

/// Missing host tools, each with the Debian package that provides it.
pub fn missing_tools() -> Vec<&'static str> {
    [
        ("/usr/bin/containerd", "containerd"),
        ("/usr/bin/ctr", "containerd"),
        ("/usr/sbin/runc", "runc"),
        ("/usr/lib/cni/bridge", "containernetworking-plugins"),
        ("/usr/lib/cni/host-local", "containernetworking-plugins"),
        ("/usr/sbin/nft", "nftables"),
    ]
    .into_iter()
    .filter(|(path, _)| !Path::new(path).exists())
    .map(|(_, package)| package)
    .collect()
}

impl Node {
    /// Starts containerd, kubelet and kube-proxy for `plane` (started with
    /// [`control_plane_options`]) in `dir`, and waits until the node is Ready and untainted.
    pub fn start(plane: &ControlPlane, dir: &Path) -> Node {
        let missing = missing_tools();
        assert!(
            missing.is_empty(),
            "install the node's runtime first: apt-get install -y {}",
            missing.join(" ")
        );
        let bin = plane.bin_dir().to_path_buf();
        let pause = pause_image();
        // One node per machine: kubelet and containerd share fixed host paths.
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/tmp/memgraph-address-injector-node.lock")
            .expect("node lock file");
        lock.lock().expect("lock the node lock file");

        let started = Instant::now();
        let dir = dir.join("node");
        std::fs::create_dir_all(&dir).expect("node dir");
        let before = HostState::capture();
        let mut node = Node {
            dir: dir.clone(),
            before,
            processes: Vec::new(),
            api: Api {
                port: plane.api_port,
                ca_pem: plane.ca_pem.clone(),
                token: plane.token.clone(),
            },
            socket: dir.join("containerd/containerd.sock"),
            ports: BTreeSet::new(),
            torn_down: false,
            _lock: lock,
            started_in: Duration::ZERO,
        };
        // From here on, a panic drops `node`, which tears down what was set up so far.
        node.network(plane.api_port);
        node.containerd(&pause);
        node.kubelet(plane, &bin);
        node.kube_proxy(plane, &bin);
        node.wait_ready();
        node.started_in = started.elapsed();
        node
    }

    fn network(&self, api_port: u16) {
        let steps: Vec<Vec<String>> = vec![
            vec!["link", "add", BRIDGE, "type", "bridge"],
            vec!["addr", "add", &format!("{NODE_IP}/24"), "dev", BRIDGE],
            vec!["link", "set", BRIDGE, "up"],
            // Untranslated ClusterIP traffic stays on the bridge instead of the default route.
            vec!["route", "add", SERVICE_RANGE, "dev", BRIDGE],
        ]
        .into_iter()
        .map(|s| s.into_iter().map(str::to_string).collect())
        .collect();
        for step in steps {
            let args: Vec<&str> = step.iter().map(String::as_str).collect();
            run("ip", &args).expect("node bridge");
        }
        // Forwarding on the bridge only (pod -> Service -> pod); the global switch stays off.
        std::fs::write(
            sysctl_path(&format!("net.ipv4.conf.{BRIDGE}.forwarding")),
            "1",
        )
        .expect("forwarding on the node bridge");
        let guard = format!(
            "table inet {GUARD_TABLE} {{
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname \"{BRIDGE}\" oifname != \"{BRIDGE}\" drop
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    tcp dport {api_port} iifname != {{ \"lo\", \"{BRIDGE}\" }} drop
  }}
}}
"
        );
        let file = self.dir.join("guard.nft");
        std::fs::write(&file, guard).expect("guard.nft");
        run("nft", &["-f", &file.display().to_string()]).expect("nftables guard table");
    }

    fn containerd(&mut self, pause: &Path) {
        let d = self.dir.join("containerd");
        let cni = self.dir.join("cni");
        std::fs::create_dir_all(&d).expect("containerd dir");
        std::fs::create_dir_all(cni.join("net.d")).expect("cni dir");
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  tolerate_missing_hugetlb_controller = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{netd}"
"#,
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = self.socket.display(),
            opt = d.join("opt").display(),
            netd = cni.join("net.d").display(),
        );
        std::fs::write(d.join("config.toml"), config).expect("containerd config");
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": NODE_NAME,
            "plugins": [{
                "type": "bridge",
                "bridge": BRIDGE,
                // No gateway address or masquerade: nothing turns on global forwarding.
                "isGateway": false,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{
                        "subnet": POD_SUBNET,
                        "rangeStart": "10.244.0.10",
                        "rangeEnd": "10.244.0.250",
                        "gateway": NODE_IP
                    }]],
                    // The Service range only: pods have no default route off the machine.
                    "routes": [{"dst": SERVICE_RANGE, "gw": NODE_IP}],
                    "dataDir": cni.join("ipam").display().to_string()
                }
            }]
        });
        std::fs::write(
            cni.join("net.d/10-mai-node.conflist"),
            serde_json::to_string_pretty(&conflist).expect("conflist"),
        )
        .expect("CNI config");
        let log = self.dir.join("containerd.log");
        // A closed loopback port as proxy: a missing image fails at once, nothing leaves.
        let proxy = format!("http://127.0.0.1:{}", free_port());
        self.processes.push(spawn(
            Path::new("/usr/bin/containerd"),
            &[
                "--config".into(),
                d.join("config.toml").display().to_string(),
            ],
            &[
                ("HTTP_PROXY", &proxy),
                ("HTTPS_PROXY", &proxy),
                ("NO_PROXY", ""),
            ],
            &log,
            "containerd",
        ));
        let up = wait(Duration::from_secs(30), || {
            self.socket.exists() && self.ctr(&["version"]).is_ok()
        });
        assert!(up, "containerd did not start:\n{}", tail(&log));
        self.import_image(pause);
    }

    fn ctr(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("/usr/bin/ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "k8s.io"])
            .args(args)
            .output()
            .map_err(|e| format!("ctr: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "ctr {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Imports an image archive (docker-archive or OCI) into the node's containerd.
    pub fn import_image(&self, archive: &Path) {
        let archive = archive.display().to_string();
        if let Err(e) = self.ctr(&["images", "import", &archive]) {
            panic!("import {archive}: {e}");
        }
    }

    fn kubelet(&mut self, plane: &ControlPlane, bin: &Path) {
        let d = self.dir.join("kubelet");
        std::fs::create_dir_all(&d).expect("kubelet dir");
        let ca = plane.dir.join("pki/ca.crt");
        let kubeconfig = d.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            kubeconfig_text(plane.api_port, &ca, &node_token()),
        )
        .expect("kubelet kubeconfig");
        // The node's identity may act as a node (RBAC; there is no Node authorizer here).
        let binding = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": format!("{NODE_NAME}-system-node")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:node"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": format!("system:node:{NODE_NAME}")}]
        });
        match self.api.call(
            "POST",
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            Some(binding),
        ) {
            Ok((201 | 409, _)) => {}
            other => panic!("ClusterRoleBinding system:node: {other:?}"),
        }
        let config = format!(
            r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://{sock}
imageServiceEndpoint: unix://{sock}
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
oomScoreAdj: 0
makeIPTablesUtilChains: false
resolvConf: ""
address: {NODE_IP}
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz}
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: false
  x509:
    clientCAFile: {ca}
authorization:
  mode: AlwaysAllow
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
# Imported images cannot be pulled again: never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
podLogsDir: {logs}
volumePluginDir: {plugins}
serializeImagePulls: false
registerNode: true
nodeStatusUpdateFrequency: 2s
syncFrequency: 5s
fileCheckFrequency: 5s
"#,
            sock = self.socket.display(),
            port = free_port(),
            healthz = free_port(),
            ca = ca.display(),
            logs = d.join("pod-logs").display(),
            plugins = d.join("volume-plugins").display(),
        );
        std::fs::write(d.join("config.yaml"), config).expect("kubelet config");
        let log = self.dir.join("kubelet.log");
        self.processes.push(spawn(
            &bin.join("kubelet"),
            &[
                format!("--config={}", d.join("config.yaml").display()),
                format!("--kubeconfig={}", kubeconfig.display()),
                format!("--root-dir={}", d.join("root").display()),
                format!("--hostname-override={NODE_NAME}"),
                format!("--node-ip={NODE_IP}"),
                "--v=1".into(),
            ],
            &[],
            &log,
            "kubelet",
        ));
    }

    fn kube_proxy(&mut self, plane: &ControlPlane, bin: &Path) {
        let config = format!(
            r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clientConnection:
  kubeconfig: {kubeconfig}
hostnameOverride: {NODE_NAME}
clusterCIDR: {POD_SUBNET}
nodePortAddresses: ["{NODE_IP}/32"]
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:{healthz}
metricsBindAddress: 127.0.0.1:{metrics}
# Leave the host's conntrack settings alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
"#,
            kubeconfig = plane.kubeconfig.display(),
            healthz = free_port(),
            metrics = free_port(),
        );
        let file = self.dir.join("kube-proxy.yaml");
        std::fs::write(&file, config).expect("kube-proxy config");
        self.processes.push(spawn(
            &bin.join("kube-proxy"),
            &[format!("--config={}", file.display()), "--v=1".into()],
            &[],
            &self.dir.join("kube-proxy.log"),
            "kube-proxy",
        ));
    }

    fn wait_ready(&mut self) {
        let path = format!("/api/v1/nodes/{NODE_NAME}");
        let ready = wait(Duration::from_secs(90), || {
            let Ok((200, node)) = self.api.call("GET", &path, None) else {
                return false;
            };
            let is_ready = node["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            let untainted = node["spec"]["taints"]
                .as_array()
                .is_none_or(|t| t.is_empty());
            is_ready && untainted
        });
        if !ready {
            for process in &mut self.processes {
                if let Ok(Some(status)) = process.child.try_wait() {
                    eprintln!("{} exited with {status}", process.name);
                }
            }
            panic!(
                "node {NODE_NAME} did not become Ready:\n--- kubelet:\n{}\n--- containerd:\n{}",
                tail(&self.dir.join("kubelet.log")),
                tail(&self.dir.join("containerd.log"))
            );
        }
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Stops everything and restores the host; returns what differs from before the start
    /// (empty when the host is restored).
    pub fn teardown(&mut self) -> Vec<String> {
        if self.torn_down {
            return self.leftovers();
        }
        self.torn_down = true;
        self.drain();
        while let Some(mut process) = self.processes.pop() {
            if process.name == "containerd" {
                self.remove_containers();
            }
            if process.terminate(Duration::from_secs(10)).is_none() {
                let _ = process.child.kill();
                let _ = process.child.wait();
            }
        }
        self.kill_leftover_processes();
        self.unmount();
        self.remove_cgroups();
        for table in self.new_nft_tables() {
            let mut args = vec!["delete", "table"];
            args.extend(table.split(' '));
            let _ = run("nft", &args);
        }
        if !self.before.links.contains(BRIDGE) {
            self.ports.extend(bridge_ports());
            let _ = run("ip", &["link", "del", BRIDGE]);
        }
        for (key, value) in &self.before.sysctls {
            if let Some(value) = value {
                if read_sysctl(key).as_ref() != Some(value) {
                    let _ = std::fs::write(sysctl_path(key), value);
                }
            }
        }
        for (path, existed) in &self.before.paths {
            if !existed {
                let _ = std::fs::remove_dir_all(path);
            }
        }
        self.leftovers()
    }

    /// Pods stopped through kubelet (CNI DEL, volumes unmounted): cordon, delete every pod
    /// bound to the node at once, and wait until containerd runs no task.
    fn drain(&mut self) {
        self.ports.extend(bridge_ports());
        if !self.processes.iter().any(|p| p.name == "kubelet") {
            return;
        }
        let _ = self.api.call(
            "PATCH",
            &format!("/api/v1/nodes/{NODE_NAME}"),
            Some(json!({"spec": {"unschedulable": true}})),
        );
        let list = format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{NODE_NAME}");
        if let Ok((200, pods)) = self.api.call("GET", &list, None) {
            for pod in pods["items"].as_array().into_iter().flatten() {
                let meta = &pod["metadata"];
                let path = format!(
                    "/api/v1/namespaces/{}/pods/{}",
                    meta["namespace"].as_str().unwrap_or_default(),
                    meta["name"].as_str().unwrap_or_default()
                );
                let _ = self
                    .api
                    .call("DELETE", &path, Some(json!({"gracePeriodSeconds": 0})));
            }
        }
        wait(Duration::from_secs(30), || {
            self.ctr(&["tasks", "ls", "-q"])
                .is_ok_and(|out| out.trim().is_empty())
        });
    }

    /// Whatever kubelet left: tasks killed and deleted, containers removed.
    fn remove_containers(&self) {
        let Ok(tasks) = self.ctr(&["tasks", "ls", "-q"]) else {
            return;
        };
        for task in tasks.split_whitespace() {
            let _ = self.ctr(&["tasks", "kill", "--all", "--signal", "SIGKILL", task]);
        }
        for task in tasks.split_whitespace() {
            let _ = self.ctr(&["tasks", "delete", "--force", task]);
        }
        if let Ok(containers) = self.ctr(&["containers", "ls", "-q"]) {
            for container in containers.split_whitespace() {
                let _ = self.ctr(&["containers", "delete", container]);
            }
        }
    }

    /// Processes of this node that outlived their parents: shims (their command line names
    /// the node's directory) and anything still in a kubepods cgroup.
    fn node_processes(&self) -> Vec<(u32, String)> {
        let dir = self.dir.display().to_string();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == std::process::id() {
                continue;
            }
            let cmdline = std::fs::read(entry.path().join("cmdline"))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .unwrap_or_default();
            let cgroup = std::fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
            if cmdline.contains(&dir) || cgroup.lines().any(|l| l.contains(":/kubepods")) {
                found.push((pid, cmdline.trim().to_string()));
            }
        }
        found
    }

    fn kill_leftover_processes(&self) {
        for _ in 0..3 {
            let left = self.node_processes();
            if left.is_empty() {
                return;
            }
            for (pid, _) in left {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn new_mounts(&self) -> Vec<String> {
        let dir = self.dir.display().to_string();
        let mut new: Vec<String> = mounts()
            .difference(&self.before.mounts)
            .filter(|m| m.starts_with(&dir) || MOUNT_ROOTS.iter().any(|r| m.starts_with(r)))
            .cloned()
            .collect();
        // Deepest first.
        new.sort_by_key(|m| std::cmp::Reverse(m.len()));
        new
    }

    fn unmount(&self) {
        for _ in 0..3 {
            let new = self.new_mounts();
            if new.is_empty() {
                break;
            }
            for mount in new {
                let path = mount.replace("\\040", " ");
                let _ = Command::new("umount")
                    .args(["--lazy", &path])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }

    fn remove_cgroups(&self) {
        for (root, existed) in &self.before.cgroups {
            if *existed || !root.exists() {
                continue;
            }
            let mut dirs = Vec::new();
            collect_dirs(root, &mut dirs);
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for dir in dirs {
                let _ = std::fs::remove_dir(&dir);
            }
        }
    }

    /// New nftables tables of this node: kube-proxy's, the guard, and any with Kubernetes
    /// chains (iptables-nft). Other agents' tables on a shared machine are not ours to judge.
    fn new_nft_tables(&self) -> Vec<String> {
        nft_tables()
            .difference(&self.before.nft_tables)
            .filter(|table| {
                let name = table.rsplit(' ').next().unwrap_or_default();
                name == "kube-proxy" || name == GUARD_TABLE || {
                    let mut args = vec!["list", "table"];
                    args.extend(table.split(' '));
                    output("nft", &args).contains("KUBE-")
                }
            })
            .cloned()
            .collect()
    }

    /// What differs from the host before the start, one line each.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        for (pid, cmdline) in self.node_processes() {
            left.push(format!("process {pid}: {cmdline}"));
        }
        for mount in self.new_mounts() {
            left.push(format!("mount {mount}"));
        }
        for (root, existed) in &self.before.cgroups {
            if !existed && root.exists() {
                left.push(format!("cgroup {}", root.display()));
            }
        }
        for table in self.new_nft_tables() {
            left.push(format!("nftables table {table}"));
        }
        let now = links();
        for link in self.ports.iter().chain(bridge_ports().iter()) {
            if now.contains(link) && !self.before.links.contains(link) {
                left.push(format!("network link {link}"));
            }
        }
        if now.contains(BRIDGE) && !self.before.links.contains(BRIDGE) {
            left.push(format!("network link {BRIDGE}"));
        }
        for (key, value) in &self.before.sysctls {
            let now = read_sysctl(key);
            if &now != value {
                left.push(format!("sysctl {key} = {now:?}, was {value:?}"));
            }
        }
        for (path, existed) in &self.before.paths {
            if !existed && Path::new(path).exists() {
                left.push(format!("host path {path}"));
            }
        }
        left
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if !self.torn_down {
            let left = self.teardown();
            if !left.is_empty() {
                eprintln!("node teardown left: {left:#?}");
            }
        }
    }
}

/// The node bridge's ports (the pods' host-side veths).
fn bridge_ports() -> BTreeSet<String> {
    output("ip", &["-o", "link", "show", "master", BRIDGE])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_dirs(&entry.path(), out);
        }
    }
}

fn kubeconfig_text(port: u16, ca: &Path, token: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: https://127.0.0.1:{port}
    certificate-authority: {ca}
users:
- name: node
  user:
    token: {token}
contexts:
- name: e2e
  context:
    cluster: e2e
    user: node
current-context: e2e
",
        ca = ca.display()
    )
}
