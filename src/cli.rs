//! The subcommands: `serve`, `review`, `gen-certs`. Each parses its flags into the pure
//! decision's `Config` or the server's options and runs; errors go up to `main` as anyhow.

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::builder::TypedValueParser;
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};

use crate::cluster::{self, SharedCluster};
use crate::decision::pod::{Recognition, Version};
use crate::decision::proxy::IngressNginx;
use crate::decision::{self, review, Config, FlagTemplate, OnPending};
use crate::server::{self, AppState, ServeOptions};

#[derive(Parser, Debug)]
#[command(
    name = "memgraph-address-injector",
    version = crate::LONG_VERSION,
    about = "Mutating admission webhook that injects the externally reachable Bolt address into Memgraph HA pods"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log filter (tracing EnvFilter syntax), e.g. info or memgraph_address_injector=debug.
    #[arg(
        long,
        env = "MAI_LOG",
        default_value = "info,rustls=error",
        global = true
    )]
    pub log: String,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the webhook over HTTPS, with health and metrics over plain HTTP.
    Serve(Box<ServeArgs>),
    /// Decide one AdmissionReview or Pod offline, against a saved cluster state.
    Review(ReviewArgs),
    /// Generate a CA and a serving certificate for the webhook Service.
    GenCerts(GenCertsArgs),
    /// Check the routing table clients get, and sync registrations to external addresses.
    Routing(crate::routing::RoutingArgs),
}

/// The decision's settings, shared by `serve` and `review`.
#[derive(Args, Debug, Clone)]
pub struct DecisionArgs {
    /// Name of the environment variable injected into the Memgraph container. Names that
    /// Memgraph reads itself are refused.
    #[arg(long, env = "MAI_ENV_NAME", default_value = decision::DEFAULT_ENV_NAME)]
    pub env_name: String,
    /// What to do when the Service's external address is not known yet (LoadBalancer
    /// without ingress, no node address).
    #[arg(long, env = "MAI_ON_PENDING", default_value = "deny",
          value_parser = clap::builder::PossibleValuesParser::new(["deny", "allow"]).try_map(|s| s.parse::<OnPending>()))]
    pub on_pending: OnPending,
    /// Node address types to try for NodePort Services, in order.
    #[arg(
        long,
        env = "MAI_NODE_ADDRESS_TYPES",
        value_delimiter = ',',
        default_value = "ExternalIP,InternalIP"
    )]
    pub node_address_types: Vec<String>,
    /// Which Nodes may carry a NodePort address: a label selector in the kubectl form, e.g.
    /// `node-role.example.com/edge=true` for edge nodes with public IPs. Empty: every Node.
    #[arg(long, env = "MAI_NODE_SELECTOR", default_value = "", value_parser = clap::value_parser!(crate::decision::nodes::NodeSelector))]
    pub node_selector: crate::decision::nodes::NodeSelector,
    /// Container names that mark the Memgraph container when the image is not memgraph's.
    #[arg(
        long,
        env = "MAI_CONTAINER_NAMES",
        value_delimiter = ',',
        default_value = "memgraph,memgraph-coordinator,memgraph-data"
    )]
    pub container_names: Vec<String>,
    /// Memgraph version assumed when neither the image tag nor the pod annotation gives one.
    #[arg(long, env = "MAI_DEFAULT_MEMGRAPH_VERSION", default_value = "3.0.0", value_parser = clap::value_parser!(Version))]
    pub default_memgraph_version: Version,
    /// A flag of your own entrypoint added to every coordinator, e.g.
    /// `--advertised-bolt={address}` ({address}, {host}, {port}). A stock Memgraph exits on
    /// unknown flags: use only with a wrapper that understands it.
    #[arg(long, env = "MAI_COORDINATOR_FLAG")]
    pub coordinator_flag: Option<String>,
    /// ingress-nginx's TCP proxy ConfigMap (NAMESPACE/NAME), read for pods that no NodePort
    /// or LoadBalancer Service exposes. Empty: ingress-nginx is not read.
    #[arg(
        long,
        env = "MAI_INGRESS_NGINX_TCP_SERVICES",
        default_value = "ingress-nginx/tcp-services"
    )]
    pub ingress_nginx_tcp_services: String,
    /// The ingress-nginx controller's Service (NAMESPACE/NAME), whose external address
    /// carries the tcp-services ports.
    #[arg(
        long,
        env = "MAI_INGRESS_NGINX_CONTROLLER",
        default_value = "ingress-nginx/ingress-nginx-controller"
    )]
    pub ingress_nginx_controller: String,
}

impl DecisionArgs {
    pub fn config(&self) -> anyhow::Result<Config> {
        let config = Config {
            recognition: Recognition {
                container_names: self.container_names.clone(),
                default_version: self.default_memgraph_version,
            },
            env_name: self.env_name.clone(),
            on_pending: self.on_pending,
            node_address_types: self
                .node_address_types
                .iter()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect(),
            node_selector: self.node_selector.clone(),
            coordinator_flag: self
                .coordinator_flag
                .as_deref()
                .map(FlagTemplate::parse)
                .transpose()?,
            ingress_nginx: match self.ingress_nginx_tcp_services.trim() {
                "" => None,
                tcp_services => Some(IngressNginx {
                    tcp_services: tcp_services
                        .parse()
                        .context("--ingress-nginx-tcp-services")?,
                    controller: self
                        .ingress_nginx_controller
                        .trim()
                        .parse()
                        .context("--ingress-nginx-controller")?,
                }),
            },
        };
        config.validate()?;
        Ok(config)
    }
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[clap(flatten)]
    pub decision: DecisionArgs,
    #[clap(flatten)]
    pub reconcile: crate::reconcile::ReconcileArgs,
    /// HTTPS listen address for POST /mutate.
    #[arg(long, env = "MAI_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Plain-HTTP listen address for /livez, /readyz and /metrics.
    #[arg(long, env = "MAI_HEALTH_LISTEN", default_value = "0.0.0.0:8080")]
    pub health_listen: SocketAddr,
    /// This replica's name (the Deployment sets it from the downward API): it names the
    /// replica on Events and holds the routing reconciler's Lease. Default: the host name.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Serving certificate (PEM).
    #[arg(
        long,
        env = "MAI_TLS_CERT",
        default_value = "/etc/webhook/certs/tls.crt"
    )]
    pub tls_cert: PathBuf,
    /// Serving key (PEM).
    #[arg(
        long,
        env = "MAI_TLS_KEY",
        default_value = "/etc/webhook/certs/tls.key"
    )]
    pub tls_key: PathBuf,
    /// Serve from a static state file (Services and Nodes) instead of watching the API server.
    #[arg(long, env = "MAI_CLUSTER_STATE")]
    pub cluster_state: Option<PathBuf>,
    /// Time budget of one admission request in milliseconds, a live Service list on a cache
    /// miss included; keep it below the webhook's timeoutSeconds (5 s in the manifests).
    #[arg(long, env = "MAI_REQUEST_BUDGET_MS", default_value_t = 3000)]
    pub request_budget_ms: u64,
    /// Admission requests decided at once; more get a 503 at once instead of waiting.
    #[arg(long, env = "MAI_MAX_IN_FLIGHT", default_value_t = 256)]
    pub max_in_flight: usize,
    /// Bytes of request bodies buffered at once, all requests together; a body that would
    /// pass it gets a 503 as it arrives. Keeps memory under the pod's limit (the chart: 128 Mi)
    /// whatever the request sizes; at least one full body (7 MiB).
    #[arg(long, env = "MAI_MAX_BUFFERED_BODY_BYTES", default_value_t = crate::server::DEFAULT_BODY_BUDGET)]
    pub max_buffered_body_bytes: usize,
    /// Require client certificates signed by this CA (API servers configured with an
    /// AdmissionConfiguration that presents one).
    #[arg(long, env = "MAI_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// The webhook Service's DNS name (SERVICE.NAMESPACE.svc): a certificate that is not valid
    /// for it is not swapped in on reload, and at startup makes the replica not ready.
    #[arg(long, env = "MAI_TLS_DNS_NAME")]
    pub tls_dns_name: Option<String>,
    /// The CA the API server trusts for this webhook (the caBundle): a certificate that does
    /// not chain to it is not swapped in on reload, and at startup makes the replica not ready.
    #[arg(long, env = "MAI_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// How often the certificate files are compared with the served certificate, in seconds
    /// (a file watch reacts sooner).
    #[arg(long, env = "MAI_CERT_POLL_SECONDS", default_value_t = 5)]
    pub cert_poll_seconds: u64,
    /// Time a client has to send its request headers, in seconds.
    #[arg(long, env = "MAI_HEADER_READ_TIMEOUT_SECONDS", default_value_t = 10)]
    pub header_read_timeout_seconds: u64,
    /// Open HTTPS connections at most (each idle TLS connection costs ~30 KiB); past it a
    /// new connection is closed at once, so the client can retry another replica.
    #[arg(long, env = "MAI_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Seconds a connection may go without a request before it is closed (HTTP/1.1
    /// keep-alive and HTTP/2 alike; HTTP/2 PINGs do not count), so that idle connections
    /// cannot hold every slot of --max-connections.
    #[arg(long, env = "MAI_IDLE_TIMEOUT_SECONDS", default_value_t = 60)]
    pub idle_timeout_seconds: u64,
    /// How long in-flight requests may take to finish after SIGTERM, in seconds.
    #[arg(long, env = "MAI_SHUTDOWN_GRACE_SECONDS", default_value_t = 20)]
    pub shutdown_grace_seconds: u64,
    /// Seconds between SIGTERM and closing the listener: /readyz fails at once so that the
    /// Service stops routing here, and requests that still arrive are answered.
    #[arg(long, env = "MAI_SHUTDOWN_DELAY_SECONDS", default_value_t = 5)]
    pub shutdown_delay_seconds: u64,
}

#[derive(Args, Debug)]
pub struct ReviewArgs {
    #[clap(flatten)]
    pub decision: DecisionArgs,
    /// Services and Nodes: `kubectl get svc,nodes -A -o yaml`, or YAML/JSON documents of them
    /// (with Gateways, TCPRoutes and the tcp-services ConfigMap for pods behind a proxy).
    #[arg(long, env = "MAI_CLUSTER")]
    pub cluster: PathBuf,
    /// An AdmissionReview or a Pod, JSON or YAML; standard input when absent.
    #[arg(long, env = "MAI_INPUT")]
    pub input: Option<PathBuf>,
    /// Print the patched Pod instead of the AdmissionReview response.
    #[arg(long, env = "MAI_PATCHED")]
    pub patched: bool,
}

#[derive(Args, Debug)]
pub struct GenCertsArgs {
    /// The webhook Service's name.
    #[arg(long, env = "MAI_SERVICE", default_value = "memgraph-address-injector")]
    pub service: String,
    /// The webhook Service's namespace.
    #[arg(
        long,
        env = "MAI_NAMESPACE",
        default_value = "memgraph-address-injector"
    )]
    pub namespace: String,
    /// Directory for ca.crt, tls.crt and tls.key.
    #[arg(long, env = "MAI_OUT")]
    pub out: PathBuf,
    /// Extra IP SANs (e.g. 127.0.0.1 for a webhook reached by URL).
    #[arg(long = "ip", env = "MAI_IPS", value_delimiter = ',')]
    pub ips: Vec<IpAddr>,
    /// Overwrite existing files.
    #[arg(long, env = "MAI_FORCE")]
    pub force: bool,
    /// Validity of the serving certificate in days (the CA gets twice that).
    #[arg(long, env = "MAI_VALID_DAYS", default_value_t = 365)]
    pub valid_days: i64,
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(*args).await,
        Command::Review(args) => review_cmd(args),
        Command::GenCerts(args) => gen_certs(args),
        Command::Routing(args) => crate::routing::run(args).await,
    }
}

/// Limits that cannot be zero: each would refuse every request (or connection) while the
/// pod looks healthy. Checked before anything connects.
fn check_limits(args: &ServeArgs) -> anyhow::Result<()> {
    let limits = [
        ("--request-budget-ms", args.request_budget_ms),
        ("--max-in-flight", args.max_in_flight as u64),
        ("--max-connections", args.max_connections as u64),
        ("--idle-timeout-seconds", args.idle_timeout_seconds),
    ];
    for (flag, value) in limits {
        if value == 0 {
            bail!("{flag} must be at least 1 (0 would refuse every admission request)");
        }
    }
    if args.max_buffered_body_bytes < crate::server::BODY_LIMIT {
        bail!(
            "--max-buffered-body-bytes must be at least {} (one full request body); {} would refuse large admission requests",
            crate::server::BODY_LIMIT,
            args.max_buffered_body_bytes
        );
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    check_limits(&args)?;
    let config = args.decision.config()?;
    let identity = args
        .pod_name
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("memgraph-address-injector-{}", std::process::id()));
    let mut reporter = crate::report::Reporter::log_only();
    let mut reconcile_client = None;
    // Checked before anything runs: a bad reconciler setup stops the start with its reason.
    let prepared = if args.reconcile.reconcile_routing {
        if args.cluster_state.is_some() {
            bail!("--reconcile-routing needs the API server; it cannot run with --cluster-state");
        }
        Some(crate::reconcile::prepare(&args.reconcile, &config)?)
    } else {
        None
    };
    let cluster = match &args.cluster_state {
        Some(path) => {
            let state = cluster::load_state_file(&path.to_string_lossy())?;
            tracing::info!(
                services = state.service_count(),
                nodes = state.node_count(),
                "serving from a state file"
            );
            SharedCluster::fixed(state)
        }
        None => {
            let client = kube::Client::try_default().await.context(
                "cannot reach the Kubernetes API server (in-cluster config or KUBECONFIG)",
            )?;
            reporter = crate::report::Reporter::with_events(client.clone(), &identity);
            reconcile_client = Some(client.clone());
            SharedCluster::watched(
                client,
                prepared
                    .as_ref()
                    .map(crate::reconcile::Prepared::taps)
                    .unwrap_or_default(),
                config.ingress_nginx.clone(),
            )
        }
    };
    let mut app = AppState::new(
        cluster,
        config,
        Duration::from_millis(args.request_budget_ms),
        args.max_in_flight,
    )
    .with_body_budget(args.max_buffered_body_bytes);
    app.reporter = reporter;
    let mut reconciler = None;
    if let (Some(prepared), Some(client)) = (prepared, reconcile_client) {
        prepared.attach(&app.cluster);
        reconciler = Some(
            crate::reconcile::start(
                client,
                prepared,
                &args.reconcile,
                &identity,
                app.metrics.clone(),
                app.reporter.clone(),
            )
            .await?,
        );
    }
    let served = server::serve(
        ServeOptions {
            listen: args.listen,
            health_listen: args.health_listen,
            tls: crate::tls::TlsFiles {
                cert: args.tls_cert,
                key: args.tls_key,
                client_ca: args.client_ca,
                dns_name: args.tls_dns_name,
                ca: args.tls_ca,
            },
            cert_poll: Duration::from_secs(args.cert_poll_seconds.max(1)),
            shutdown_grace: Duration::from_secs(args.shutdown_grace_seconds),
            shutdown_delay: Duration::from_secs(args.shutdown_delay_seconds),
            header_read_timeout: Duration::from_secs(args.header_read_timeout_seconds.max(1)),
            max_connections: args.max_connections,
            idle_timeout: Duration::from_secs(args.idle_timeout_seconds),
        },
        app,
    )
    .await;
    // Also when serving failed (a port taken, a certificate that does not load): the Lease
    // goes back now instead of blocking the other replicas for a Lease duration.
    if let Some(reconciler) = reconciler {
        reconciler.stop(Duration::from_secs(3)).await;
    }
    Ok(served?)
}

/// A Pod is wrapped as the CREATE request the API server would send.
fn wrap_pod(pod: &Value) -> Value {
    let namespace = pod
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .unwrap_or("default");
    json!({
        "apiVersion": review::API_VERSION,
        "kind": "AdmissionReview",
        "request": {
            "uid": "00000000-0000-0000-0000-000000000000",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "namespace": namespace,
            "object": pod,
        }
    })
}

fn review_cmd(args: ReviewArgs) -> anyhow::Result<()> {
    let config = args.decision.config()?;
    let cluster_path = args.cluster.to_string_lossy().to_string();
    let state = cluster::load_state_file(&cluster_path)?;
    let (name, text) = match &args.input {
        Some(path) => (
            path.to_string_lossy().to_string(),
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
        ),
        None => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read standard input")?;
            ("<stdin>".to_string(), text)
        }
    };
    let mut docs = cluster::parse_documents(&text, &name)?;
    if docs.len() != 1 {
        bail!(
            "{name}: expected one AdmissionReview or Pod, found {} documents",
            docs.len()
        );
    }
    let doc = docs.remove(0);
    let review_value = match doc.get("kind").and_then(Value::as_str) {
        Some("AdmissionReview") => doc,
        Some("Pod") => wrap_pod(&doc),
        other => bail!(
            "{name}: expected an AdmissionReview or a Pod, found kind {}",
            other.unwrap_or("<none>")
        ),
    };
    let body = review_value.to_string();
    let request = review::parse(body.as_bytes()).with_context(|| name.clone())?;
    let decision = decision::decide(&request, &state, &config);
    if !args.patched {
        return print_stdout(&review::encode(&request.uid, &decision));
    }
    for warning in &decision.warnings {
        eprintln!("warning: {}", warning.detail);
    }
    if let Some(denial) = &decision.denial {
        eprintln!("denied: {denial}");
    }
    let mut pod = review_value
        .pointer("/request/object")
        .cloned()
        .unwrap_or(Value::Null);
    json_patch::patch(&mut pod, &decision.patch)
        .with_context(|| format!("{name}: the patch does not apply to the pod"))?;
    print_stdout(&serde_json::to_vec_pretty(&pod)?)
}

/// Writes a result line; a closed pipe (`| head`) is not an error.
fn print_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out
        .write_all(bytes)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
    {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(err).context("cannot write to standard output")
        }
        _ => Ok(()),
    }
}

fn gen_certs(args: GenCertsArgs) -> anyhow::Result<()> {
    let files = crate::certs::generate(
        &args.service,
        &args.namespace,
        &args.ips,
        &args.out,
        args.force,
        args.valid_days,
    )?;
    println!(
        "wrote {}, {} and {} for {}.{}.svc",
        files.ca.display(),
        files.cert.display(),
        files.key.display(),
        args.service,
        args.namespace
    );
    Ok(())
}
