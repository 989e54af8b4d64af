//! The decision core of memgraph-address-injector: given an admission request and a view of
//! the cluster, what patch? Pure: no IO, no async, no clock (this crate depends on no runtime).
//! Data flows one way: request → pod facts (`pod`) → Service (`service`) → address
//! (`address`) → ops (`patch`) → response (`review`). `hostport` is the one `host:port`
//! parser and formatter; `state` reads state files (JSON or multi-document YAML).
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod address;
pub mod exposure;
pub mod hostport;
pub mod nodes;
pub mod patch;
pub mod pod;
pub mod proxy;
pub mod review;
pub mod service;
pub mod state;
pub mod view;

use std::collections::BTreeMap;

use json_patch::PatchOperation;

use address::{ExternalAddress, Resolution};
use exposure::{Exposure, Located};
use hostport::is_ipv6_literal;
use pod::{MemgraphPod, Pod, Recognition, Role, Version};
use view::{ClusterState, ServiceView};

pub const ADDRESS_ANNOTATION: &str = "memgraph-address-injector/bolt-address";
pub const SOURCE_ANNOTATION: &str = "memgraph-address-injector/source";
pub const DEFAULT_ENV_NAME: &str = "MEMGRAPH_EXTERNAL_BOLT_ADDRESS";

/// `--coordinator-hostname` sets a 2.18–2.x coordinator's own ROUTE entry
/// (docs/design.md, "Where the addresses in the routing table come from"); 3.0 dropped that
/// meaning.
const HOSTNAME_FLAG_FROM: Version = Version::new(2, 18, 0);
const HOSTNAME_FLAG_UNTIL: Version = Version::new(3, 0, 0);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnPending {
    /// Deny the pod so that its controller retries it later.
    Deny,
    /// Admit the pod without an address, with a warning.
    Allow,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not an --on-pending value; use deny or allow")]
pub struct OnPendingError(String);

impl std::str::FromStr for OnPending {
    type Err = OnPendingError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "deny" => Ok(Self::Deny),
            "allow" => Ok(Self::Allow),
            _ => Err(OnPendingError(text.to_string())),
        }
    }
}

/// Memgraph's own flags that decide where it listens, who it is in the cluster and where it
/// keeps data (docs/design.md, "HA flags"); `--coordinator-flag` must not set them.
const MEMGRAPH_FLAGS: &[&str] = &[
    "management-port",
    "coordinator-port",
    "coordinator-id",
    "coordinator-hostname",
    "nuraft-log-file",
    "ha-durability",
    "instance-down-timeout-sec",
    "instance-health-check-frequency-sec",
    "replication-port",
    "data-directory",
    "log-file",
    "log-level",
    "also-log-to-stderr",
    "flag-file",
    "monitoring-port",
    "metrics-port",
];

/// `--coordinator-flag`: one `--name=value` token with `{address}`, `{host}`, `{port}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlagTemplate {
    pub name: String,
    pub value: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("the environment variable name {0:?} is one that Memgraph reads itself; injecting it would change Memgraph's configuration (see shared/memgraph-ha.md). Choose another name, such as MEMGRAPH_EXTERNAL_BOLT_ADDRESS")]
    ReservedEnvName(String),
    #[error("{0:?} is not a valid environment variable name (letters, digits and _, not starting with a digit)")]
    InvalidEnvName(String),
    #[error("--coordinator-flag {0:?} must be one token of the form --name=value, with {{address}}, {{host}} or {{port}} in the value")]
    InvalidFlagTemplate(String),
    #[error("--coordinator-flag may not set --{0}: Memgraph reads that flag itself, and the webhook only changes Memgraph's own flags under the checks described in README (what is injected, by Memgraph version)")]
    MemgraphFlag(String),
    #[error("--node-address-types needs at least one address type, such as ExternalIP")]
    NoNodeAddressTypes,
}

impl FlagTemplate {
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::InvalidFlagTemplate(text.to_string());
        let body = text.strip_prefix("--").ok_or_else(bad)?;
        let (name, value) = body.split_once('=').ok_or_else(bad)?;
        let valid_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid_name || value.contains(char::is_whitespace) {
            return Err(bad());
        }
        let name = name.replace('_', "-");
        if MEMGRAPH_FLAGS.contains(&name.as_str()) || name.starts_with("bolt-") {
            return Err(ConfigError::MemgraphFlag(name));
        }
        Ok(Self {
            name,
            value: value.to_string(),
        })
    }

    fn render(&self, ext: &ExternalAddress) -> String {
        self.value
            .replace("{address}", &ext.address())
            .replace("{host}", &ext.host)
            .replace("{port}", &ext.port.to_string())
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub recognition: Recognition,
    pub env_name: String,
    pub on_pending: OnPending,
    pub node_address_types: Vec<String>,
    /// Which Nodes may carry a NodePort address.
    pub node_selector: nodes::NodeSelector,
    pub coordinator_flag: Option<FlagTemplate>,
    /// ingress-nginx's tcp-services ConfigMap and controller Service (`None`: not read).
    pub ingress_nginx: Option<proxy::IngressNginx>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            recognition: Recognition {
                container_names: ["memgraph", "memgraph-coordinator", "memgraph-data"]
                    .map(String::from)
                    .to_vec(),
                default_version: Version::new(3, 0, 0),
            },
            env_name: DEFAULT_ENV_NAME.into(),
            on_pending: OnPending::Deny,
            node_address_types: vec!["ExternalIP".into(), "InternalIP".into()],
            node_selector: nodes::NodeSelector::default(),
            coordinator_flag: None,
            ingress_nginx: Some(proxy::IngressNginx::default()),
        }
    }
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let name = &self.env_name;
        if pod::MEMGRAPH_READS_ENV.contains(&name.as_str()) {
            return Err(ConfigError::ReservedEnvName(name.clone()));
        }
        let mut chars = name.chars();
        let valid = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(ConfigError::InvalidEnvName(name.clone()));
        }
        if self.node_address_types.is_empty() {
            return Err(ConfigError::NoNodeAddressTypes);
        }
        Ok(())
    }
}

/// The most a warning sent back to the API server may hold (kube-core's advice): clients
/// print admission warnings on one line, and the API server truncates long ones.
pub const MAX_WARNING_LEN: usize = 120;
const WARNING_PREFIX: &str = "memgraph-address-injector: ";

/// A warning: a short summary for the admission response (at most [`MAX_WARNING_LEN`]
/// characters, prefix included) and the whole explanation for the log and the Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub summary: String,
    pub detail: String,
}

impl Warning {
    pub fn new(summary: impl Into<String>, detail: impl Into<String>) -> Self {
        let mut summary = format!("{WARNING_PREFIX}{}", summary.into());
        if summary.chars().count() > MAX_WARNING_LEN {
            let cut = summary
                .char_indices()
                .nth(MAX_WARNING_LEN - 1)
                .map_or(summary.len(), |(i, _)| i);
            summary.truncate(cut);
            summary.push('…');
        }
        Self {
            summary,
            detail: detail.into(),
        }
    }
}

/// Which pod a decision is about, for logs and Events: at CREATE a StatefulSet pod already
/// has its name, other pods may only have a generateName.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: Option<String>,
    pub generate_name: Option<String>,
    /// The owning controller (kind, name, uid), where an Event about the pod is useful.
    pub owner: Option<OwnerRef>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerRef {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub uid: String,
}

impl PodRef {
    fn of(pod: &Pod<'_>, namespace: &str) -> Self {
        let meta = pod.metadata.as_ref();
        let text = |v: Option<&str>| v.filter(|t| !t.is_empty()).map(str::to_string);
        Self {
            namespace: namespace.to_string(),
            name: text(meta.and_then(|m| m.name.as_deref())),
            generate_name: text(meta.and_then(|m| m.generate_name.as_deref())),
            owner: pod.controller().map(|o| OwnerRef {
                api_version: o.api_version.to_string(),
                kind: o.kind.to_string(),
                name: o.name.to_string(),
                uid: o.uid.to_string(),
            }),
        }
    }
}

impl std::fmt::Display for PodRef {
    /// `ns/name`, else `ns/generateName*` and the owner, so that a log line names the pod.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.name, &self.generate_name) {
            (Some(name), _) => write!(f, "{}/{name}", self.namespace)?,
            (None, Some(prefix)) => write!(f, "{}/{prefix}*", self.namespace)?,
            (None, None) => write!(f, "{}/<unnamed>", self.namespace)?,
        }
        if self.name.is_none() {
            if let Some(owner) = &self.owner {
                write!(f, " (owner {} {})", owner.kind, owner.name)?;
            }
        }
        Ok(())
    }
}

/// What happened, for metrics and for the server's cache-miss retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not a Pod CREATE, not a Memgraph pod, or opted out.
    Ignored,
    /// The pod could not be read; admitted untouched.
    Unreadable,
    /// No Service exposes the pod outside the cluster.
    NotExposed,
    /// The pod names a Service that does not exist.
    NamedServiceMissing,
    /// The pod names a Service that cannot expose it.
    Denied,
    /// The address is not known yet.
    Pending,
    /// The cluster gives a host that is not usable (bad annotation, ingress hostname).
    InvalidHost,
    /// Patched.
    Injected,
    /// Already carries everything; no patch.
    Unchanged,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ignored => "ignored",
            Outcome::Unreadable => "unreadable",
            Outcome::NotExposed => "not_exposed",
            Outcome::NamedServiceMissing => "service_missing",
            Outcome::Denied => "denied",
            Outcome::Pending => "pending",
            Outcome::InvalidHost => "invalid_host",
            Outcome::Injected => "injected",
            Outcome::Unchanged => "unchanged",
        }
    }

    /// Outcomes that a fresh list of the namespace's Services could change.
    pub fn may_be_cache_miss(self) -> bool {
        matches!(self, Outcome::NotExposed | Outcome::NamedServiceMissing)
    }
}

#[derive(Debug)]
pub struct Decision {
    pub outcome: Outcome,
    pub role: Option<Role>,
    /// `Some(message)` denies the request.
    pub denial: Option<String>,
    pub patch: Vec<PatchOperation>,
    pub warnings: Vec<Warning>,
    /// The pod decided about; `None` when the request carries no readable Pod.
    pub pod: Option<PodRef>,
    pub audit_annotations: BTreeMap<String, String>,
    pub address: Option<String>,
}

impl Decision {
    fn allow(outcome: Outcome) -> Self {
        Self {
            outcome,
            role: None,
            denial: None,
            patch: Vec::new(),
            warnings: Vec::new(),
            pod: None,
            audit_annotations: BTreeMap::new(),
            address: None,
        }
    }

    fn with_warning(mut self, warning: Warning) -> Self {
        self.warnings.push(warning);
        self
    }

    /// The warnings as audit annotations (`warning-1`, ...), with their whole text: the
    /// StatefulSet controller drops admission warnings, the audit log keeps these.
    fn audit_warnings(&mut self) {
        for (i, w) in self.warnings.iter().enumerate() {
            self.audit_annotations
                .insert(format!("warning-{}", i + 1), w.detail.clone());
        }
    }
}

/// Decides an admission request: the namespace is the request's (the object's may be empty).
pub fn decide(
    request: &review::AdmissionRequest<'_>,
    cluster: &ClusterState,
    config: &Config,
) -> Decision {
    if !request.is_pod_create() {
        return Decision::allow(Outcome::Ignored);
    }
    let pod = match &request.object {
        review::PodObject::Pod(pod) => pod,
        review::PodObject::Missing => {
            return Decision::allow(Outcome::Unreadable).with_warning(Warning::new(
                "the request carries no Pod; admitted without an external Bolt address",
                "the admission request carries no Pod object; admitted without an external Bolt address",
            ));
        }
        review::PodObject::Unreadable(err) => {
            return Decision::allow(Outcome::Unreadable).with_warning(Warning::new(
                "could not read the Pod; admitted without an external Bolt address",
                format!(
                    "could not read the Pod ({err}); admitted without an external Bolt address"
                ),
            ))
        }
    };
    let namespace = request
        .namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .or_else(|| pod.metadata.as_ref().and_then(|m| m.namespace.as_deref()))
        .unwrap_or("default");
    let mut decision = decide_pod(pod, namespace, cluster, config);
    decision.pod = Some(PodRef::of(pod, namespace));
    decision.audit_warnings();
    decision
}

/// The decision for a Pod being created in `namespace`.
pub fn decide_pod(
    pod: &Pod<'_>,
    namespace: &str,
    cluster: &ClusterState,
    config: &Config,
) -> Decision {
    if pod.annotation(pod::OPT_OUT_ANNOTATION) == Some("false") {
        return Decision::allow(Outcome::Ignored);
    }
    let mg = match pod::memgraph_pod(pod, &config.recognition) {
        Ok(Some(mg)) => mg,
        Ok(None) => return Decision::allow(Outcome::Ignored),
        Err(err) => {
            return Decision::allow(Outcome::Unreadable).with_warning(Warning::new(
                format!("{err}; admitted without an external Bolt address"),
                format!("{err}; admitted without an external Bolt address"),
            ))
        }
    };
    let mut decision = Decision::allow(Outcome::Injected);
    decision.role = Some(mg.role);
    // Every HA instance is labelled, whatever its address, so that the routing reconciler
    // watches only these pods (`pod::MANAGED_LABEL`).
    if mg.role == Role::Coordinator || mg.management_port.is_some() {
        decision.patch.extend(patch::metadata(pod));
        decision
            .patch
            .extend(patch::labels(pod, &[(pod::MANAGED_LABEL, "true")]));
    }
    decision.warnings.extend(mg.warnings.iter().cloned());
    let pod_name = pod.display_name();

    let named = pod.annotation(pod::SERVICE_ANNOTATION);
    let exposure = match exposure::locate(
        cluster,
        namespace,
        pod,
        &mg,
        named,
        config.ingress_nginx.as_ref(),
    ) {
        Located::Exposed {
            exposure,
            ambiguity,
        } => {
            decision.warnings.extend(ambiguity);
            exposure
        }
        Located::NotExposed => {
            decision.outcome = Outcome::NotExposed;
            return decision;
        }
        Located::NamedMissing(name) => {
            decision.outcome = Outcome::NamedServiceMissing;
            decision.denial = Some(format!(
                "memgraph-address-injector: pod {pod_name} names Service {name} in annotation {}, but no Service {name} exists in namespace {namespace}",
                pod::SERVICE_ANNOTATION
            ));
            return decision;
        }
        Located::NamedUnqualified(name, why) => {
            decision.outcome = Outcome::Denied;
            decision.denial = Some(format!(
                "memgraph-address-injector: pod {pod_name} names Service {name} in annotation {}, but Service {name} cannot expose its Bolt port {}: {why}",
                pod::SERVICE_ANNOTATION,
                mg.bolt_port
            ));
            return decision;
        }
    };

    let mut rules = nodes::NodeRules::new(&config.node_address_types, &config.node_selector);
    // A pod created with spec.nodeName is already placed.
    rules.pod_node = pod.node_name();
    let ext = match exposure.resolve(cluster, &rules) {
        Resolution::Resolved(ext) => ext,
        Resolution::Pending(missing) => {
            decision.outcome = Outcome::Pending;
            match config.on_pending {
                OnPending::Deny => {
                    decision.denial = Some(format!(
                        "memgraph-address-injector: the external Bolt address of pod {pod_name} is not known yet: {missing}. The pod will be admitted once it is (its StatefulSet retries); set --on-pending=allow to admit such pods without an address"
                    ));
                }
                OnPending::Allow => decision.warnings.push(Warning::new(
                    format!("admitted without an external Bolt address: {missing}"),
                    format!("pod {pod_name} admitted without an external Bolt address: {missing}"),
                )),
            }
            return decision;
        }
        Resolution::Unusable(why) => {
            decision.outcome = Outcome::InvalidHost;
            match config.on_pending {
                OnPending::Deny => {
                    decision.denial = Some(format!(
                        "memgraph-address-injector: the external Bolt address of pod {pod_name} cannot be decided: {why}. Fix the value; the pod is admitted once it is usable (its StatefulSet retries), or set --on-pending=allow to admit such pods without an address"
                    ));
                }
                OnPending::Allow => decision.warnings.push(Warning::new(
                    format!(
                        "{}: unusable host; admitted without an address",
                        exposure.short_name()
                    ),
                    format!("pod {pod_name} admitted without an external Bolt address: {why}"),
                )),
            }
            return decision;
        }
    };
    decision.warnings.extend(ext.warnings.iter().cloned());
    let address = ext.address();
    let source = exposure.source(&ext);

    let index = mg.container_index;
    let mut env = vec![(config.env_name.as_str(), address.as_str())];
    let mut flags: Vec<(String, String)> = Vec::new();
    if mg.role == Role::Coordinator {
        if (HOSTNAME_FLAG_FROM..HOSTNAME_FLAG_UNTIL).contains(&mg.version) {
            match hostname_rewrite_blocker(&mg, &exposure, &ext, pod) {
                None if mg.env_configured => {
                    env.push(("MEMGRAPH_COORDINATOR_HOSTNAME", ext.host.as_str()));
                }
                None if mg.container.flag("coordinator-hostname").is_some()
                    || mg.container.flag("coordinator-id").is_some() =>
                {
                    flags.push(("coordinator-hostname".into(), ext.host.clone()));
                }
                None => decision.warnings.push(Warning::new(
                    "--coordinator-hostname not set: no --coordinator-id or coordination variables",
                    format!(
                        "coordinator {pod_name} (Memgraph {}) sets neither --coordinator-id nor coordination environment variables, so --coordinator-hostname was not set; its own routing-table entry keeps its in-cluster name",
                        mg.version
                    ),
                )),
                Some(blocker) => decision.warnings.push(Warning::new(
                    // The failed condition first: the API server keeps only the start.
                    format!("{}; --coordinator-hostname left unchanged", blocker.summary),
                    format!(
                        "--coordinator-hostname of coordinator {pod_name} (Memgraph {}) left unchanged because {}; its own ROUTE entry keeps its in-cluster name until you register the external address (routing sync) or upgrade to Memgraph 3",
                        mg.version, blocker.detail
                    ),
                )),
            }
        }
        if let Some(template) = &config.coordinator_flag {
            flags.push((template.name.clone(), template.render(&ext)));
        }
    }

    if pod.metadata.is_none() && decision.patch.is_empty() {
        decision.patch.extend(patch::metadata(pod));
    }
    decision.patch.extend(patch::annotations(
        pod,
        &[
            (ADDRESS_ANNOTATION, address.as_str()),
            (SOURCE_ANNOTATION, source.as_str()),
        ],
    ));
    decision.patch.extend(patch::env(index, mg.container, &env));
    for (name, value) in &flags {
        decision
            .patch
            .extend(patch::flag(index, mg.container, name, value));
    }
    if decision.patch.is_empty() {
        decision.outcome = Outcome::Unchanged;
    }
    decision
        .audit_annotations
        .insert("bolt-address".into(), address.clone());
    decision.audit_annotations.insert("source".into(), source);
    decision.address = Some(address);
    decision
}

/// Why `--coordinator-hostname` must not be rewritten to the external host, if it must not.
/// On 2.18–2.x the flag is also the Raft and management endpoint, so other coordinators will
/// dial `host:coordinator-port` and `host:management-port` through the same Service.
/// Why the hostname flag stays: a short reason for the warning, the whole one for logs.
struct Blocker {
    summary: String,
    detail: String,
}

fn blocker(summary: impl Into<String>, detail: String) -> Option<Blocker> {
    Some(Blocker {
        summary: summary.into(),
        detail,
    })
}

fn hostname_rewrite_blocker(
    mg: &MemgraphPod<'_, '_>,
    exposure: &Exposure<'_>,
    ext: &ExternalAddress,
    pod: &Pod<'_>,
) -> Option<Blocker> {
    let service: &ServiceView = match exposure {
        Exposure::Service { service, .. } => service,
        // A TCP proxy carries the Bolt port only; the Raft ports behind the same host
        // cannot be proven.
        Exposure::Proxied(_) => {
            return blocker(
                format!("Bolt reaches it through {}", exposure.short_name()),
                format!(
                    "its Bolt port reaches clients through {}, which carries no coordinator or management port, so Raft traffic cannot follow the external host",
                    exposure.short_name()
                ),
            )
        }
    };
    if ext.port != mg.bolt_port {
        return blocker(
            format!("external port {} is not Bolt port {}", ext.port, mg.bolt_port),
            format!(
                "the external port {} differs from the Bolt port {} (the flag carries a host only; use a LoadBalancer that exposes port {})",
                ext.port, mg.bolt_port, mg.bolt_port
            ),
        );
    }
    if is_ipv6_literal(&ext.host) {
        return blocker(
            "external host is an IPv6 literal",
            format!(
                "the external host {} is an IPv6 literal, which the flag cannot carry; give the Service a DNS name with the annotation {}",
                ext.host,
                view::EXTERNAL_HOST_ANNOTATION
            ),
        );
    }
    for (what, port) in [
        ("coordinator", mg.coordinator_port),
        ("management", mg.management_port),
    ] {
        // Unknown here when it comes from a flag file (MEMGRAPH_CONFIG, memgraph.conf): then we
        // cannot prove the Service carries it, so we must not point Raft traffic at it.
        let Some(port) = port else {
            return blocker(
                format!("{what} port not on the command line"),
                format!(
                    "the {what} port is not on the command line (or in the coordination variables), so it cannot be checked against Service {}; set --{what}-port explicitly",
                    service.name
                ),
            );
        };
        let exposed = service.ports.iter().any(|p| {
            service::port_reaches(p, port, pod) && address::external_port(service, p) == Some(port)
        });
        if !exposed {
            return blocker(
                format!("Service {} lacks {what} port {port}", service.name),
                format!(
                    "Service {} does not expose the {what} port {port} on the same number (add port {port} targeting {port} to it)",
                    service.name
                ),
            );
        }
    }
    let own = service
        .selector
        .contains_key("statefulset.kubernetes.io/pod-name")
        || pod
            .owning_statefulset()
            .is_some_and(|o| service::named_after(&service.name, o));
    if !own {
        return blocker(
            format!("Service {} is not this coordinator's own", service.name),
            format!(
                "Service {} is not this coordinator's own Service (its selector is not pod-specific and its name does not start with the StatefulSet's), so Raft traffic for this coordinator could reach another one",
                service.name
            ),
        );
    }
    None
}

#[cfg(test)]
mod tests;
