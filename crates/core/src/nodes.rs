//! Which Nodes may carry a NodePort address, and which one to use (issue "NodePort addresses
//! that stay valid"): a Node is usable while it is Ready, schedulable, matches
//! `--node-selector` and has an address of an allowed type. A Node in use stays in use while
//! it is usable; only then does the address move. With `externalTrafficPolicy: Local` only
//! the pod's own Node answers, so that one is used once the pod is scheduled.

use std::collections::BTreeMap;

use crate::view::NodeView;

/// A label selector in the `kubectl -l` form: `k=v`, `k==v`, `k!=v`, `k` (exists), `!k`
/// (absent), `k in (a,b)`, `k notin (a,b)`, joined by commas.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeSelector {
    requirements: Vec<Requirement>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    Absent(String),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("--node-selector {text:?}: {why} (use the kubectl -l form, e.g. node-role.example.com/edge=true,zone in (a,b))")]
pub struct SelectorError {
    text: String,
    why: &'static str,
}

fn valid_key(key: &str) -> bool {
    let (prefix, name) = key.rsplit_once('/').unwrap_or(("", key));
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    let prefix_ok = prefix.is_empty() || crate::hostport::validate_host(prefix).is_ok();
    name_ok && prefix_ok
}

fn valid_value(value: &str) -> bool {
    value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl std::str::FromStr for NodeSelector {
    type Err = SelectorError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |why| SelectorError {
            text: text.to_string(),
            why,
        };
        // Split on commas outside parentheses.
        let mut parts = Vec::new();
        let (mut depth, mut start) = (0i32, 0usize);
        for (i, c) in text.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&text[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
            if depth < 0 {
                return Err(err("a ')' without '('"));
            }
        }
        if depth != 0 {
            return Err(err("an unclosed '('"));
        }
        parts.push(&text[start..]);
        let mut requirements = Vec::new();
        for part in parts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
            let set = |rest: &str| -> Result<Vec<String>, SelectorError> {
                let inner = rest
                    .trim()
                    .strip_prefix('(')
                    .and_then(|r| r.strip_suffix(')'))
                    .ok_or_else(|| err("a set must be written (a,b)"))?;
                let values: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
                if values.iter().any(|v| !valid_value(v)) {
                    return Err(err("a value is not a label value"));
                }
                Ok(values)
            };
            let req = if let Some((key, rest)) = part.split_once(" notin ") {
                Requirement::NotIn(key.trim().into(), set(rest)?)
            } else if let Some((key, rest)) = part.split_once(" in ") {
                Requirement::In(key.trim().into(), set(rest)?)
            } else if let Some((key, value)) = part.split_once("!=") {
                Requirement::NotIn(key.trim().into(), vec![value.trim().into()])
            } else if let Some((key, value)) =
                part.split_once("==").or_else(|| part.split_once('='))
            {
                Requirement::In(key.trim().into(), vec![value.trim().into()])
            } else if let Some(key) = part.strip_prefix('!') {
                Requirement::Absent(key.trim().into())
            } else {
                Requirement::Exists(part.into())
            };
            let (Requirement::In(key, values) | Requirement::NotIn(key, values)) = &req else {
                let (Requirement::Exists(key) | Requirement::Absent(key)) = &req else {
                    unreachable!("all four kinds are matched")
                };
                if !valid_key(key) {
                    return Err(err("a key is not a label key"));
                }
                requirements.push(req);
                continue;
            };
            if !valid_key(key) || values.iter().any(|v| !valid_value(v)) {
                return Err(err("a key or value is not a label key or value"));
            }
            requirements.push(req);
        }
        Ok(Self { requirements })
    }
}

impl NodeSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::Absent(k) => !labels.contains_key(k),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

/// How a NodePort Service's host is chosen.
#[derive(Clone, Copy, Debug)]
pub struct NodeRules<'a> {
    /// Address types to try, in order (`--node-address-types`).
    pub address_types: &'a [String],
    /// Which Nodes may be used (`--node-selector`).
    pub selector: &'a NodeSelector,
    /// The host in use now (a registration), kept while its Node stays usable.
    pub keep_host: Option<&'a str>,
    /// The Node the pod runs on, once scheduled (for `externalTrafficPolicy: Local`).
    pub pod_node: Option<&'a str>,
}

impl<'a> NodeRules<'a> {
    pub fn new(address_types: &'a [String], selector: &'a NodeSelector) -> Self {
        Self {
            address_types,
            selector,
            keep_host: None,
            pod_node: None,
        }
    }

    /// Ready, schedulable and selected.
    pub fn usable(&self, node: &NodeView) -> bool {
        node.ready && !node.unschedulable && self.selector.matches(&node.labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors_in_the_kubectl_form() {
        let s: NodeSelector = "edge=true,zone in (a, b),!cordoned,example.com/tier,env!=dev"
            .parse()
            .unwrap();
        let ok = labels(&[("edge", "true"), ("zone", "b"), ("example.com/tier", "x")]);
        assert!(s.matches(&ok));
        let mut bad = ok.clone();
        bad.insert("cordoned".into(), "".into());
        assert!(!s.matches(&bad));
        let mut bad = ok.clone();
        bad.insert("env".into(), "dev".into());
        assert!(!s.matches(&bad));
        let mut bad = ok;
        bad.insert("zone".into(), "c".into());
        assert!(!s.matches(&bad));
        assert!(NodeSelector::default().matches(&BTreeMap::new()));
        let s: NodeSelector = "zone notin (a)".parse().unwrap();
        assert!(s.matches(&labels(&[])));
        assert!(!s.matches(&labels(&[("zone", "a")])));
    }

    #[test]
    fn bad_selectors_are_errors_naming_the_text() {
        for bad in [
            "zone in (a",
            "zone in a,b)",
            "a b=c",
            "k=v w",
            "zone in (a b)",
        ] {
            let err = bad.parse::<NodeSelector>().unwrap_err().to_string();
            assert!(err.contains("--node-selector"), "{bad}: {err}");
        }
    }
}
