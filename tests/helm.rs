//! The Helm chart (manifests/helm/memgraph-address-injector) with a real `helm` (built from
//! its Go module by scripts/build-helm): lint, the renderings of the main value combinations
//! compared with the kustomize manifests, schema rejections, a server-side dry run of every
//! rendering against a real kube-apiserver (with cert-manager's and the Prometheus
//! Operator's CRDs), and `helm install` / `upgrade` / `uninstall` with the webhook as a
//! process of this test and a Memgraph HA-shaped StatefulSet mutated through it.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service};
use kube::api::{Api, PostParams};
use kube::Client;
use serde_json::{json, Value};
use support::chart::*;
use support::control_plane::ControlPlane;
use support::helm::*;

const RELEASE: &str = "memgraph-address-injector";
const NS: &str = "memgraph-address-injector";

/// The value combinations rendered, dry-run applied and (the first) installed.
fn renderings() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        ("defaults (generated certificates)", vec![]),
        (
            "cert-manager, chart-made CA issuer",
            vec!["--set", "certificates.mode=certManager"],
        ),
        (
            "cert-manager, a ClusterIssuer",
            vec![
                "--set",
                "certificates.mode=certManager",
                "--set",
                "certificates.certManager.issuerRef.name=corp-ca",
                "--set",
                "certificates.certManager.issuerRef.kind=ClusterIssuer",
                "--set",
                "certificates.certManager.issuerRef.group=cert-manager.io",
            ],
        ),
        (
            "existing Secret",
            vec![
                "--set",
                "certificates.mode=existingSecret",
                "--set",
                "certificates.existingSecret.name=my-webhook-tls",
                "--set",
                "webhook.caBundle=Q0EK",
            ],
        ),
        (
            "onPending allow and every decision value",
            vec![
                "--set",
                "config.onPending=allow",
                "--set",
                "config.envName=MG_EXTERNAL_BOLT",
                "--set",
                "config.nodeAddressTypes={InternalIP,ExternalIP}",
                "--set",
                "config.coordinatorFlag=--advertised-bolt={address}",
                "--set",
                "config.requestBudgetMs=1500",
                "--set",
                "webhook.failurePolicy=Ignore",
                "--set",
                "webhook.timeoutSeconds=10",
                "--set",
                "webhook.excludeNamespaces={kube-system,monitoring}",
                "--set",
                "config.nodeSelector=node-role.example.com/edge",
                "--set",
                "routing.reconcile.enabled=true",
                "--set",
                "routing.reconcile.credentialsSecret=memgraph-bolt",
                "--set",
                "routing.reconcile.boltTls=verify",
                "--set",
                "routing.reconcile.caSecret=memgraph-bolt-ca",
                "--set",
                "routing.reconcile.namespaces={memgraph-ha,memgraph-b}",
                "--set",
                "routing.reconcile.podSelector=app.kubernetes.io/instance=memgraph-ha",
            ],
        ),
        (
            "PDB off, one replica, priorityClass, no spread",
            vec![
                "--set",
                "podDisruptionBudget.enabled=false",
                "--set",
                "replicas=1",
                "--set",
                "priorityClassName=system-cluster-critical",
                "--set-json",
                "topologySpreadConstraints=[]",
            ],
        ),
        (
            "ServiceMonitor on",
            vec![
                "--set",
                "serviceMonitor.enabled=true",
                "--set",
                "serviceMonitor.labels.release=prometheus",
            ],
        ),
        (
            "NetworkPolicy on",
            vec![
                "--set",
                "networkPolicy.enabled=true",
                "--set-json",
                r#"networkPolicy.apiServer=[{"ipBlock":{"cidr":"10.0.0.10/32"}}]"#,
            ],
        ),
        (
            "ingress-nginx on, its own ConfigMap",
            vec![
                "--set",
                "ingressNginx.enabled=true",
                "--set",
                "ingressNginx.tcpServices=edge/memgraph-tcp",
                "--set",
                "ingressNginx.controller=edge/edge-controller",
            ],
        ),
    ]
}

fn env_of(deployment: &Value) -> Vec<(String, String)> {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["value"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn env_var(deployment: &Value, name: &str) -> Option<String> {
    env_of(deployment)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
}

fn no_space(text: &str) -> String {
    text.split_whitespace().collect()
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn unb64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64")
}

#[test]
fn helm_lint_passes_for_each_certificate_mode() {
    let helm = Helm::new(None);
    let chart = chart_dir().display().to_string();
    for (what, args) in renderings() {
        let mut all = vec!["lint", chart.as_str(), "--strict"];
        all.extend(args);
        let out = helm.ok(&all);
        assert!(
            out.contains("1 chart(s) linted, 0 chart(s) failed"),
            "{what}: {out}"
        );
    }
}

/// With the release named like the kustomize base, the chart renders the same objects with
/// the same settings (the Namespace is Helm's: --create-namespace; the Secret is the
/// chart's generated certificate).
#[test]
fn renders_the_same_objects_as_the_kustomize_base() {
    let helm = Helm::new(None);
    // The chart defaults to the published image; the base to a locally imported one.
    let published = helm.template(RELEASE, NS, &[]);
    assert_eq!(
        find(&published, "Deployment", None)["spec"]["template"]["spec"]["containers"][0]["image"],
        format!(
            "ghcr.io/memgraph-address-injector/memgraph-address-injector:{}",
            env!("CARGO_PKG_VERSION")
        )
    );
    let chart = helm.template(
        RELEASE,
        NS,
        &["--set", "image.repository=memgraph-address-injector"],
    );
    let base_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/base");
    let kustomization = documents_of_file(&base_dir.join("kustomization.yaml"));
    let base: Vec<Value> = kustomization[0]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| documents_of_file(&base_dir.join(f.as_str().unwrap())))
        .collect();

    let base_objects: BTreeSet<_> = base
        .iter()
        .map(kind_name)
        .filter(|(k, _)| k != "Namespace")
        .collect();
    let chart_objects: BTreeSet<_> = chart
        .iter()
        .map(kind_name)
        .filter(|(k, _)| k != "Secret")
        .collect();
    assert_eq!(chart_objects, base_objects);
    for doc in &chart {
        let (kind, name) = kind_name(doc);
        if !kind.starts_with("Cluster") && kind != "MutatingWebhookConfiguration" {
            assert_eq!(doc["metadata"]["namespace"], NS, "{kind} {name}");
        }
    }

    let role = |docs: &[Value]| find(docs, "ClusterRole", None)["rules"].clone();
    assert_eq!(role(&chart), role(&base));
    assert_eq!(
        role(&chart),
        json!([
            {"apiGroups": [""], "resources": ["services", "nodes"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["gateways", "tcproutes"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
            {"apiGroups": ["apps"], "resources": ["statefulsets"], "verbs": ["get"]}
        ])
    );
    for field in ["roleRef", "subjects"] {
        assert_eq!(
            find(&chart, "ClusterRoleBinding", None)[field],
            find(&base, "ClusterRoleBinding", None)[field]
        );
    }
    assert_eq!(
        find(&chart, "Service", None)["spec"]["ports"],
        find(&base, "Service", None)["spec"]["ports"]
    );
    assert_eq!(
        find(&chart, "PodDisruptionBudget", None)["spec"]["minAvailable"],
        find(&base, "PodDisruptionBudget", None)["spec"]["minAvailable"]
    );
    assert_eq!(
        find(&chart, "ServiceAccount", None)["automountServiceAccountToken"],
        find(&base, "ServiceAccount", None)["automountServiceAccountToken"]
    );

    let (cd, bd) = (
        find(&chart, "Deployment", None),
        find(&base, "Deployment", None),
    );
    assert_eq!(cd["spec"]["replicas"], bd["spec"]["replicas"]);
    let (cp, bp) = (
        &cd["spec"]["template"]["spec"],
        &bd["spec"]["template"]["spec"],
    );
    for field in ["securityContext", "serviceAccountName", "volumes"] {
        assert_eq!(cp[field], bp[field], "pod {field}");
    }
    let spread = |pod: &Value| {
        let mut c = pod["topologySpreadConstraints"][0].clone();
        c.as_object_mut().unwrap().remove("labelSelector");
        c
    };
    assert_eq!(spread(cp), spread(bp));
    let selector = &cp["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"];
    assert_eq!(selector, &cd["spec"]["selector"]["matchLabels"]);
    let (cc, bc) = (&cp["containers"][0], &bp["containers"][0]);
    for field in [
        "name",
        "image",
        "imagePullPolicy",
        "args",
        "ports",
        "livenessProbe",
        "readinessProbe",
        "resources",
        "securityContext",
        "volumeMounts",
    ] {
        assert_eq!(cc[field], bc[field], "container {field}");
    }
    let chart_env = env_of(cd);
    for pair in env_of(bd) {
        assert!(chart_env.contains(&pair), "{pair:?} missing: {chart_env:?}");
    }

    let (cw, bw) = (
        &find(&chart, "MutatingWebhookConfiguration", None)["webhooks"][0],
        &find(&base, "MutatingWebhookConfiguration", None)["webhooks"][0],
    );
    for field in [
        "name",
        "admissionReviewVersions",
        "sideEffects",
        "timeoutSeconds",
        "reinvocationPolicy",
        "failurePolicy",
        "rules",
        "namespaceSelector",
    ] {
        assert_eq!(cw[field], bw[field], "webhook {field}");
    }
    assert_eq!(cw["clientConfig"]["service"], bw["clientConfig"]["service"]);
    assert_eq!(
        cw["matchConditions"][0]["name"],
        bw["matchConditions"][0]["name"]
    );
    assert_eq!(
        no_space(cw["matchConditions"][0]["expression"].as_str().unwrap()),
        no_space(bw["matchConditions"][0]["expression"].as_str().unwrap())
    );

    // The generated certificate: a CA (the caBundle) and a serving certificate for the
    // Service's DNS names signed by it, which rustls accepts.
    let secret = find(&chart, "Secret", Some("memgraph-address-injector-tls"));
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert_eq!(cw["clientConfig"]["caBundle"], secret["data"]["ca.crt"]);
    let pem = |key: &str| unb64(secret["data"][key].as_str().unwrap());
    for name in [
        "memgraph-address-injector.memgraph-address-injector.svc",
        "memgraph-address-injector.memgraph-address-injector.svc.cluster.local",
    ] {
        verify_serving_cert(&pem("ca.crt"), &pem("tls.crt"), name).unwrap();
    }
    assert!(verify_serving_cert(&pem("ca.crt"), &pem("tls.crt"), "other.example").is_err());
    // The replica requires of a renewed certificate what the API server will check: the
    // Service name it calls and, for the chart's own CA, that CA.
    assert_eq!(
        env_var(cd, "MAI_TLS_DNS_NAME").as_deref(),
        Some("memgraph-address-injector.memgraph-address-injector.svc")
    );
    assert_eq!(
        env_var(cd, "MAI_TLS_CA").as_deref(),
        Some("/etc/webhook/certs/ca.crt")
    );
    let own_issuer = helm.template(RELEASE, NS, &["--set", "certificates.mode=certManager"]);
    let corp_issuer = helm.template(
        RELEASE,
        NS,
        &[
            "--set",
            "certificates.mode=certManager",
            "--set",
            "certificates.certManager.issuerRef.name=corp-ca",
        ],
    );
    let by_url = helm.template(
        RELEASE,
        NS,
        &[
            "--set",
            "webhook.url=https://10.0.0.1:8443/mutate",
            "--set",
            "webhook.caBundle=Zm9v",
        ],
    );
    let tls_env = |docs: &[Value], name: &str| env_var(find(docs, "Deployment", None), name);
    assert!(tls_env(&own_issuer, "MAI_TLS_CA").is_some());
    // A corporate issuer may not put ca.crt into the Secret; a missing file would stop start.
    assert_eq!(tls_env(&corp_issuer, "MAI_TLS_CA"), None);
    assert!(tls_env(&corp_issuer, "MAI_TLS_DNS_NAME").is_some());
    // Called by URL, the API server checks the URL's host, not the Service name.
    assert_eq!(tls_env(&by_url, "MAI_TLS_DNS_NAME"), None);
    assert!(String::from_utf8(pem("tls.key"))
        .unwrap()
        .contains("PRIVATE KEY"));
}

/// rustls' verdict on a serving certificate for `dns_name` under the CA.
fn verify_serving_cert(ca_pem: &[u8], cert_pem: &[u8], dns_name: &str) -> Result<(), String> {
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    let der = |pem: &[u8]| -> CertificateDer<'static> {
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(pem).expect("a PEM certificate")
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(ca_pem)).map_err(|e| e.to_string())?;
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| e.to_string())?;
    verifier
        .verify_server_cert(
            &der(cert_pem),
            &[],
            &ServerName::try_from(dns_name.to_string()).unwrap(),
            &[],
            UnixTime::now(),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[test]
fn value_combinations_render_what_they_say() {
    let helm = Helm::new(None);
    let all = renderings();
    let render = |i: usize| helm.template("mai", "mai-system", &all[i].1);

    // cert-manager with the chart's own CA: the overlay's four objects, no Secret, the
    // caBundle left to cainjector.
    let cm = render(1);
    assert_eq!(count(&cm, "Secret"), 0);
    assert_eq!(count(&cm, "Issuer"), 2);
    assert_eq!(count(&cm, "Certificate"), 2);
    let serving = find(&cm, "Certificate", Some("mai-memgraph-address-injector"));
    assert_eq!(
        serving["spec"]["secretName"],
        "mai-memgraph-address-injector-tls"
    );
    assert_eq!(
        serving["spec"]["dnsNames"],
        json!([
            "mai-memgraph-address-injector.mai-system.svc",
            "mai-memgraph-address-injector.mai-system.svc.cluster.local"
        ])
    );
    let mwc = find(&cm, "MutatingWebhookConfiguration", None);
    assert_eq!(
        mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "mai-system/mai-memgraph-address-injector"
    );
    assert!(mwc["webhooks"][0]["clientConfig"].get("caBundle").is_none());
    assert_eq!(
        mwc["webhooks"][0]["namespaceSelector"]["matchExpressions"][0]["values"],
        json!(["mai-system", "kube-system"])
    );

    // cert-manager with a given ClusterIssuer: only the serving Certificate.
    let ci = render(2);
    assert_eq!(count(&ci, "Issuer"), 0);
    assert_eq!(
        find(&ci, "Certificate", None)["spec"]["issuerRef"],
        json!({"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"})
    );

    // An existing Secret: mounted, not rendered; the given caBundle.
    let es = render(3);
    assert_eq!(count(&es, "Secret") + count(&es, "Certificate"), 0);
    let deployment = find(&es, "Deployment", None);
    assert_eq!(
        deployment["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"],
        "my-webhook-tls"
    );
    assert_eq!(
        find(&es, "MutatingWebhookConfiguration", None)["webhooks"][0]["clientConfig"]["caBundle"],
        "Q0EK"
    );

    // Every decision value reaches its MAI_* variable; the webhook settings its config.
    let values = render(4);
    // The routing reconciler adds exactly: pods get/list/watch in each served namespace
    // (a Role there, no ClusterRole), and a Lease in its own namespace.
    let pod_roles: Vec<&Value> = values
        .iter()
        .filter(|d| {
            d["kind"] == "Role" && d["metadata"]["name"] == "mai-memgraph-address-injector-routing"
        })
        .collect();
    assert_eq!(
        pod_roles
            .iter()
            .map(|r| r["metadata"]["namespace"].clone())
            .collect::<Vec<_>>(),
        [json!("memgraph-ha"), json!("memgraph-b")]
    );
    for role in &pod_roles {
        assert_eq!(
            role["rules"],
            json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}])
        );
    }
    assert_eq!(
        count(&values, "RoleBinding"),
        3,
        "two pod Roles and the Lease's bound"
    );
    assert!(
        !values
            .iter()
            .any(|d| d["kind"] == "ClusterRole" && d["rules"].to_string().contains("pods")),
        "no cluster-wide pod access"
    );
    let lease = find(
        &values,
        "Role",
        Some("mai-memgraph-address-injector-routing-lease"),
    );
    assert_eq!(lease["metadata"]["namespace"], "mai-system");
    assert_eq!(lease["rules"][0]["resources"], json!(["leases"]));
    assert_eq!(
        count(&render(0), "Role"),
        0,
        "no reconciler RBAC unless enabled"
    );
    let deployment = find(&values, "Deployment", None);
    // Each variable the chart sets is one the binary reads (clap ignores unknown ones).
    let help = std::process::Command::new(support::BIN)
        .args(["serve", "--help"])
        .output()
        .expect("serve --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for (name, _) in env_of(deployment) {
        assert!(
            help.contains(&format!("[env: {name}=")),
            "the chart sets {name}, which `serve` does not read"
        );
    }
    for (name, want) in [
        ("MAI_ON_PENDING", "allow"),
        ("MAI_ENV_NAME", "MG_EXTERNAL_BOLT"),
        ("MAI_NODE_ADDRESS_TYPES", "InternalIP,ExternalIP"),
        ("MAI_COORDINATOR_FLAG", "--advertised-bolt={address}"),
        ("MAI_REQUEST_BUDGET_MS", "1500"),
        ("MAI_RECONCILE_NAMESPACES", "memgraph-ha,memgraph-b"),
        (
            "MAI_RECONCILE_POD_SELECTOR",
            "app.kubernetes.io/instance=memgraph-ha",
        ),
        (
            "MAI_CONTAINER_NAMES",
            "memgraph,memgraph-coordinator,memgraph-data",
        ),
    ] {
        assert_eq!(env_var(deployment, name).as_deref(), Some(want), "{name}");
    }
    let webhook = &find(&values, "MutatingWebhookConfiguration", None)["webhooks"][0];
    assert_eq!(webhook["failurePolicy"], "Ignore");
    assert_eq!(webhook["timeoutSeconds"], 10);
    assert_eq!(
        webhook["namespaceSelector"]["matchExpressions"][0]["values"],
        json!(["mai-system", "kube-system", "monitoring"])
    );
    // Defaults: no coordinator flag; the live-list budget follows the timeout.
    let defaults = render(0);
    let deployment = find(&defaults, "Deployment", None);
    assert_eq!(env_var(deployment, "MAI_COORDINATOR_FLAG"), None);
    assert_eq!(
        env_var(deployment, "MAI_ON_PENDING").as_deref(),
        Some("deny")
    );
    let short = helm.template("mai", "mai-system", &["--set", "webhook.timeoutSeconds=2"]);
    assert_eq!(
        env_var(find(&short, "Deployment", None), "MAI_REQUEST_BUDGET_MS").as_deref(),
        Some("1200")
    );

    // PDB off, one replica, a priority class, no spread constraints.
    let small = render(5);
    assert_eq!(count(&small, "PodDisruptionBudget"), 0);
    let pod = &find(&small, "Deployment", None)["spec"]["template"]["spec"];
    assert_eq!(find(&small, "Deployment", None)["spec"]["replicas"], 1);
    assert_eq!(pod["priorityClassName"], "system-cluster-critical");
    assert!(pod.get("topologySpreadConstraints").is_none());

    // ServiceMonitor on: it selects the metrics Service, whose port reaches /metrics.
    let monitored = render(6);
    let monitor = find(&monitored, "ServiceMonitor", None);
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "http-metrics");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    let metrics = find(
        &monitored,
        "Service",
        Some("mai-memgraph-address-injector-metrics"),
    );
    assert_eq!(metrics["spec"]["ports"][0]["name"], "http-metrics");
    assert_eq!(metrics["spec"]["ports"][0]["targetPort"], "health");
    for (key, value) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(&metrics["metadata"]["labels"][key], value, "{key}");
    }
    assert_eq!(count(&defaults, "ServiceMonitor"), 0);

    // NetworkPolicy: off by default; on, 8443 from the API server peers only and 8080 from
    // the monitoring namespace, on the webhook's own pods; on without peers is refused.
    assert_eq!(count(&defaults, "NetworkPolicy"), 0);
    let policed = render(7);
    let policy = find(&policed, "NetworkPolicy", None);
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"],
        find(&policed, "Deployment", None)["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress"]));
    assert_eq!(
        policy["spec"]["ingress"],
        json!([
            {"ports": [{"port": 8443, "protocol": "TCP"}], "from": [{"ipBlock": {"cidr": "10.0.0.10/32"}}]},
            {"ports": [{"port": 8080, "protocol": "TCP"}], "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]}
        ])
    );
    let refused = helm.fails(&[
        "template",
        "mai",
        &chart_dir().display().to_string(),
        "--set",
        "networkPolicy.enabled=true",
    ]);
    assert!(refused.contains("set networkPolicy.apiServer"), "{refused}");
    // The kustomize policy selects the base's pods with the same two rules.
    let kustomize_policy = documents_of_file(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/network-policy/networkpolicy.yaml"),
    );
    assert_eq!(
        kustomize_policy[0]["spec"]["ingress"][1],
        policy["spec"]["ingress"][1]
    );
    assert_eq!(
        kustomize_policy[0]["spec"]["ingress"][0]["ports"],
        policy["spec"]["ingress"][0]["ports"]
    );

    // Gateway API: read wherever it is installed. ingress-nginx: off unless enabled, then a
    // Role for exactly its ConfigMap in its namespace, and the flags pointing there.
    let defaults = render(0);
    let role = find(&defaults, "ClusterRole", None);
    assert!(role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["apiGroups"] == json!(["gateway.networking.k8s.io"])
            && r["resources"] == json!(["gateways", "tcproutes"])
            && r["verbs"] == json!(["get", "list", "watch"])));
    let deployment = find(&defaults, "Deployment", None);
    assert_eq!(env_var(deployment, "MAI_INGRESS_NGINX_TCP_SERVICES"), None);
    assert!(!defaults.iter().any(|d| d["kind"] == "Role"
        && d["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .ends_with("-tcp-services")));
    let nginx = render(all.len() - 1);
    let deployment = find(&nginx, "Deployment", None);
    assert_eq!(
        env_var(deployment, "MAI_INGRESS_NGINX_TCP_SERVICES").as_deref(),
        Some("edge/memgraph-tcp")
    );
    assert_eq!(
        env_var(deployment, "MAI_INGRESS_NGINX_CONTROLLER").as_deref(),
        Some("edge/edge-controller")
    );
    let role = find(
        &nginx,
        "Role",
        Some("mai-memgraph-address-injector-tcp-services"),
    );
    assert_eq!(role["metadata"]["namespace"], "edge");
    assert_eq!(
        role["rules"],
        json!([{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["memgraph-tcp"], "verbs": ["get", "list", "watch"]}])
    );
    let binding = find(
        &nginx,
        "RoleBinding",
        Some("mai-memgraph-address-injector-tcp-services"),
    );
    assert_eq!(binding["metadata"]["namespace"], "edge");

    // NOTES.txt: how to check a pod and the routing table.
    let chart = chart_dir().display().to_string();
    let notes = helm.ok(&[
        "install",
        "mai",
        &chart,
        "-n",
        "mai-system",
        "--dry-run=client",
    ]);
    for line in [
        "kubectl -n NAMESPACE get pod POD -o jsonpath='{.metadata.annotations.memgraph-address-injector/bolt-address}{\"\\n\"}'",
        "memgraph-address-injector routing check --bolt \"$BOLT\"",
    ] {
        assert!(notes.contains(line), "NOTES lacks {line}:\n{notes}");
    }
}

#[test]
fn schema_rejects_wrong_values() {
    let helm = Helm::new(None);
    let chart = chart_dir().display().to_string();
    let schema_error = "values don't meet the specifications of the schema";
    for (flag, value, expected) in [
        ("--set", "config.onPending=maybe", "/config/onPending"),
        ("--set", "replicas=0", "/replicas"),
        ("--set-json", "replicas=1.5", "/replicas"),
        ("--set", "replicas=two", "/replicas"),
        (
            "--set",
            "webhook.failurePolicy=Sometimes",
            "/webhook/failurePolicy",
        ),
        (
            "--set",
            "webhook.timeoutSeconds=0",
            "/webhook/timeoutSeconds",
        ),
        (
            "--set",
            "webhook.timeoutSeconds=31",
            "/webhook/timeoutSeconds",
        ),
        (
            "--set",
            "certificates.mode=selfSigned",
            "/certificates/mode",
        ),
        (
            "--set",
            "certificates.mode=existingSecret",
            "/certificates/existingSecret/name",
        ),
        (
            "--set",
            "config.envName=MEMGRAPH_BOLT_PORT",
            "/config/envName",
        ),
        ("--set", "config.envName=1BAD", "/config/envName"),
        (
            "--set",
            "config.nodeAddressTypes={PublicIP}",
            "/config/nodeAddressTypes/0",
        ),
        (
            "--set",
            "config.coordinatorFlag=advertised",
            "/config/coordinatorFlag",
        ),
        ("--set", "image.pullPolicy=Sometimes", "/image/pullPolicy"),
        (
            "--set",
            "ingressNginx.tcpServices=tcp-services",
            "/ingressNginx/tcpServices",
        ),
        (
            "--set",
            "replica=3",
            "additional properties 'replica' not allowed",
        ),
    ] {
        let stderr = helm.fails(&["template", "mai", &chart, flag, value]);
        assert!(
            stderr.contains(schema_error) && stderr.contains(expected),
            "{flag} {value}: expected a schema error at {expected}, got:\n{stderr}"
        );
    }
    // Checks the schema cannot express fail in the templates, with a message.
    let stderr = helm.fails(&[
        "template",
        "mai",
        &chart,
        "--set",
        "config.requestBudgetMs=5000",
    ]);
    assert!(
        stderr.contains(
            "config.requestBudgetMs (5000) must be below webhook.timeoutSeconds (5000 ms)"
        ),
        "{stderr}"
    );
    let stderr = helm.fails(&[
        "template",
        "mai",
        &chart,
        "--set",
        "certificates.mode=existingSecret",
        "--set",
        "certificates.existingSecret.name=tls",
    ]);
    assert!(stderr.contains("set webhook.caBundle"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_against_a_real_control_plane() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let plane = ControlPlane::start(dir.path());
    eprintln!("control plane ready in {:.1?}", plane.started_in);
    let client = plane.client().await;
    let helm = Helm::new(Some(&plane.kubeconfig));

    // cert-manager's and the Prometheus Operator's CRDs, as a cluster with them has.
    create_crds(&client).await;

    // 1. Every rendering, applied server-side with dryRun and strict field validation.
    // NS, the other release's, and the namespaces a rendering's reconciler serves.
    // ... and "edge", where a rendering reads its ingress-nginx ConfigMap.
    for ns in [NS, "mai-system", "memgraph-ha", "memgraph-b", "edge"] {
        let api: Api<Namespace> = Api::all(client.clone());
        api.create(
            &PostParams::default(),
            &from(json!({"metadata": {"name": ns}})),
        )
        .await
        .unwrap();
    }
    for (what, args) in renderings() {
        for (release, ns) in [(RELEASE, NS), ("mai", "mai-system")] {
            let docs = helm.template(release, ns, &args);
            dry_run_apply(&client, &docs)
                .await
                .unwrap_or_else(|e| panic!("{what} ({release} in {ns}): {e}"));
        }
    }
    // The kustomize cert-manager overlay's Issuers and Certificates as well.
    let overlay = documents_of_file(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/cert-manager/certificate.yaml"),
    );
    assert_eq!(overlay.len(), 4);
    dry_run_apply(&client, &overlay)
        .await
        .expect("manifests/cert-manager");
    // The dry run is not a formality: a misspelt field or a wrong enum value in a
    // cert-manager object is refused by the CRD's schema.
    let certificate = find(
        &helm.template(RELEASE, NS, &renderings()[1].1),
        "Certificate",
        Some(RELEASE),
    )
    .clone();
    let mut misspelt = certificate.clone();
    misspelt["spec"]["dnsName"] = json!(["typo"]);
    let error = dry_run_apply(&client, &[misspelt]).await.unwrap_err();
    assert!(error.contains(".spec.dnsName"), "{error}");
    let mut bad_enum = certificate;
    bad_enum["spec"]["privateKey"]["algorithm"] = json!("DSA");
    let error = dry_run_apply(&client, &[bad_enum]).await.unwrap_err();
    assert!(error.contains("spec.privateKey.algorithm"), "{error}");
    eprintln!(
        "{} renderings accepted by a server-side dry run after {:.1?}",
        renderings().len() * 2,
        started.elapsed()
    );

    // 2. `helm install` (generated certificates; no --wait: no kubelet runs its pods).
    let chart = chart_dir().display().to_string();
    let base_args = [
        "-n",
        NS,
        "--set",
        "certificates.generated.ipAddresses={127.0.0.1}",
    ];
    let mut install = vec!["install", RELEASE, chart.as_str(), "--create-namespace"];
    install.extend(base_args);
    let out = helm.ok(&install);
    assert!(out.contains("STATUS: deployed"), "{out}");
    assert!(out.contains("routing check --bolt"), "{out}");

    // The chart's generated CA and serving certificate, read back from the API server,
    // are what the webhook process serves with.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let secret_name = format!("{RELEASE}-tls");
    let installed = secrets
        .get(&secret_name)
        .await
        .expect("the generated Secret");
    let data = installed.data.clone().expect("Secret data");
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    for key in ["ca.crt", "tls.crt", "tls.key"] {
        std::fs::write(certs.join(key), &data[key].0).unwrap();
    }
    let kubeconfig = plane.kubeconfig.display().to_string();
    let webhook = support::start_webhook(dir.path(), &[], &[("KUBECONFIG", kubeconfig.as_str())]);
    assert_eq!(
        webhook.ca_pem(),
        data["ca.crt"].0,
        "the chart's CA is served"
    );
    let health_port = webhook.health_port;
    tokio::task::spawn_blocking(move || {
        support::wait_until(Duration::from_secs(30), "webhook readiness", || {
            support::http_status(health_port, "/readyz") == Some(200)
        })
    })
    .await
    .unwrap();

    // 3. `helm upgrade` pointing clientConfig at this process: the CA is kept (lookup), so
    // the caBundle is the one the webhook serves.
    let url = webhook.url("/mutate");
    let url_value = format!("webhook.url={url}");
    let out = helm.ok(&[
        "upgrade",
        RELEASE,
        &chart,
        "-n",
        NS,
        "--reuse-values",
        "--set",
        &url_value,
    ]);
    assert!(out.contains("REVISION: 2"), "{out}");
    // What the release records is what the user set; the certificates live only in the Secret.
    let values: Value =
        serde_json::from_str(&helm.ok(&["get", "values", RELEASE, "-n", NS, "-o", "json"]))
            .expect("release values");
    assert_eq!(
        values,
        json!({"certificates": {"generated": {"ipAddresses": ["127.0.0.1"]}}, "webhook": {"url": url}})
    );
    let upgraded = secrets.get(&secret_name).await.unwrap();
    assert_eq!(
        upgraded.data, installed.data,
        "upgrade kept the certificates"
    );
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let config = configs.get(RELEASE).await.expect("webhook configuration");
    let client_config = &config.webhooks.as_ref().unwrap()[0].client_config;
    assert_eq!(client_config.url.as_deref(), Some(url.as_str()));
    assert_eq!(
        client_config.ca_bundle.as_ref().map(|b| b.0.clone()),
        Some(data["ca.crt"].0.clone())
    );
    assert_eq!(b64(&webhook.ca_pem()), b64(&data["ca.crt"].0));

    // 4. A Memgraph HA-shaped StatefulSet's pod is mutated through the installed webhook.
    let ns = "memgraph";
    namespace(&client, ns).await;
    node(
        &client,
        "node-a",
        &[("InternalIP", "10.0.0.10"), ("ExternalIP", "203.0.113.10")],
    )
    .await;
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let instance = "memgraph-coordinator-1";
    services
        .create(
            &PostParams::default(),
            &external_service(instance, "NodePort", &[7687]),
        )
        .await
        .unwrap();
    wait_until_dry_run_mutated(&client, ns).await;
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    sets.create(
        &PostParams::default(),
        &chart_statefulset(
            instance,
            "coordinator",
            "memgraph/memgraph:3.2.1",
            &coordinator_args(1, ns),
        ),
    )
    .await
    .unwrap();
    let pod = wait_pod(&client, ns, &format!("{instance}-0")).await;
    let svc = services.get(&format!("{instance}-external")).await.unwrap();
    let node_port = svc.spec.unwrap().ports.unwrap()[0].node_port.unwrap();
    let want = format!("203.0.113.10:{node_port}");
    assert_eq!(pod_annotation(&pod).as_deref(), Some(want.as_str()));
    assert_eq!(pod_env(&pod).as_deref(), Some(want.as_str()));
    eprintln!(
        "installed, upgraded, pod {instance}-0 got {want} after {:.1?}",
        started.elapsed()
    );

    // 5. `helm uninstall`: the webhook configuration goes; the pod keeps what it got; new
    // Memgraph pods are created untouched.
    let out = helm.ok(&["uninstall", RELEASE, "-n", NS]);
    assert!(out.contains("uninstalled"), "{out}");
    wait_for(
        Duration::from_secs(30),
        "the webhook configuration to go",
        || async { configs.get_opt(RELEASE).await.ok()?.is_none().then_some(()) },
    )
    .await;
    assert!(secrets.get_opt(&secret_name).await.unwrap().is_none());
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let kept = pods.get(&format!("{instance}-0")).await.unwrap();
    assert_eq!(pod_annotation(&kept).as_deref(), Some(want.as_str()));
    assert_eq!(pod_env(&kept).as_deref(), Some(want.as_str()));
    // The API server stops calling the webhook once its configuration is gone.
    wait_for(
        Duration::from_secs(30),
        "a Memgraph pod admitted untouched",
        || async {
            let (status, _, pod) =
                create_pod_raw(&client, ns, &memgraph_pod("after", json!({})), true).await;
            (status == 201
                && pod
                    .pointer("/metadata/annotations")
                    .and_then(|a| a.get(ADDRESS))
                    .is_none())
            .then_some(())
        },
    )
    .await;
    eprintln!("uninstalled; helm test took {:.1?}", started.elapsed());
}

fn pod_annotation(pod: &Pod) -> Option<String> {
    pod.metadata.annotations.as_ref()?.get(ADDRESS).cloned()
}

fn pod_env(pod: &Pod) -> Option<String> {
    pod.spec.as_ref()?.containers[0]
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == "MEMGRAPH_EXTERNAL_BOLT_ADDRESS")?
        .value
        .clone()
}

/// The API server picks up a new webhook configuration asynchronously: probe with dryRun
/// pods (of the exposed instance's labels) until one comes back mutated.
async fn wait_until_dry_run_mutated(client: &Client, ns: &str) {
    wait_for(
        Duration::from_secs(60),
        "a mutated dryRun probe pod",
        || async {
            let mut probe = memgraph_pod("probe", json!({}));
            probe["metadata"]["labels"] = json!({"app": "memgraph-coordinator-1"});
            let (status, _, pod) = create_pod_raw(client, ns, &probe, true).await;
            (status == 201
                && pod
                    .pointer("/metadata/annotations")
                    .and_then(|a| a.get(ADDRESS))
                    .is_some())
            .then_some(())
        },
    )
    .await;
}
