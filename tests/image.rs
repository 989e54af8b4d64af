//! The container image, run the way the Deployment runs it. `scripts/build-image` builds it
//! (podman + runc, `FROM scratch`, nothing pulled); this test loads the OCI archive it wrote
//! into a podman store of its own and runs it with a read-only root filesystem, uid/gid 65532,
//! no capabilities and no-new-privileges, the chart's environment (image CMD `serve`),
//! `gen-certs` certificates mounted read-only at the chart's Secret path and a state file as
//! the cluster view (no API server here). Checks: the image config matches the Dockerfile's
//! final stage, the process really runs as 65532 with no capabilities on a read-only root,
//! /readyz, one admission over TLS, and a clean exit on SIGTERM as PID 1.
//!
//! Networking: `--network host` with both listeners on 127.0.0.1 and free ports, so the test
//! reaches the container without creating network namespaces or touching the host's network.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use support::*;

const CERTS_IN_POD: &str = "/etc/webhook/certs";
const STATE_IN_POD: &str = "/etc/webhook/cluster-state.yaml";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Why this machine cannot run the test, or None when podman and the OCI runtime are there.
fn missing_tools(runtime: &Path) -> Option<String> {
    let podman = Command::new("podman")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !matches!(podman, Ok(s) if s.success()) {
        return Some("podman is not installed (apt-get install -y podman runc)".into());
    }
    if !runtime.exists() {
        return Some(format!(
            "the OCI runtime {} is missing (apt-get install -y runc, or set OCI_RUNTIME)",
            runtime.display()
        ));
    }
    None
}

/// A podman store of this test's own, under a short /tmp path (conmon's socket paths are
/// limited to 108 bytes). Drop removes the containers, the images and the directory, also
/// when the test fails, and /var/lib/containers when podman created it during the test.
struct Podman {
    dir: tempfile::TempDir,
    runtime: PathBuf,
    had_var_lib_containers: bool,
}

impl Podman {
    fn new(runtime: PathBuf) -> Podman {
        Podman {
            dir: tempfile::Builder::new()
                .prefix("mai-podman")
                .tempdir_in("/tmp")
                .expect("a temporary directory"),
            runtime,
            had_var_lib_containers: Path::new("/var/lib/containers").exists(),
        }
    }

    fn cmd(&self) -> Command {
        let dir = self.dir.path();
        let mut cmd = Command::new("podman");
        cmd.arg("--root")
            .arg(dir.join("root"))
            .arg("--runroot")
            .arg(dir.join("run"))
            .arg("--tmpdir")
            .arg(dir.join("tmp"))
            .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs"])
            .args(["--events-backend", "none", "--runtime"])
            .arg(&self.runtime);
        cmd
    }

    /// Runs podman with `args`; panics with its stderr when it fails.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().expect("run podman");
        assert!(
            out.status.success(),
            "podman {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            let _ = self
                .cmd()
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        quiet(&["rm", "--all", "--force", "--time", "0"]);
        quiet(&["rmi", "--all", "--force"]);
        if !self.had_var_lib_containers {
            // podman's blob-info cache for root always lands there.
            let _ = std::fs::remove_dir_all("/var/lib/containers");
        }
    }
}

/// `scripts/build-image`'s result: the image name and its OCI archive.
fn build_image() -> (String, PathBuf) {
    let out: Output = Command::new(repo().join("scripts/build-image"))
        .current_dir(repo())
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/build-image");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "scripts/build-image failed");
    let image = stdout
        .lines()
        .find_map(|l| l.strip_prefix("image: "))
        .expect("build-image prints the image name")
        .to_string();
    let archive = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("archive: "))
        .filter_map(|l| l.split_whitespace().next())
        .find(|p| p.ends_with(".oci.tar"))
        .expect("build-image prints the OCI archive's path");
    (image, repo().join(archive))
}

/// The JSON array of the last `directive` line of the Dockerfile (its final stage).
fn dockerfile_array(dockerfile: &str, directive: &str) -> Value {
    let line = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix(directive))
        .next_back()
        .unwrap_or_else(|| panic!("the Dockerfile has no {directive}"));
    serde_json::from_str(line.trim()).expect("an exec-form JSON array")
}

/// Fields of `/proc/<pid>/status`, e.g. `Uid` → "65532\t65532\t65532\t65532".
fn proc_status(pid: &str, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

#[tokio::test]
async fn image_runs_like_the_deployment() {
    let runtime = PathBuf::from(
        std::env::var("OCI_RUNTIME").unwrap_or_else(|_| "/usr/sbin/runc".to_string()),
    );
    if let Some(reason) = missing_tools(&runtime) {
        println!("skipped: {reason}");
        return;
    }
    let start = Instant::now();
    let (image, archive) = build_image();
    let built = start.elapsed();

    let podman = Podman::new(runtime);
    podman.ok(&["load", "--input", archive.to_str().unwrap()]);

    // The image's config is the Dockerfile's final stage: same user, entrypoint and command,
    // and the binary where the Dockerfile copies it.
    let config: Value = serde_json::from_str(&podman.ok(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config}}",
        &image,
    ]))
    .expect("image config JSON");
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile");
    let user = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("USER "))
        .next_back()
        .expect("a USER line");
    assert_eq!(config["User"], user.trim());
    assert_eq!(config["User"], "65532:65532");
    let entrypoint = dockerfile_array(&dockerfile, "ENTRYPOINT ");
    assert_eq!(config["Entrypoint"], entrypoint);
    assert_eq!(config["Cmd"], dockerfile_array(&dockerfile, "CMD "));
    assert_eq!(config["Cmd"], json!(["serve"]));
    assert!(
        dockerfile
            .lines()
            .any(|l| l.starts_with("COPY --from=builder")
                && l.trim_end().ends_with(entrypoint[0].as_str().unwrap())),
        "the Dockerfile copies the binary to {}",
        entrypoint[0]
    );
    assert_eq!(
        config["Labels"]["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );

    // Certificates as a Secret volume presents them: files 0644 (defaultMode) in a directory
    // the nonroot user can enter, mounted read-only.
    let work = tempfile::tempdir().unwrap();
    let certs = work.path().join("certs");
    gen_certs(&certs, &["127.0.0.1"]);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&certs, std::fs::Permissions::from_mode(0o755)).unwrap();
    for file in ["ca.crt", "tls.crt", "tls.key"] {
        std::fs::set_permissions(certs.join(file), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let state = fixture("states/nodeport.yaml");

    let port = free_port();
    let health_port = free_port();
    let name = format!("mai-image-test-{}", std::process::id());
    let certs_mount = format!("{}:{CERTS_IN_POD}:ro", certs.display());
    let state_mount = format!("{}:{STATE_IN_POD}:ro", state.display());
    let env = [
        format!("MAI_LISTEN=127.0.0.1:{port}"),
        format!("MAI_HEALTH_LISTEN=127.0.0.1:{health_port}"),
        format!("MAI_TLS_CERT={CERTS_IN_POD}/tls.crt"),
        format!("MAI_TLS_KEY={CERTS_IN_POD}/tls.key"),
        "MAI_ON_PENDING=deny".to_string(),
        "MAI_REQUEST_BUDGET_MS=3000".to_string(),
        format!("MAI_CLUSTER_STATE={STATE_IN_POD}"),
        // SIGTERM → exit quickly: no Service routes here that readiness has to drain.
        "MAI_SHUTDOWN_DELAY_SECONDS=1".to_string(),
        "MAI_LOG=info,rustls=error".to_string(),
    ];
    let mut run: Vec<&str> = vec![
        "run",
        "--detach",
        "--name",
        &name,
        "--pull=never",
        "--network",
        "host",
        // The Deployment's securityContext: readOnlyRootFilesystem (and no writable tmpfs that
        // podman would add by default), runAsUser/Group 65532, drop ALL,
        // allowPrivilegeEscalation false.
        "--read-only",
        "--read-only-tmpfs=false",
        "--user",
        "65532:65532",
        "--cap-drop=ALL",
        "--security-opt",
        "no-new-privileges",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "--volume",
        &certs_mount,
        "--volume",
        &state_mount,
    ];
    for e in &env {
        run.extend(["--env", e]);
    }
    // No command: the image's CMD ["serve"], as the chart's args.
    run.push(&image);
    let started = Instant::now();
    podman.ok(&run);
    let logs = || {
        let out = podman.cmd().args(["logs", &name]).output();
        out.map(|o| {
            String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
        })
        .unwrap_or_default()
    };

    let deadline = Instant::now() + Duration::from_secs(60);
    while http_status(health_port, "/readyz") != Some(200) {
        let running = podman.ok(&["inspect", "--format", "{{.State.Running}}", &name]);
        assert_eq!(running, "true", "the container exited:\n{}", logs());
        assert!(
            Instant::now() < deadline,
            "/readyz not 200 after 60 s:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready = started.elapsed();
    assert_eq!(http_status(health_port, "/livez"), Some(200));

    // What the kernel says about the webhook process, not what podman was asked for.
    let pid = podman.ok(&["inspect", "--format", "{{.State.Pid}}", &name]);
    assert_eq!(proc_status(&pid, "Uid"), "65532\t65532\t65532\t65532");
    assert_eq!(proc_status(&pid, "Gid"), "65532\t65532\t65532\t65532");
    assert_eq!(proc_status(&pid, "CapEff"), "0000000000000000");
    assert_eq!(proc_status(&pid, "CapBnd"), "0000000000000000");
    assert_eq!(proc_status(&pid, "NoNewPrivs"), "1");
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    // The last mount on "/" is the one the process sees; field 6 holds its options.
    let root = mountinfo
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .rfind(|f| f.get(4) == Some(&"/"))
        .expect("a root mount");
    assert!(
        root[5].split(',').any(|o| o == "ro"),
        "root mounted {}",
        root[5]
    );

    // One admission over TLS, verified against gen-certs' CA: a data pod behind a NodePort
    // gets the node's external address.
    let ca = std::fs::read(certs.join("ca.crt")).unwrap();
    let client = https_client(&ca);
    let pod = yaml_fixture("pods/data-3x.yaml");
    let review = review_of(&pod, "memgraph", "9d0b6c1e-0000-4c1d-9a55-00000000000a");
    let response = client
        .post(format!("https://127.0.0.1:{port}/mutate"))
        .header("content-type", "application/json")
        .body(review.to_string())
        .send()
        .await
        .expect("POST /mutate");
    assert_eq!(response.status(), 200);
    let response: Value = response.json().await.expect("AdmissionReview JSON");
    assert_eq!(
        response["response"]["uid"],
        "9d0b6c1e-0000-4c1d-9a55-00000000000a"
    );
    assert_eq!(response["response"]["allowed"], true);
    let patch = base64::engine::general_purpose::STANDARD
        .decode(response["response"]["patch"].as_str().expect("a patch"))
        .expect("base64");
    let patch: json_patch::Patch = serde_json::from_slice(&patch).expect("JSON Patch");
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &patch).expect("the patch applies");
    assert_eq!(
        patched["spec"]["containers"][0]["env"],
        json!([{"name": "MEMGRAPH_EXTERNAL_BOLT_ADDRESS", "value": "203.0.113.10:32000"}])
    );

    // SIGTERM, as the kubelet sends it: the binary is PID 1 and must handle it itself.
    let stopping = Instant::now();
    podman.ok(&["stop", "--time", "30", &name]);
    let stopped = stopping.elapsed();
    let code = podman.ok(&["inspect", "--format", "{{.State.ExitCode}}", &name]);
    assert_eq!(code, "0", "exit code after SIGTERM:\n{}", logs());
    assert!(stopped < Duration::from_secs(25), "stop took {stopped:?}");

    println!(
        "image test: build-image {:.1}s, container ready {:.2}s after run, SIGTERM exit {:.2}s, total {:.1}s",
        built.as_secs_f64(),
        ready.as_secs_f64(),
        stopped.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
}

/// `docker build` sees only what .dockerignore lets through: every path the Dockerfile
/// COPYs from the context must be let through (crates/ and build.rs once were not, and the
/// build failed on a machine with Docker).
#[test]
fn the_docker_context_holds_what_the_dockerfile_copies() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    let rules: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(rules.first(), Some(&"*"), "the context starts from nothing");
    let allowed: Vec<&str> = rules
        .iter()
        .filter_map(|r| r.strip_prefix('!'))
        .map(|r| r.trim_end_matches('/'))
        .collect();
    let mut sources = Vec::new();
    for line in dockerfile.lines().map(str::trim) {
        let Some(args) = line.strip_prefix("COPY ") else {
            continue;
        };
        if args.starts_with("--from") {
            continue;
        }
        let words: Vec<&str> = args.split_whitespace().collect();
        sources.extend(words[..words.len() - 1].iter().map(|w| w.to_string()));
    }
    assert!(sources.len() >= 5, "{sources:?}");
    for source in &sources {
        let top = source.trim_start_matches("./").split('/').next().unwrap();
        assert!(
            allowed.contains(&top),
            "the Dockerfile copies {source}, which .dockerignore keeps out of the context"
        );
        assert!(
            repo().join(top).exists(),
            "{source} is not in the repository"
        );
    }
}
