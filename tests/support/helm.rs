//! The `helm` CLI (built from its Go module by scripts/build-helm, see tests/helm-tool) run
//! against the chart in manifests/helm, and the API-server side of checking its output:
//! CRDs from tests/fixtures/crds and server-side dry-run applies.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::discovery::{Discovery, Scope};
use kube::Client;
use serde_json::Value;

use super::chart::wait_for;

pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/helm/memgraph-address-injector")
}

/// Builds helm when missing (a no-op when cached) and returns its path.
pub fn binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| super::built_by("build-helm")).clone()
}

/// helm with its own config/cache/data homes (nothing written to ~/.config/helm) and,
/// optionally, a kubeconfig.
pub struct Helm {
    bin: PathBuf,
    home: tempfile::TempDir,
    kubeconfig: Option<PathBuf>,
}

impl Helm {
    pub fn new(kubeconfig: Option<&Path>) -> Helm {
        Helm {
            bin: binary(),
            home: tempfile::tempdir().expect("helm home"),
            kubeconfig: kubeconfig.map(Path::to_path_buf),
        }
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let home = self.home.path();
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_DATA_HOME", home.join("data"))
            .env_remove("HELM_NAMESPACE")
            .env_remove("HELM_KUBECONTEXT")
            .stdin(Stdio::null());
        match &self.kubeconfig {
            Some(path) => cmd.env("KUBECONFIG", path),
            // Nothing to talk to: make sure no ambient cluster is used.
            None => cmd.env("KUBECONFIG", home.join("no-kubeconfig")),
        };
        cmd.output()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.bin.display()))
    }

    /// Runs helm, panics with its output unless it succeeds, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "helm {} failed ({}):\n{}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs helm, panics if it succeeds, returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "helm {} succeeded but should have failed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `helm template RELEASE CHART -n NAMESPACE ARGS...`, parsed.
    pub fn template(&self, release: &str, namespace: &str, args: &[&str]) -> Vec<Value> {
        let chart = chart_dir().display().to_string();
        let mut all = vec!["template", release, chart.as_str(), "-n", namespace];
        all.extend_from_slice(args);
        documents(&self.ok(&all))
    }
}

/// The non-empty documents of a multi-document YAML stream.
pub fn documents(text: &str) -> Vec<Value> {
    memgraph_address_injector::decision::state::parse_documents(text, "helm output")
        .expect("YAML documents")
}

pub fn documents_of_file(path: &Path) -> Vec<Value> {
    documents(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

pub fn kind_name(doc: &Value) -> (String, String) {
    (
        doc["kind"].as_str().unwrap_or_default().to_string(),
        doc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

/// The one document of this kind (and name, when given).
pub fn find<'d>(docs: &'d [Value], kind: &str, name: Option<&str>) -> &'d Value {
    let found: Vec<_> = docs
        .iter()
        .filter(|d| d["kind"] == kind && name.is_none_or(|n| d["metadata"]["name"] == n))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {kind} {name:?}, found {}: {:?}",
        found.len(),
        docs.iter().map(kind_name).collect::<Vec<_>>()
    );
    found[0]
}

pub fn count(docs: &[Value], kind: &str) -> usize {
    docs.iter().filter(|d| d["kind"] == kind).count()
}

/// Creates every CRD in tests/fixtures/crds and waits until each is Established and served
/// by discovery (the discovery controller can lag behind the condition).
pub async fn create_crds(client: &Client) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/crds");
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    let mut kinds = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/fixtures/crds")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for file in files {
        for doc in documents_of_file(&file) {
            let crd: CustomResourceDefinition = serde_json::from_value(doc).expect("a CRD");
            let name = crd.metadata.name.clone().expect("CRD name");
            for version in crd.spec.versions.iter().filter(|v| v.served) {
                kinds.push(GroupVersionKind::gvk(
                    &crd.spec.group,
                    &version.name,
                    &crd.spec.names.kind,
                ));
            }
            api.create(&PostParams::default(), &crd)
                .await
                .unwrap_or_else(|e| panic!("CRD {name} from {}: {e}", file.display()));
            names.push(name);
        }
    }
    for name in names {
        wait_for(
            Duration::from_secs(30),
            &format!("CRD {name} Established"),
            || async {
                let crd = api.get(&name).await.ok()?;
                crd.status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            },
        )
        .await;
    }
    wait_for(
        Duration::from_secs(30),
        "every CRD's kind in discovery",
        || async {
            let discovery = Discovery::new(client.clone()).run().await.ok()?;
            kinds
                .iter()
                .all(|gvk| discovery.resolve_gvk(gvk).is_some())
                .then_some(())
        },
    )
    .await;
}

/// Server-side apply of each document with `dryRun=All` and `fieldValidation=Strict`: the
/// API server (and the CRDs' schemas) must accept every object as rendered, unknown or
/// duplicate fields included. Returns an error naming the first rejected object.
pub async fn dry_run_apply(client: &Client, docs: &[Value]) -> Result<(), String> {
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .map_err(|e| format!("discovery: {e}"))?;
    for doc in docs {
        let (kind, name) = kind_name(doc);
        let obj: DynamicObject =
            serde_json::from_value(doc.clone()).map_err(|e| format!("{kind} {name}: {e}"))?;
        let types = obj
            .types
            .clone()
            .ok_or_else(|| format!("{kind} {name}: no apiVersion/kind"))?;
        let gvk = GroupVersionKind::try_from(&types).map_err(|e| format!("{kind}: {e}"))?;
        let (resource, caps) = discovery
            .resolve_gvk(&gvk)
            .ok_or_else(|| format!("{kind} {name}: {gvk:?} is not served"))?;
        let api: Api<DynamicObject> = match (caps.scope, obj.metadata.namespace.as_deref()) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, &resource),
            (Scope::Namespaced, None) => return Err(format!("{kind} {name}: no namespace")),
            (Scope::Cluster, _) => Api::all_with(client.clone(), &resource),
        };
        let params = PatchParams::apply("mai-helm-test")
            .force()
            .dry_run()
            .validation_strict();
        api.patch(&name, &params, &Patch::Apply(doc))
            .await
            .map_err(|e| format!("{kind} {name} rejected: {e}"))?;
    }
    Ok(())
}
