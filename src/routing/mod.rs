//! `routing check` and `routing sync`: read the routing table a Memgraph coordinator gives
//! clients, say which entries a client outside the cluster cannot use, and fix the
//! registrations behind them (shared/memgraph-ha.md, "The problem").
//!
//! Pure core: `table` (classify addresses), `resolve` (the external address of an instance,
//! with the webhook's `decision::address::resolve`), `plan` (which statements). Thin shells:
//! `bolt` (the IO), this file (flags, loading the cluster view, printing, exit codes).
//! Exit codes: 0 every address usable (check) / nothing left to change (sync); 1 unusable
//! addresses remain; 2 connection, protocol or input errors (returned as `Err`).

pub mod plan;
pub mod resolve;
pub mod table;
pub mod uri;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use k8s_openapi::api::core::v1::{Node, Pod, Service};

use crate::decision::pod::Version;
use bolt::{BoltError, Connection, Credentials};
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
    /// client outside the cluster can use. Exit 0 all usable, 1 some not, 2 errors.
    Check(CheckArgs),
    /// Make each instance's registered Bolt address its external one (SHOW INSTANCES, then
    /// UPDATE CONFIG on 3.8+). Dry run unless --apply. Exit 0 nothing left to change, 1
    /// changes pending or unresolved, 2 errors.
    Sync(SyncArgs),
}

#[derive(Args, Debug)]
pub struct ConnectArgs {
    /// A coordinator's Bolt address: host:port, [IPv6 address]:port or bolt://host:port.
    #[arg(long, env = "MAI_BOLT")]
    pub bolt: String,
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
    /// The Memgraph version; asked with SHOW VERSION when absent.
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
    #[error("{0}: Bolt over TLS is not supported by this version; use the plain Bolt port")]
    TlsUnsupported(String),
    #[error("cannot read the password file {path}: {source}")]
    PasswordFile {
        path: String,
        source: std::io::Error,
    },
    #[error("--password-file needs --user")]
    PasswordWithoutUser,
    #[error("{address} returned an unusable routing table: {source}")]
    Table { address: String, source: TableError },
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    State(#[from] crate::cluster::StateError),
    #[error("cannot list {what} from the API server: {message}")]
    Kube { what: &'static str, message: String },
    #[error("routing sync needs a cluster view to know the external addresses: pass --cluster FILE or --in-cluster")]
    NoClusterView,
    #[error("SHOW VERSION on {address} gave no version ({got}); pass --memgraph-version")]
    NoVersion { address: String, got: String },
    #[error("{statement:?} needs the leader, and no leader is reachable: {tried}")]
    NoLeader { statement: String, tried: String },
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
    let password = match &args.password_file {
        None => String::new(),
        Some(path) => std::fs::read_to_string(path)
            .map_err(|source| RoutingError::PasswordFile {
                path: path.display().to_string(),
                source,
            })?
            .trim_end_matches(['\n', '\r'])
            .to_string(),
    };
    match &args.user {
        Some(user) => Ok(Some(Credentials {
            user: user.clone(),
            password,
        })),
        None if args.password_file.is_some() => Err(RoutingError::PasswordWithoutUser),
        None => Ok(None),
    }
}

async fn connect(args: &ConnectArgs) -> Result<Connection, RoutingError> {
    let uri = uri::BoltUri::parse(&args.bolt)?;
    if uri.security != uri::Security::Plain {
        return Err(RoutingError::TlsUnsupported(args.bolt.clone()));
    }
    let address = uri.address;
    let creds = credentials(args)?;
    Ok(Connection::connect(
        &address,
        creds.as_ref(),
        Duration::from_millis(args.timeout_ms),
    )
    .await?)
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
    Ok(RoutingCluster::from_objects(
        &services,
        &nodes,
        &pods,
        &args.namespace,
        node_types(args),
    ))
}

fn node_types(args: &ClusterArgs) -> Vec<String> {
    args.node_address_types
        .iter()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
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
    let nodes = Api::<Node>::all(client)
        .list(&lp)
        .await
        .map_err(kube_err("Nodes"))?
        .items;
    Ok(Some(RoutingCluster::from_objects(
        &services,
        &nodes,
        &pods,
        &args.namespace,
        node_types(args),
    )))
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
    let cluster = load_cluster(&args.cluster).await?;
    let mut conn = connect(&args.connect).await?;
    let rt = conn.route().await?;
    let address = conn.address().to_string();
    conn.close().await;
    let table = RoutingTable::from_rt(&rt).map_err(|source| RoutingError::Table {
        address: address.clone(),
        source,
    })?;
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
fn target_of(instance: &Instance, cluster: &RoutingCluster) -> Option<Target> {
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
                Some(target) => match cluster.external_for(&target, bolt_port) {
                    External::Found { address, source } => Desired::Address { address, source },
                    External::Unknown(why) => Desired::Unknown(why),
                },
            };
            (i.name.clone(), desired)
        })
        .collect()
}

async fn show_instances(conn: &mut Connection) -> Result<Vec<Instance>, RoutingError> {
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

async fn memgraph_version(conn: &mut Connection) -> Result<Version, RoutingError> {
    let result = conn.run("SHOW VERSION").await?;
    let got = result
        .records
        .first()
        .and_then(|r| r.first())
        .map(|v| v.display())
        .unwrap_or_default();
    Version::parse(&got).ok_or(RoutingError::NoVersion {
        address: conn.address().to_string(),
        got,
    })
}

fn print_plan(plan: &Plan, version: Version, apply: bool) {
    println!("Memgraph {version}: {}", plan.mode);
    for name in &plan.unchanged {
        println!("ok        {name}: already registered with its external address");
    }
    for (name, why) in &plan.unresolved {
        println!("unknown   {name}: {why}");
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
        (Mode::Reregister, _) => {
            println!("run on the leader, after removing each old registration (UNREGISTER INSTANCE name; a MAIN must be demoted first):")
        }
    }
    for change in &plan.changes {
        for statement in &change.statements {
            println!("  {statement};");
        }
    }
}

/// Runs a statement on the leader: on `conn` first; when that coordinator says it is not the
/// leader, on the leader's external address, then its registered one.
async fn on_leader(
    conn: &mut Connection,
    statement: &str,
    instances: &[Instance],
    desired: &BTreeMap<String, Desired>,
    args: &ConnectArgs,
) -> Result<(), RoutingError> {
    let message = match conn.run(statement).await {
        Ok(_) => return Ok(()),
        Err(BoltError::Query { message, .. })
            if message.to_ascii_lowercase().contains("leader") =>
        {
            message
        }
        Err(e) => return Err(e.into()),
    };
    let leader = instances.iter().find(|i| i.is_leader());
    let mut candidates = Vec::new();
    if let Some(leader) = leader {
        if let Some(Desired::Address { address, .. }) = desired.get(&leader.name) {
            candidates.push(address.clone());
        }
        candidates.push(leader.bolt_server.clone());
    }
    let creds = credentials(args)?;
    let mut tried = vec![format!("{}: {message}", conn.address())];
    for candidate in candidates {
        let address = match uri::BoltUri::parse(&candidate) {
            Ok(uri) => uri.address,
            Err(e) => {
                tried.push(e.to_string());
                continue;
            }
        };
        let attempt = async {
            let mut leader_conn = Connection::connect(
                &address,
                creds.as_ref(),
                Duration::from_millis(args.timeout_ms),
            )
            .await?;
            leader_conn.run(statement).await?;
            Ok::<_, BoltError>(leader_conn)
        };
        match attempt.await {
            Ok(leader_conn) => {
                println!("  (on the leader at {})", leader_conn.address());
                let old = std::mem::replace(conn, leader_conn);
                old.close().await;
                return Ok(());
            }
            Err(e) => tried.push(e.to_string()),
        }
    }
    Err(RoutingError::NoLeader {
        statement: statement.to_string(),
        tried: tried.join("; "),
    })
}

async fn sync(args: SyncArgs) -> Result<i32, RoutingError> {
    let cluster = load_cluster(&args.cluster)
        .await?
        .ok_or(RoutingError::NoClusterView)?;
    let mut conn = connect(&args.connect).await?;
    let version = match args.memgraph_version {
        Some(v) => v,
        None => memgraph_version(&mut conn).await?,
    };
    let instances = show_instances(&mut conn).await?;
    let desired = desired_addresses(&instances, &cluster, args.cluster.bolt_port);
    let plan = plan::plan(&instances, &desired, version, args.replication_port)?;
    print_plan(&plan, version, args.apply);
    if plan.is_empty() {
        conn.close().await;
        return Ok(if plan.unresolved.is_empty() { 0 } else { 1 });
    }
    if !args.apply || plan.mode == Mode::Reregister {
        conn.close().await;
        return Ok(1);
    }
    for change in &plan.changes {
        for statement in &change.statements {
            on_leader(&mut conn, statement, &instances, &desired, &args.connect).await?;
            println!("  done: {statement}");
        }
    }
    // Idempotence, checked: planning again against the new state finds nothing to do.
    let after = show_instances(&mut conn).await?;
    conn.close().await;
    let desired = desired_addresses(&after, &cluster, args.cluster.bolt_port);
    let again = plan::plan(&after, &desired, version, args.replication_port)?;
    if again.is_empty() {
        println!(
            "verified: SHOW INSTANCES now lists every external address; a second run plans nothing"
        );
        Ok(if again.unresolved.is_empty() { 0 } else { 1 })
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
        Ok(1)
    }
}
