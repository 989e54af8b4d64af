//! What the pod is: the few Pod fields the decision reads (decoded borrowed, the rest of the
//! object is skipped), and the Memgraph facts derived from them: which container, which role,
//! which ports, which Memgraph version. Facts about Memgraph are from docs/design.md.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

pub const OPT_OUT_ANNOTATION: &str = "memgraph-address-injector/inject";
pub const SERVICE_ANNOTATION: &str = "memgraph-address-injector/service";
pub const VERSION_ANNOTATION: &str = "memgraph-address-injector/memgraph-version";
/// Stamped (value `true`) on every Memgraph HA pod the webhook admits, so that the routing
/// reconciler can watch just those pods instead of every pod of a namespace.
pub const MANAGED_LABEL: &str = "memgraph-address-injector/managed";

pub type Str<'a> = Cow<'a, str>;

#[derive(Debug, Default, Deserialize)]
pub struct Pod<'a> {
    #[serde(borrow, default, deserialize_with = "object")]
    pub metadata: Option<ObjectMeta<'a>>,
    #[serde(borrow, default, deserialize_with = "object")]
    pub spec: Option<PodSpec<'a>>,
}

/// serde's derived structs also accept a JSON array (fields by position); the patch paths
/// we emit need real objects where we write, so those places must be JSON objects. `MapOnly`
/// asks the JSON deserializer for a map where a struct is wanted: an array is then an error,
/// in the same single pass over the bytes.
struct MapOnly<D>(D);

impl<'de, D: serde::Deserializer<'de>> serde::Deserializer<'de> for MapOnly<D> {
    type Error = D::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_any(visitor)
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_map(visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(MapOnly(deserializer)).map(Object)
    }
}

fn object<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Object<T>>::deserialize(deserializer)?.map(|o| o.0))
}

fn objects<'de, D, T>(deserializer: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<Object<T>>>::deserialize(deserializer)?
        .map(|items| items.into_iter().map(|o| o.0).collect()))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta<'a> {
    #[serde(borrow, default)]
    pub name: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub generate_name: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub namespace: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub labels: Option<BTreeMap<Str<'a>, Str<'a>>>,
    #[serde(borrow, default)]
    pub annotations: Option<BTreeMap<Str<'a>, Str<'a>>>,
    #[serde(borrow, default)]
    pub owner_references: Option<Vec<OwnerReference<'a>>>,
}

#[derive(Debug, Deserialize)]
pub struct OwnerReference<'a> {
    #[serde(borrow, default, rename = "apiVersion")]
    pub api_version: Str<'a>,
    #[serde(borrow)]
    pub kind: Str<'a>,
    #[serde(borrow)]
    pub name: Str<'a>,
    #[serde(borrow, default)]
    pub uid: Str<'a>,
    #[serde(default)]
    pub controller: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub struct PodSpec<'a> {
    #[serde(borrow, default, deserialize_with = "objects")]
    pub containers: Option<Vec<Container<'a>>>,
    #[serde(borrow, default, rename = "nodeName")]
    pub node_name: Option<Str<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Container<'a> {
    #[serde(borrow, default)]
    pub name: Str<'a>,
    #[serde(borrow, default)]
    pub image: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub command: Option<Vec<Str<'a>>>,
    #[serde(borrow, default)]
    pub args: Option<Vec<Str<'a>>>,
    #[serde(borrow, default)]
    pub env: Option<Vec<EnvVar<'a>>>,
    /// Only whether it is there: variables from a ConfigMap or Secret cannot be read here.
    #[serde(default, rename = "envFrom")]
    pub env_from: Option<serde::de::IgnoredAny>,
    #[serde(borrow, default)]
    pub ports: Option<Vec<ContainerPort<'a>>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar<'a> {
    #[serde(borrow)]
    pub name: Str<'a>,
    #[serde(borrow, default)]
    pub value: Option<Str<'a>>,
    #[serde(default)]
    pub value_from: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort<'a> {
    #[serde(borrow, default)]
    pub name: Option<Str<'a>>,
    pub container_port: i32,
}

impl<'a> Pod<'a> {
    pub fn labels(&self) -> Option<&BTreeMap<Str<'a>, Str<'a>>> {
        self.metadata.as_ref().and_then(|m| m.labels.as_ref())
    }

    pub fn annotations(&self) -> Option<&BTreeMap<Str<'a>, Str<'a>>> {
        self.metadata.as_ref().and_then(|m| m.annotations.as_ref())
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations()
            .and_then(|a| a.get(key))
            .map(|v| v.as_ref())
    }

    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels().and_then(|l| l.get(key)).map(|v| v.as_ref())
    }

    pub fn containers(&self) -> &[Container<'a>] {
        self.spec
            .as_ref()
            .and_then(|s| s.containers.as_deref())
            .unwrap_or(&[])
    }

    /// The Node the pod is bound to, if any.
    pub fn node_name(&self) -> Option<&str> {
        self.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .filter(|n| !n.is_empty())
    }

    /// A name for messages: the pod's name, or its generateName prefix.
    pub fn display_name(&self) -> String {
        let meta = self.metadata.as_ref();
        match (
            meta.and_then(|m| m.name.as_deref()),
            meta.and_then(|m| m.generate_name.as_deref()),
        ) {
            (Some(n), _) if !n.is_empty() => n.to_string(),
            (_, Some(g)) => format!("{g}<generated>"),
            _ => "<unnamed>".to_string(),
        }
    }

    /// The owner marked `controller: true` (the StatefulSet of a StatefulSet pod), else the
    /// first owner.
    pub fn controller(&self) -> Option<&OwnerReference<'a>> {
        let owners = self.metadata.as_ref()?.owner_references.as_ref()?;
        owners
            .iter()
            .find(|o| o.controller == Some(true))
            .or_else(|| owners.first())
    }

    pub fn owning_statefulset(&self) -> Option<&str> {
        self.metadata
            .as_ref()?
            .owner_references
            .as_ref()?
            .iter()
            .find(|o| o.kind == "StatefulSet")
            .map(|o| o.name.as_ref())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Coordinator,
    Data,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::Data => "data",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }

    /// `2.22`, `2.22.0`, `v3.1.0`; anything after the numbers (`-relwithdebinfo`) is ignored.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim().trim_start_matches('v');
        let numeric_end = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let mut parts = text[..numeric_end].split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = match parts.next() {
            Some("") | None => 0,
            Some(p) => p.parse().ok()?,
        };
        Some(Self::new(major, minor, patch))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a version like 3.0.0")]
pub struct VersionError(pub String);

impl std::str::FromStr for Version {
    type Err = VersionError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text).ok_or_else(|| VersionError(text.to_string()))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionSource {
    Annotation,
    ImageTag,
    Default,
}

/// Where a flag was found: `command` or `args`, the token index, and whether the value is
/// in the same token (`--flag=value`) or the next one (`--flag value`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlagHit<'p> {
    pub list: ArgList,
    pub index: usize,
    pub value: &'p str,
    pub value_in_next_token: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgList {
    Command,
    Args,
}

impl ArgList {
    pub fn field(self) -> &'static str {
        match self {
            ArgList::Command => "command",
            ArgList::Args => "args",
        }
    }
}

/// The environment variables that switch Memgraph's coordination setup from flags to
/// environment (docs/design.md, "Traps that break a Memgraph pod", trap 2).
pub const COORDINATION_ENV_VARS: &[&str] = &[
    "MEMGRAPH_MANAGEMENT_PORT",
    "MEMGRAPH_COORDINATOR_PORT",
    "MEMGRAPH_COORDINATOR_ID",
    "MEMGRAPH_NURAFT_LOG_FILE",
    "MEMGRAPH_COORDINATOR_HOSTNAME",
    "MEMGRAPH_HA_DURABILITY",
];

/// Every variable name Memgraph reads (docs/design.md, "Traps that break a Memgraph pod", 2 and 3).
pub const MEMGRAPH_READS_ENV: &[&str] = &[
    "MEMGRAPH_MANAGEMENT_PORT",
    "MEMGRAPH_COORDINATOR_PORT",
    "MEMGRAPH_COORDINATOR_ID",
    "MEMGRAPH_NURAFT_LOG_FILE",
    "MEMGRAPH_COORDINATOR_HOSTNAME",
    "MEMGRAPH_HA_DURABILITY",
    "MEMGRAPH_USER",
    "MEMGRAPH_PASSWORD",
    "MEMGRAPH_PASSFILE",
    "MEMGRAPH_BOLT_PORT",
    "MEMGRAPH_CONFIG",
    "MEMGRAPH_HA_CLUSTER_INIT_QUERIES",
    "MEMGRAPH_ENTERPRISE_LICENSE",
    "MEMGRAPH_ORGANIZATION_NAME",
    "MEMGRAPH_EXPERIMENTAL_ENABLED",
    "MEMGRAPH_TELEMETRY_ID",
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PodError {
    #[error("container {container:?} sets {source_name} to {value:?}, which is not a port number (1-65535)")]
    BadPort {
        container: String,
        source_name: String,
        value: String,
    },
}

/// How to recognise the Memgraph container.
#[derive(Clone, Debug)]
pub struct Recognition {
    pub container_names: Vec<String>,
    pub default_version: Version,
}

/// The Memgraph facts of a pod.
#[derive(Debug)]
pub struct MemgraphPod<'p, 'a> {
    pub container_index: usize,
    pub container: &'p Container<'a>,
    pub role: Role,
    pub bolt_port: i32,
    pub coordinator_port: Option<i32>,
    pub management_port: Option<i32>,
    pub version: Version,
    pub version_source: VersionSource,
    /// The pod sets at least one coordination environment variable, so Memgraph reads its
    /// coordination setup from the environment only.
    pub env_configured: bool,
    /// What could not be read but did not stop the decision.
    pub warnings: Vec<crate::Warning>,
}

const MEMGRAPH_REPOSITORIES: &[&str] = &["memgraph/memgraph", "memgraph/memgraph-mage"];

/// Splits an image reference into (repository path without registry, tag).
pub fn parse_image(image: &str) -> (&str, Option<&str>) {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last_slash = without_digest.rfind('/').map(|i| i + 1).unwrap_or(0);
    let (name, tag) = match without_digest[last_slash..].find(':') {
        Some(colon) => (
            &without_digest[..last_slash + colon],
            Some(&without_digest[last_slash + colon + 1..]),
        ),
        None => (without_digest, None),
    };
    // A first component with a dot, a colon or `localhost` is a registry host.
    let repository = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            rest
        }
        _ => name,
    };
    (repository, tag.filter(|t| !t.is_empty()))
}

pub fn is_memgraph_image(image: &str) -> bool {
    let (repository, _) = parse_image(image);
    let repository = repository.strip_prefix("library/").unwrap_or(repository);
    MEMGRAPH_REPOSITORIES.iter().any(|r| {
        repository == *r
            || repository
                .strip_suffix(r)
                .is_some_and(|prefix| prefix.ends_with('/'))
    })
}

/// The Memgraph version in an image tag: `2.22.0`, `2.22.0-relwithdebinfo`, or for MAGE
/// `3.1.0-memgraph-3.1.0` (the part after `-memgraph-`).
pub fn version_from_tag(tag: &str) -> Option<Version> {
    match tag.rsplit_once("-memgraph-") {
        Some((_, memgraph)) => Version::parse(memgraph),
        None if tag.contains("memgraph") => None,
        None => Version::parse(tag),
    }
}

/// The normalised flag name: gflags accepts `-flag` and `--flag`, and Memgraph's flags are
/// spelled with dashes or underscores interchangeably.
fn flag_name(token: &str) -> Option<(String, Option<&str>)> {
    let body = token
        .strip_prefix("--")
        .or_else(|| token.strip_prefix('-'))?;
    let (name, value) = match body.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (body, None),
    };
    Some((name.replace('_', "-"), value))
}

impl<'a> Container<'a> {
    /// Finds `--name=value` or `--name value` in `args`, then in `command`. The last
    /// occurrence wins, as with gflags.
    pub fn flag(&self, name: &str) -> Option<FlagHit<'_>> {
        for (list, tokens) in [
            (ArgList::Args, self.args.as_deref()),
            (ArgList::Command, self.command.as_deref()),
        ] {
            let Some(tokens) = tokens else { continue };
            let mut found = None;
            for (index, token) in tokens.iter().enumerate() {
                let Some((flag, value)) = flag_name(token) else {
                    continue;
                };
                if flag != name {
                    continue;
                }
                found = Some(match value {
                    Some(value) => FlagHit {
                        list,
                        index,
                        value,
                        value_in_next_token: false,
                    },
                    None => FlagHit {
                        list,
                        index,
                        value: tokens.get(index + 1).map(|t| t.as_ref()).unwrap_or(""),
                        value_in_next_token: true,
                    },
                });
            }
            if found.is_some() {
                return found;
            }
        }
        None
    }

    pub fn env_value(&self, name: &str) -> Option<&str> {
        self.env
            .as_ref()?
            .iter()
            .find(|e| e.name == name)
            .map(|e| e.value.as_deref().unwrap_or(""))
    }

    pub fn has_env(&self, name: &str) -> bool {
        self.env
            .as_ref()
            .is_some_and(|env| env.iter().any(|e| e.name == name))
    }

    /// A port from an environment variable (which wins, as in Memgraph) or a flag.
    fn port_setting(&self, flag: Option<&str>, env: Option<&str>) -> Result<Option<i32>, PodError> {
        let from_env = env.and_then(|e| self.env_value(e).map(|v| (e.to_string(), v)));
        let setting = from_env
            .or_else(|| flag.and_then(|f| self.flag(f).map(|hit| (format!("--{f}"), hit.value))));
        let Some((source_name, value)) = setting else {
            return Ok(None);
        };
        match value.trim().parse::<i32>() {
            Ok(port) if (1..=65535).contains(&port) => Ok(Some(port)),
            _ => Err(PodError::BadPort {
                container: self.name.to_string(),
                source_name,
                value: value.to_string(),
            }),
        }
    }
}

/// Finds the Memgraph container: the first with a Memgraph image, else the first with a
/// configured name.
pub fn find_memgraph_container<'p, 'a>(
    pod: &'p Pod<'a>,
    names: &[String],
) -> Option<(usize, &'p Container<'a>)> {
    let containers = pod.containers();
    containers
        .iter()
        .enumerate()
        .find(|(_, c)| c.image.as_deref().is_some_and(is_memgraph_image))
        .or_else(|| {
            containers
                .iter()
                .enumerate()
                .find(|(_, c)| names.iter().any(|n| n == c.name.as_ref()))
        })
}

/// Derives the Memgraph facts; `Ok(None)` when the pod is not a Memgraph pod.
pub fn memgraph_pod<'p, 'a>(
    pod: &'p Pod<'a>,
    recognition: &Recognition,
) -> Result<Option<MemgraphPod<'p, 'a>>, PodError> {
    let Some((container_index, container)) =
        find_memgraph_container(pod, &recognition.container_names)
    else {
        return Ok(None);
    };
    let env_configured = COORDINATION_ENV_VARS.iter().any(|v| container.has_env(v));
    let label_says_coordinator = ["role", "instance-type"]
        .iter()
        .any(|l| pod.label(l) == Some("coordinator"));
    let role = if container.flag("coordinator-id").is_some()
        || container.has_env("MEMGRAPH_COORDINATOR_ID")
        || label_says_coordinator
    {
        Role::Coordinator
    } else {
        Role::Data
    };
    let mut warnings = Vec::new();
    // MEMGRAPH_BOLT_PORT wins over --bolt-port in Memgraph; from a Secret or ConfigMap its
    // value is not in the pod spec, so the flag (or 7687) is assumed and the user told.
    let bolt_env_hidden = container
        .env
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .any(|e| e.name == "MEMGRAPH_BOLT_PORT" && e.value.is_none() && e.value_from.is_some());
    let bolt_env = (!bolt_env_hidden).then_some("MEMGRAPH_BOLT_PORT");
    let bolt_port = container
        .port_setting(Some("bolt-port"), bolt_env)?
        .unwrap_or(7687);
    if bolt_env_hidden {
        warnings.push(crate::Warning::new(
            format!("MEMGRAPH_BOLT_PORT comes from valueFrom and cannot be read; assumed {bolt_port}"),
            format!(
                "container {} sets MEMGRAPH_BOLT_PORT with valueFrom, whose value the webhook cannot read at admission; it assumed the Bolt port {bolt_port} (--bolt-port or 7687). Set MEMGRAPH_BOLT_PORT with value: or use --bolt-port",
                container.name
            ),
        ));
    } else if container.env_from.is_some() && !container.has_env("MEMGRAPH_BOLT_PORT") {
        warnings.push(crate::Warning::new(
            format!("envFrom may set MEMGRAPH_BOLT_PORT, which cannot be read; assumed {bolt_port}"),
            format!(
                "container {} takes variables with envFrom; if they set MEMGRAPH_BOLT_PORT, the webhook cannot read it at admission and assumed the Bolt port {bolt_port} (--bolt-port or 7687). Set MEMGRAPH_BOLT_PORT with value: or use --bolt-port",
                container.name
            ),
        ));
    }
    // With any coordination variable set, Memgraph reads those variables only (trap 2).
    let (coordinator_port, management_port) = if env_configured {
        (
            container.port_setting(None, Some("MEMGRAPH_COORDINATOR_PORT"))?,
            container.port_setting(None, Some("MEMGRAPH_MANAGEMENT_PORT"))?,
        )
    } else {
        (
            container.port_setting(Some("coordinator-port"), None)?,
            container.port_setting(Some("management-port"), None)?,
        )
    };
    let (version, version_source) =
        match pod.annotation(VERSION_ANNOTATION).and_then(Version::parse) {
            Some(v) => (v, VersionSource::Annotation),
            None => match container
                .image
                .as_deref()
                .and_then(|i| parse_image(i).1)
                .and_then(version_from_tag)
            {
                Some(v) => (v, VersionSource::ImageTag),
                None => (recognition.default_version, VersionSource::Default),
            },
        };
    Ok(Some(MemgraphPod {
        container_index,
        container,
        role,
        bolt_port,
        coordinator_port,
        management_port,
        version,
        version_source,
        env_configured,
        warnings,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: &str) -> Pod<'_> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn image_references() {
        assert_eq!(
            parse_image("memgraph/memgraph:2.22.0"),
            ("memgraph/memgraph", Some("2.22.0"))
        );
        assert_eq!(
            parse_image(
                "registry.example.com:5000/memgraph/memgraph-mage:3.1.0-memgraph-3.1.0@sha256:abc"
            ),
            ("memgraph/memgraph-mage", Some("3.1.0-memgraph-3.1.0"))
        );
        assert_eq!(
            parse_image("memgraph/memgraph@sha256:abc"),
            ("memgraph/memgraph", None)
        );
        assert!(is_memgraph_image("docker.io/memgraph/memgraph:3.2"));
        assert!(is_memgraph_image("docker.io/library/memgraph/memgraph"));
        assert!(is_memgraph_image(
            "mirror.local/cache/memgraph/memgraph-mage"
        ));
        assert!(!is_memgraph_image("memgraph/lab:latest"));
        assert!(!is_memgraph_image("notmemgraph/memgraph:1"));
        assert!(!is_memgraph_image("busybox"));
    }

    #[test]
    fn versions_from_tags() {
        assert_eq!(version_from_tag("2.22.0"), Some(Version::new(2, 22, 0)));
        assert_eq!(
            version_from_tag("2.22.0-relwithdebinfo"),
            Some(Version::new(2, 22, 0))
        );
        assert_eq!(
            version_from_tag("3.1.0-memgraph-3.1.0"),
            Some(Version::new(3, 1, 0))
        );
        assert_eq!(
            version_from_tag("1.22-memgraph-2.22"),
            Some(Version::new(2, 22, 0))
        );
        assert_eq!(version_from_tag("latest"), None);
        assert_eq!(version_from_tag("3"), None);
    }

    #[test]
    fn flags_in_both_forms_and_env_override() {
        let p = pod(
            r#"{"spec":{"containers":[{"name":"memgraph","image":"memgraph/memgraph:3.2.0",
            "args":["--coordinator-id","1","--bolt_port=7700","--management-port=10000"],
            "env":[{"name":"MEMGRAPH_BOLT_PORT","value":"7800"}]}]}}"#,
        );
        let rec = Recognition {
            container_names: vec!["memgraph".into()],
            default_version: Version::new(3, 0, 0),
        };
        let mg = memgraph_pod(&p, &rec).unwrap().unwrap();
        assert_eq!(mg.role, Role::Coordinator);
        assert_eq!(mg.bolt_port, 7800);
        assert_eq!(mg.management_port, Some(10000));
        assert_eq!(mg.coordinator_port, None);
        let hit = mg.container.flag("coordinator-id").unwrap();
        assert_eq!(
            (hit.index, hit.value, hit.value_in_next_token),
            (0, "1", true)
        );
    }

    #[test]
    fn bad_port_is_an_error_naming_it() {
        let p = pod(r#"{"spec":{"containers":[{"name":"memgraph","args":["--bolt-port=abc"]}]}}"#);
        let rec = Recognition {
            container_names: vec!["memgraph".into()],
            default_version: Version::new(3, 0, 0),
        };
        let err = memgraph_pod(&p, &rec).unwrap_err();
        assert!(err.to_string().contains("--bolt-port"), "{err}");
        assert!(err.to_string().contains("abc"), "{err}");
    }
}
