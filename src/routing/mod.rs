//! `routing check` and `routing sync`: read the routing table a Memgraph coordinator gives
//! clients, say which entries a client outside the cluster cannot use, and fix the
//! registrations behind them (docs/design.md, "The problem").
//!
//! Pure core: `table` (classify addresses), `resolve` (the external address of an instance,
//! with the webhook's `decision::address::resolve`), `plan` (which statements). Thin shells:
//! `bolt` (the IO), this file (flags, loading the cluster view, printing, exit codes).
//! Exit codes (each command's --help): check 0 every address usable, 1 some not; sync 0
//! nothing left it could change (unknown addresses and 3.0-3.7's hand-run statements are
//! reported, not failed), 1 changes pending or left after --apply; both 2 for connection, TLS,
//! protocol or input errors (returned as `Err`).

pub mod plan;
pub mod resolve;
pub mod table;
pub mod tls;
pub mod uri;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use k8s_openapi::api::core::v1::{Node, Pod, Service};

use crate::decision::pod::Version;
use bolt::{BoltAddress, BoltError, ConnectOptions, Connection, Credentials};
pub use memgraph_bolt::{client as bolt, packstream};
use plan::{Desired, Instance, Mode, Plan, PlanError};
use resolve::{External, RoutingCluster, Target};
use table::{RoutingTable, TableError, Verdict};

#[derive(Args, Debug)]
pub struct RoutingArgs {
    #[command(subcommand)]
    pub command: RoutingCommand,
}

#[derive(Subcommand, Debug)]
pub enum RoutingCommand {
    /// Fetch the routing table from a coordinator (Bolt ROUTE) and say which addresses a
    /// client outside the cluster can use.
    ///
    /// Exit codes:
    ///   0  every address in the table is usable from outside the cluster
    ///   1  some are not (named on stderr; `routing sync` fixes the registrations)
    ///   2  connection, TLS, protocol or input error (one line on stderr)
    #[command(verbatim_doc_comment)]
    Check(CheckArgs),
    /// Make each instance's registered Bolt address its external one (SHOW INSTANCES, then
    /// UPDATE CONFIG on the leader, Memgraph 3.8+). Dry run unless --apply.
    ///
    /// Exit codes:
    ///   0  nothing left that this command could change: every registration is external,
    ///      or --apply changed them and SHOW INSTANCES confirmed it. Also 0 when all that
    ///      is left is reported, not failed: instances whose external address is not known
    ///      yet (e.g. a LoadBalancer without an ingress address; a later run picks it up),
    ///      and on Memgraph 3.0-3.7, which cannot change an address in place, the new
    ///      registrations printed to run by hand.
    ///   1  changes pending that --apply would make (a dry run on 3.8+), or registrations
    ///      that still differ after --apply
    ///   2  connection, TLS, protocol or input error (one line on stderr)
    #[command(verbatim_doc_comment)]
    Sync(SyncArgs),
}

#[derive(Args, Debug)]
pub struct ConnectArgs {
    /// A coordinator's Bolt address: host:port, [IPv6 address]:port or a URI. bolt:// and neo4j:// are
    /// plain; bolt+s:// and neo4j+s:// are TLS verified against --bolt-ca (else the system's
    /// CA certificates); bolt+ssc:// and neo4j+ssc:// are TLS accepting any certificate.
    #[arg(long, env = "MAI_BOLT")]
    pub bolt: String,
    /// PEM file of the CA(s) that signed the Bolt server's certificate, for bolt+s:// and
    /// neo4j+s:// (e.g. a mounted Secret's ca.crt).
    #[arg(long, env = "MAI_BOLT_CA")]
    pub bolt_ca: Option<PathBuf>,
    /// Bolt user; no authentication when absent.
    #[arg(long, env = "MAI_BOLT_USER")]
    pub user: Option<String>,
    /// File holding the user's password (e.g. a mounted Secret key).
    #[arg(long, env = "MAI_BOLT_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,
    /// Budget of each network step (connect, handshake, each request), in milliseconds.
    #[arg(long, env = "MAI_BOLT_TIMEOUT_MS", default_value_t = 5000)]
    pub timeout_ms: u64,
}

#[derive(Args, Debug)]
pub struct ClusterArgs {
    /// Services, Nodes and Pods: `kubectl get svc,nodes,pods -A -o yaml` (pods carry the
    /// webhook's address annotation). Without it and without --in-cluster, no external
    /// addresses are suggested.
    #[arg(long, env = "MAI_CLUSTER", conflicts_with = "in_cluster")]
    pub cluster: Option<PathBuf>,
    /// Read Services, Pods (in --namespace) and Nodes from the API server (in-cluster
    /// config or KUBECONFIG).
    #[arg(long, env = "MAI_IN_CLUSTER")]
    pub in_cluster: bool,
    /// Namespace of the Memgraph release: bare names resolve here, and --in-cluster lists it.
    #[arg(long, env = "MAI_MEMGRAPH_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Node address types to try for NodePort Services, in order (as the webhook's flag).
    #[arg(
        long,
        env = "MAI_NODE_ADDRESS_TYPES",
        value_delimiter = ',',
        default_value = "ExternalIP,InternalIP"
    )]
    pub node_address_types: Vec<String>,
    /// Which Nodes may carry a NodePort address (a label selector, as the webhook's flag).
    #[arg(long, env = "MAI_NODE_SELECTOR", default_value = "", value_parser = clap::value_parser!(crate::decision::nodes::NodeSelector))]
    pub node_selector: crate::decision::nodes::NodeSelector,
    /// The Bolt port inside the pods (the Service's target), used to find the Service.
    #[arg(long, env = "MAI_MEMGRAPH_BOLT_PORT", default_value_t = 7687)]
    pub bolt_port: i32,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    #[clap(flatten)]
    pub connect: ConnectArgs,
    #[clap(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Args, Debug)]
pub struct SyncArgs {
    #[clap(flatten)]
    pub connect: ConnectArgs,
    #[clap(flatten)]
    pub cluster: ClusterArgs,
    /// Execute the plan (Memgraph 3.8+); without it, only print it.
    #[arg(long, env = "MAI_APPLY")]
    pub apply: bool,
    /// The Memgraph version. When absent: the coordinator pods' version as the webhook reads
    /// it (annotation, image tag); when that names none (`latest`, a digest), UPDATE CONFIG
    /// is tried on the leader and its answer decides (coordinators refuse SHOW VERSION).
    #[arg(long, env = "MAI_MEMGRAPH_VERSION", value_parser = clap::value_parser!(Version))]
    pub memgraph_version: Option<Version>,
    /// Replication port of data instances, for the REGISTER INSTANCE statements printed
    /// for 3.0-3.7 (SHOW INSTANCES does not show it).
    #[arg(long, env = "MAI_REPLICATION_PORT", default_value_t = 20000)]
    pub replication_port: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    #[error(transparent)]
    Bolt(#[from] BoltError),
    #[error(transparent)]
    Uri(#[from] uri::UriError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot read the password file {path}: {cause}")]
    PasswordFile { path: String, cause: std::io::Error },
    #[error("--password-file needs --user")]
    PasswordWithoutUser,
    #[error("{address} returned an unusable routing table: {cause}")]
    Table { address: String, cause: TableError },
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    State(#[from] crate::cluster::StateError),
    #[error("cannot list {what} from the API server: {message}")]
    Kube { what: &'static str, message: String },
    #[error("routing sync needs a cluster view to know the external addresses: pass --cluster FILE or --in-cluster")]
    NoClusterView,
    #[error("SHOW INSTANCES on {address} names no leader (a coordinator that cannot reach the leader answers its own view); run again once the cluster has a leader")]
    NoLeader { address: String },
    #[error("UPDATE CONFIG must run on the leader {leader} ({why_leader}), and {problem}; run routing sync in the cluster with --in-cluster, or pass --bolt with the leader's address")]
    LeaderNotReachable {
        leader: String,
        why_leader: String,
        problem: String,
    },
    #[error("the leader refused {statement:?}: {cause}. The Memgraph version is not known (the coordinators' image tag names none, e.g. `latest` or a digest): pass --memgraph-version, or set the annotation {annotation} on the coordinator pods. If it is older than 3.8, which has no UPDATE CONFIG, register again by hand: {by_hand}")]
    UnknownVersionRefused {
        statement: String,
        cause: Box<BoltError>,
        annotation: &'static str,
        by_hand: String,
    },
}

pub async fn run(args: RoutingArgs) -> anyhow::Result<()> {
    let code = match args.command {
        RoutingCommand::Check(args) => check(args).await?,
        RoutingCommand::Sync(args) => sync(args).await?,
    };
    let _ = std::io::stdout().flush();
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

fn credentials(args: &ConnectArgs) -> Result<Option<Credentials>, RoutingError> {
    match &args.user {
        None if args.password_file.is_some() => Err(RoutingError::PasswordWithoutUser),
        user => credentials_from(user.as_deref(), args.password_file.as_deref()),
    }
}

/// Bolt credentials: `user` with the password read from `password_file` (a Secret volume;
/// one trailing newline dropped), or none without a user. Shared with the reconciler, which
/// reads the file again on every pass so that a rotated Secret is picked up.
pub fn credentials_from(
    user: Option<&str>,
    password_file: Option<&std::path::Path>,
) -> Result<Option<Credentials>, RoutingError> {
    let Some(user) = user else {
        return Ok(None);
    };
    let password = match password_file {
        None => String::new(),
        Some(path) => std::fs::read_to_string(path)
            .map_err(|cause| RoutingError::PasswordFile {
                path: path.display().to_string(),
                cause,
            })?
            .trim_end_matches(['\n', '\r'])
            .to_string(),
    };
    Ok(Some(Credentials {
        user: user.to_string(),
        password,
    }))
}

/// How to open Bolt connections as the flags say (--bolt, --bolt-ca, --user, ...): to the
/// coordinator named by --bolt, and to others (the leader) with the same TLS and credentials.
#[derive(Clone, Debug)]
pub struct Connector {
    pub uri: uri::BoltUri,
    pub options: ConnectOptions,
}

impl Connector {
    pub fn from_args(args: &ConnectArgs) -> Result<Self, RoutingError> {
        let uri = uri::BoltUri::parse(&args.bolt)?;
        let transport = tls::transport(uri.security, args.bolt_ca.as_deref(), &args.bolt)?;
        Ok(Self {
            uri,
            options: ConnectOptions {
                credentials: credentials(args)?,
                timeout: Duration::from_millis(args.timeout_ms),
                transport,
                limits: Default::default(),
                tls_server_name: None,
            },
        })
    }

    /// The coordinator named by --bolt.
    pub async fn connect(&self) -> Result<Connection, RoutingError> {
        Ok(Connection::connect(&self.uri.address, &self.options).await?)
    }

    /// A coordinator pod by its IP, with the same TLS settings and credentials; its
    /// certificate is checked against `tls_name` (the chart's per-instance Service name).
    pub async fn connect_to_pod(
        &self,
        address: &BoltAddress,
        tls_name: Option<String>,
    ) -> Result<Connection, BoltError> {
        let mut options = self.options.clone();
        if matches!(options.transport, bolt::Transport::Tls(_)) {
            options.tls_server_name = tls_name;
        }
        Connection::connect(address, &options).await
    }
}

/// Connects to the coordinator the flags name (TLS per the scheme, then authenticates).
pub async fn connect(args: &ConnectArgs) -> Result<Connection, RoutingError> {
    Connector::from_args(args)?.connect().await
}

/// Services, Nodes and Pods from documents (a List, or one object per document).
pub fn cluster_from_text(
    text: &str,
    path: &str,
    args: &ClusterArgs,
) -> Result<RoutingCluster, RoutingError> {
    let (mut services, mut nodes, mut pods) = (Vec::new(), Vec::new(), Vec::new());
    crate::cluster::visit_objects(text, path, |object| {
        match object.kind {
            "Service" => services.push(object.decode::<Service>()?),
            "Node" => nodes.push(object.decode::<Node>()?),
            "Pod" => pods.push(object.decode::<Pod>()?),
            _ => {}
        }
        Ok(())
    })?;
    let config = decision_config(args);
    let mut cluster =
        RoutingCluster::from_objects(&services, &nodes, &pods, &args.namespace, config);
    // Gateways, TCPRoutes and the tcp-services ConfigMap, read as the webhook reads them.
    let proxies = crate::cluster::state_from_text(text, path)?;
    cluster.adopt_proxies(&proxies);
    Ok(cluster)
}

/// The webhook's decision settings that routing needs: node address types and selector.
fn decision_config(args: &ClusterArgs) -> crate::decision::Config {
    crate::decision::Config {
        node_address_types: args
            .node_address_types
            .iter()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect(),
        node_selector: args.node_selector.clone(),
        ..crate::decision::Config::default()
    }
}

async fn load_cluster(args: &ClusterArgs) -> Result<Option<RoutingCluster>, RoutingError> {
    if let Some(path) = &args.cluster {
        let name = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|cause| crate::cluster::StateError::Read {
                path: name.clone(),
                cause,
            })?;
        return cluster_from_text(&text, &name, args).map(Some);
    }
    if !args.in_cluster {
        return Ok(None);
    }
    use kube::api::{Api, ListParams};
    let kube_err = |what| {
        move |e: kube::Error| RoutingError::Kube {
            what,
            message: e.to_string(),
        }
    };
    let client = kube::Client::try_default()
        .await
        .map_err(kube_err("anything (no in-cluster config or KUBECONFIG)"))?;
    let lp = ListParams::default();
    let services = Api::<Service>::namespaced(client.clone(), &args.namespace)
        .list(&lp)
        .await
        .map_err(kube_err("Services"))?
        .items;
    let pods = Api::<Pod>::namespaced(client.clone(), &args.namespace)
        .list(&lp)
        .await
        .map_err(kube_err("Pods"))?
        .items;
    let nodes = Api::<Node>::all(client.clone())
        .list(&lp)
        .await
        .map_err(kube_err("Nodes"))?
        .items;
    let config = decision_config(args);
    let proxies =
        crate::cluster::list_proxies(&client, &args.namespace, config.ingress_nginx.as_ref()).await;
    let mut cluster =
        RoutingCluster::from_objects(&services, &nodes, &pods, &args.namespace, config);
    cluster.adopt_proxies(&proxies);
    Ok(Some(cluster))
}

/// One line of `routing check`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckRow {
    pub role: table::Role,
    pub address: String,
    pub verdict: Verdict,
    /// The external address the cluster view gives, for unusable entries.
    pub external: Option<External>,
}

/// The verdict on each entry of a table (pure).
pub fn check_table(
    table: &RoutingTable,
    cluster: Option<&RoutingCluster>,
    bolt_port: i32,
) -> Vec<CheckRow> {
    table
        .entries
        .iter()
        .map(|entry| {
            let (verdict, target) = table::classify(&entry.address, cluster);
            let external = match (&verdict, cluster) {
                (Verdict::Unusable(_), Some(cluster)) => Some(match &target {
                    Some(target) => cluster.external_for(target, bolt_port),
                    None => External::Unknown("the cluster view has nothing by this name".into()),
                }),
                _ => None,
            };
            CheckRow {
                role: entry.role,
                address: entry.address.clone(),
                verdict,
                external,
            }
        })
        .collect()
}

fn print_columns(rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..rows.first().map_or(0, Vec::len))
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        println!("{}", line.trim_end());
    }
}

async fn check(args: CheckArgs) -> Result<i32, RoutingError> {
    let connector = Connector::from_args(&args.connect)?;
    let cluster = load_cluster(&args.cluster).await?;
    let mut conn = connector.connect().await?;
    let rt = conn.route().await?;
    let address = conn.address().to_string();
    conn.close().await;
    let table = RoutingTable::from_rt(&rt).map_err(|cause| RoutingError::Table {
        address: address.clone(),
        cause,
    })?;
    // A data instance before 3.12 answers ROUTE with only itself (src/query/interpreter.cpp
    // Interpreter::Route @ v3.8.0); without ROUTE servers no client could refresh from it.
    if !table.entries.iter().any(|e| e.role == table::Role::Route) {
        return Err(BoltError::NotCoordinator {
            address,
            request: "ROUTE",
            message: "its routing table lists no ROUTE servers (a data instance answers with only itself)"
                .into(),
        }
        .into());
    }
    let rows = check_table(&table, cluster.as_ref(), args.cluster.bolt_port);
    println!(
        "routing table from {address}: ttl {}s, database {}",
        table.ttl,
        table.db.as_deref().unwrap_or("(default)")
    );
    let mut lines = vec![["ROLE", "ADDRESS", "FROM OUTSIDE", "EXTERNAL ADDRESS"]
        .map(String::from)
        .to_vec()];
    for row in &rows {
        let (usable, external) = match (&row.verdict, &row.external) {
            (Verdict::Usable, _) => ("usable".to_string(), String::new()),
            (Verdict::Unusable(why), ext) => (
                format!("NOT usable: {why}"),
                match ext {
                    Some(External::Found { address, source }) => format!("{address} ({source})"),
                    Some(External::Unknown(why)) => format!("unknown: {why}"),
                    Some(External::Invalid(why)) => format!("refused: {why}"),
                    None => "(pass --cluster or --in-cluster)".into(),
                },
            ),
        };
        lines.push(vec![
            row.role.to_string(),
            row.address.clone(),
            usable,
            external,
        ]);
    }
    print_columns(&lines);
    let bad: Vec<String> = rows
        .iter()
        .filter_map(|r| match &r.verdict {
            Verdict::Unusable(_) => Some(format!("{} {}", r.role, r.address)),
            Verdict::Usable => None,
        })
        .collect();
    if bad.is_empty() {
        println!("every address is usable from outside the cluster");
        Ok(0)
    } else {
        eprintln!(
            "unusable from outside the cluster: {}; fix the registrations with `routing sync`",
            bad.join(", ")
        );
        Ok(1)
    }
}

/// Which in-cluster name an instance was registered under: its management endpoint (always
/// in-cluster), then its Raft endpoint, then its Bolt address.
pub(crate) fn target_of(instance: &Instance, cluster: &RoutingCluster) -> Option<Target> {
    [
        &instance.management_server,
        &instance.coordinator_server,
        &instance.bolt_server,
    ]
    .into_iter()
    .filter(|a| !a.is_empty())
    .find_map(|address| {
        let host = table::host_of(address)
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if host.parse::<std::net::IpAddr>().is_ok() {
            cluster.owner_of_ip(&host).map(|(t, _)| t)
        } else {
            Target::from_cluster_name(&host, &cluster.namespace).filter(|t| match t {
                Target::Service { namespace, name } => {
                    cluster.state.service(namespace, name).is_some()
                }
                Target::Pod { namespace, name } => cluster
                    .pods
                    .iter()
                    .any(|p| &p.namespace == namespace && &p.name == name),
            })
        }
    })
}

/// Each instance's external address (pure, given the cluster view).
pub fn desired_addresses(
    instances: &[Instance],
    cluster: &RoutingCluster,
    bolt_port: i32,
) -> BTreeMap<String, Desired> {
    instances
        .iter()
        .map(|i| {
            let desired = match target_of(i, cluster) {
                None => Desired::Unknown(format!(
                    "none of its registered addresses ({}) names a Service or pod in the cluster view",
                    [&i.bolt_server, &i.management_server].map(String::as_str).join(", ")
                )),
                Some(target) => match cluster.external_keeping(
                    &target,
                    bolt_port,
                    Some(i.bolt_server.as_str()).filter(|b| !b.is_empty()),
                ) {
                    External::Found { address, source } => Desired::Address { address, source },
                    External::Unknown(why) => Desired::Unknown(why),
                    External::Invalid(why) => Desired::Invalid(why),
                },
            };
            (i.name.clone(), desired)
        })
        .collect()
}

pub(crate) async fn show_instances(conn: &mut Connection) -> Result<Vec<Instance>, RoutingError> {
    let result = conn.run("SHOW INSTANCES").await.map_err(|e| match e {
        BoltError::Query {
            address,
            message,
            code,
            ..
        } => BoltError::NotCoordinator {
            address,
            request: "SHOW INSTANCES",
            message: format!("{code}: {message}"),
        },
        other => other,
    })?;
    Ok(plan::instances(&result)?)
}

fn print_plan(plan: &Plan, apply: bool) {
    match plan.version {
        Some(version) => println!("Memgraph {version}: {}", plan.mode),
        None => println!(
            "Memgraph version unknown (no version in the coordinators' image tag): {}, if the leader accepts it",
            plan.mode
        ),
    }
    for name in &plan.unchanged {
        println!("ok        {name}: already registered with its external address");
    }
    for (name, why) in &plan.unresolved {
        println!("unknown   {name}: {why}");
    }
    for (name, why) in &plan.refused {
        println!("refused   {name}: {why}");
    }
    for change in &plan.changes {
        println!(
            "change    {}: {} -> {} ({})",
            change.instance, change.from, change.to, change.source
        );
    }
    if plan.changes.is_empty() {
        println!("nothing to change");
        return;
    }
    match (&plan.mode, apply) {
        (Mode::UpdateConfig, true) => println!("applying on the leader:"),
        (Mode::UpdateConfig, false) => println!("dry run; --apply executes on the leader:"),
        (Mode::Reregister, _) => println!(
            "run on the leader, in this order (a MAIN must be demoted or failed over before UNREGISTER INSTANCE):"
        ),
    }
    for change in &plan.changes {
        for statement in &change.statements {
            println!("  {statement};");
        }
    }
}

/// Where UPDATE CONFIG goes. On 3.9+ any coordinator forwards it, so the one at hand. On
/// 3.8 (and an unknown version) the leader itself, found by SHOW INSTANCES' role column:
/// the coordinator at hand when --bolt names the leader (its pod IP, or the address it is
/// registered or exposed under), else the leader's pod IP from the cluster view, with the
/// same TLS and credentials. Never an address the server reports: credentials go only where
/// the operator or the API server points.
async fn writer<'c>(
    conn: &'c mut Connection,
    leader_conn: &'c mut Option<Connection>,
    plan: &Plan,
    instances: &[Instance],
    desired: &BTreeMap<String, Desired>,
    cluster: &RoutingCluster,
    connector: &Connector,
) -> Result<&'c mut Connection, RoutingError> {
    if !plan::needs_leader(plan.version) {
        return Ok(conn);
    }
    let leader =
        instances
            .iter()
            .find(|i| i.is_leader())
            .ok_or_else(|| RoutingError::NoLeader {
                address: conn.address().to_string(),
            })?;
    let why_leader = match plan.version {
        Some(v) => format!("Memgraph {v} does not forward it"),
        None => "the version is unknown, and 3.8 does not forward it".to_string(),
    };
    let endpoint = target_of(leader, cluster)
        .and_then(|t| cluster.pod_for(&t))
        // Credentials go only to a StatefulSet's pod, as the reconciler sends them.
        .filter(|p| p.statefulset.is_some())
        .and_then(|p| cluster.pod_endpoint(p));
    let at_hand = conn.address().to_string();
    let mut names = vec![leader.bolt_server.clone()];
    if let Some(Desired::Address { address, .. }) = desired.get(&leader.name) {
        names.push(address.clone());
    }
    if let Some((ip, port, _)) = &endpoint {
        names.push(crate::decision::hostport::format_host_port(ip, *port));
    }
    if names.iter().any(|n| same_address(n, &at_hand)) {
        return Ok(conn);
    }
    let Some((ip, port, tls_name)) = endpoint else {
        return Err(RoutingError::LeaderNotReachable {
            leader: leader.name.clone(),
            why_leader,
            problem: format!(
                "--bolt {at_hand} is not it and the cluster view has no pod IP for it"
            ),
        });
    };
    let address = BoltAddress { host: ip, port };
    match connector.connect_to_pod(&address, tls_name).await {
        Ok(c) => {
            println!(
                "  (on the leader {} at its pod IP {})",
                leader.name,
                c.address()
            );
            Ok(leader_conn.insert(c))
        }
        Err(e) => Err(RoutingError::LeaderNotReachable {
            leader: leader.name.clone(),
            why_leader,
            problem: format!("its pod IP cannot be reached: {e}"),
        }),
    }
}

/// Two `host:port` strings name the same endpoint (case and a trailing dot aside).
fn same_address(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        let (host, port) = s.rsplit_once(':').unwrap_or((s, ""));
        (
            host.trim_end_matches('.').to_ascii_lowercase(),
            port.to_string(),
        )
    };
    norm(a) == norm(b)
}

/// What `routing sync` does once it has a plan (pure; the exit codes of its --help).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterPlan {
    /// Stop with this exit code.
    Exit(i32),
    /// Execute the plan on the leader, then verify.
    Apply,
}

pub fn after_plan(plan: &Plan, apply: bool) -> AfterPlan {
    // A value from the cluster that cannot be registered is an input error: exit 2 once
    // everything else is done, so that a CronJob fails and someone looks.
    let floor = if plan.refused.is_empty() { 0 } else { 2 };
    match (&plan.mode, plan.changes.is_empty(), apply) {
        // Unresolved instances are reported, not failed: a later run picks them up.
        (_, true, _) => AfterPlan::Exit(floor),
        // 3.0-3.7: the statements are printed for an operator; nothing here can run them.
        (Mode::Reregister, false, _) => AfterPlan::Exit(floor),
        (Mode::UpdateConfig, false, false) => AfterPlan::Exit(floor.max(1)),
        (Mode::UpdateConfig, false, true) => AfterPlan::Apply,
    }
}

/// The exit code after --apply, from planning again against the new SHOW INSTANCES.
pub fn after_apply(again: &Plan) -> i32 {
    if !again.refused.is_empty() {
        2
    } else if again.changes.is_empty() {
        0
    } else {
        1
    }
}

async fn sync(args: SyncArgs) -> Result<i32, RoutingError> {
    let connector = Connector::from_args(&args.connect)?;
    let cluster = load_cluster(&args.cluster)
        .await?
        .ok_or(RoutingError::NoClusterView)?;
    let version = args
        .memgraph_version
        .or_else(|| cluster.memgraph_version(&args.cluster.namespace));
    let mut conn = connector.connect().await?;
    let instances = show_instances(&mut conn).await?;
    let desired = desired_addresses(&instances, &cluster, args.cluster.bolt_port);
    let plan = plan::plan(&instances, &desired, version, args.replication_port)?;
    print_plan(&plan, args.apply);
    for (name, why) in &plan.refused {
        eprintln!("refused {name}: {why}");
    }
    if let AfterPlan::Exit(code) = after_plan(&plan, args.apply) {
        conn.close().await;
        return Ok(code);
    }
    let mut leader_conn = None;
    let result = apply_plan(
        &mut conn,
        &mut leader_conn,
        &plan,
        &instances,
        &desired,
        &cluster,
        &connector,
    )
    .await;
    if let Some(c) = leader_conn {
        c.close().await;
    }
    conn.close().await;
    let after = result?;
    // Idempotence, checked: planning again against the new state finds nothing to do.
    let desired = desired_addresses(&after, &cluster, args.cluster.bolt_port);
    let again = plan::plan(&after, &desired, version, args.replication_port)?;
    if again.is_empty() {
        println!(
            "verified: SHOW INSTANCES now lists every external address; a second run plans nothing"
        );
    } else {
        let left: Vec<_> = again
            .changes
            .iter()
            .map(|c| format!("{} ({})", c.instance, c.from))
            .collect();
        eprintln!(
            "after applying, these registrations still differ: {}",
            left.join(", ")
        );
    }
    for (name, why) in &again.refused {
        eprintln!("refused {name}: {why}");
    }
    Ok(after_apply(&again))
}

/// Runs the plan's statements where they must run, then reads SHOW INSTANCES back there.
async fn apply_plan(
    conn: &mut Connection,
    leader_conn: &mut Option<Connection>,
    plan: &Plan,
    instances: &[Instance],
    desired: &BTreeMap<String, Desired>,
    cluster: &RoutingCluster,
    connector: &Connector,
) -> Result<Vec<Instance>, RoutingError> {
    let writer = writer(
        conn,
        leader_conn,
        plan,
        instances,
        desired,
        cluster,
        connector,
    )
    .await?;
    for change in &plan.changes {
        for statement in &change.statements {
            match writer.run(statement).await {
                Ok(_) => println!("  done: {statement}"),
                // The version is unknown and the leader refused: say both ways out instead
                // of reading its message (what it means is not ours to parse).
                Err(cause @ BoltError::Query { .. }) if plan.version.is_none() => {
                    let by_hand: Vec<String> = plan
                        .changes
                        .iter()
                        .flat_map(|c| c.by_hand.clone())
                        .collect();
                    return Err(RoutingError::UnknownVersionRefused {
                        statement: statement.clone(),
                        cause: Box::new(cause),
                        annotation: crate::decision::pod::VERSION_ANNOTATION,
                        by_hand: by_hand.join("; "),
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    show_instances(writer).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use plan::Change;

    #[test]
    fn a_state_file_with_the_chart_s_gateway_gives_the_gateway_address() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
        let text = [
            std::fs::read_to_string(format!("{dir}/states/gateway.yaml")).unwrap(),
            std::fs::read_to_string(format!("{dir}/pods/data-3x.yaml")).unwrap(),
        ]
        .join("\n---\n");
        let args = ClusterArgs {
            cluster: None,
            in_cluster: false,
            namespace: "memgraph".into(),
            node_address_types: vec!["ExternalIP".into()],
            node_selector: Default::default(),
            bolt_port: 7687,
        };
        let cluster = cluster_from_text(&text, "state.yaml", &args).unwrap();
        let target = resolve::Target::from_cluster_name(
            "memgraph-data-0.memgraph.svc.cluster.local",
            "memgraph",
        )
        .unwrap();
        match cluster.external_for(&target, 7687) {
            resolve::External::Found { address, source } => {
                assert_eq!(address, "203.0.113.80:9000");
                assert!(
                    source.starts_with("Gateway memgraph/memgraph-gateway"),
                    "{source}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    fn plan_with(mode: Mode, changes: usize, unresolved: usize) -> Plan {
        Plan {
            mode,
            version: None,
            refused: vec![],
            changes: (0..changes)
                .map(|i| Change {
                    instance: format!("instance_{i}"),
                    from: "memgraph-data-0.default.svc.cluster.local:7687".into(),
                    to: "203.0.113.5:30020".into(),
                    source: "test".into(),
                    statements: vec!["UPDATE CONFIG ...".into()],
                    by_hand: vec![],
                })
                .collect(),
            unchanged: vec![],
            unresolved: (0..unresolved)
                .map(|i| (format!("pending_{i}"), "no ingress yet".into()))
                .collect(),
        }
    }

    #[test]
    fn sync_exits_0_when_only_reported_items_are_left() {
        for apply in [false, true] {
            for mode in [Mode::UpdateConfig, Mode::Reregister] {
                // Nothing to change, with or without unknown addresses.
                assert_eq!(
                    after_plan(&plan_with(mode.clone(), 0, 0), apply),
                    AfterPlan::Exit(0)
                );
                assert_eq!(
                    after_plan(&plan_with(mode.clone(), 0, 2), apply),
                    AfterPlan::Exit(0),
                    "unknown addresses are reported, not failed"
                );
            }
            // 3.0-3.7: statements printed for an operator.
            assert_eq!(
                after_plan(&plan_with(Mode::Reregister, 3, 1), apply),
                AfterPlan::Exit(0)
            );
        }
    }

    #[test]
    fn sync_exits_2_when_the_cluster_gives_a_value_that_is_not_a_host() {
        for apply in [false, true] {
            for changes in [0, 2] {
                let mut plan = plan_with(Mode::UpdateConfig, changes, 0);
                plan.refused.push((
                    "instance_0".into(),
                    "db.example.com:7687 is not a host".into(),
                ));
                let expected = if changes > 0 && apply {
                    AfterPlan::Apply
                } else {
                    AfterPlan::Exit(2)
                };
                assert_eq!(after_plan(&plan, apply), expected);
                assert_eq!(after_apply(&plan), 2);
            }
        }
    }

    #[test]
    fn the_leader_is_recognised_under_any_address_it_is_known_by() {
        assert!(same_address(
            "Memgraph-Coordinator-1.ns.svc.cluster.local.:7687",
            "memgraph-coordinator-1.ns.svc.cluster.local:7687"
        ));
        assert!(!same_address("10.0.0.1:7687", "10.0.0.1:7688"));
        assert!(!same_address("10.0.0.1:7687", "10.0.0.2:7687"));
    }

    #[test]
    fn sync_exits_1_for_changes_it_could_apply() {
        assert_eq!(
            after_plan(&plan_with(Mode::UpdateConfig, 2, 0), false),
            AfterPlan::Exit(1)
        );
        assert_eq!(
            after_plan(&plan_with(Mode::UpdateConfig, 2, 1), true),
            AfterPlan::Apply
        );
        assert_eq!(after_apply(&plan_with(Mode::UpdateConfig, 0, 1)), 0);
        assert_eq!(after_apply(&plan_with(Mode::UpdateConfig, 1, 0)), 1);
    }

    #[test]
    fn the_exit_codes_are_in_the_help() {
        use clap::CommandFactory;
        let mut cli = crate::cli::Cli::command();
        let routing = cli.find_subcommand_mut("routing").unwrap();
        for name in ["check", "sync"] {
            let help = routing
                .find_subcommand_mut(name)
                .unwrap()
                .render_long_help()
                .to_string();
            for code in ["0  ", "1  ", "2  connection, TLS, protocol or input error"] {
                assert!(help.contains(code), "{name} --help lacks {code:?}:\n{help}");
            }
            assert!(help.contains("--bolt-ca"), "{help}");
        }
    }
}
