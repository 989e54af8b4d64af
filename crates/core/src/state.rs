//! State files: `kubectl get svc,nodes -A -o yaml` output (plus `gateways,tcproutes` and
//! the tcp-services ConfigMap), JSON or multi-document YAML, read into the cluster view the
//! decision uses. The one document splitter of the project: the
//! server's `--cluster-state`, `review` and `routing` all read files through it.

use std::borrow::Cow;

use k8s_openapi::api::core::v1::{Node, Service};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::proxy::{ConfigMapView, GatewayView, TcpRouteView};
use crate::view::{ClusterState, NodeView, ServiceView};
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read {path}: {cause}")]
    Read { path: String, cause: std::io::Error },
    #[error("{path}: document {index} is not valid JSON or YAML: {message}")]
    Syntax {
        path: String,
        index: usize,
        message: String,
    },
    #[error("{path}: document {index} has no kind; expected Services, Nodes or a v1 List of them (kubectl get svc,nodes -A -o yaml)")]
    NoKind { path: String, index: usize },
    #[error("{path}: {kind} {name:?} is not a readable {kind}: {message}")]
    BadObject {
        path: String,
        kind: String,
        name: String,
        message: String,
    },
}

/// Splits JSON (one value or a stream of values) or multi-document YAML into values.
pub fn parse_documents(text: &str, path: &str) -> Result<Vec<serde_json::Value>, StateError> {
    let syntax = |index: usize, message: String| StateError::Syntax {
        path: path.to_string(),
        index,
        message,
    };
    let trimmed = text.trim_start();
    let mut docs = Vec::new();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        for (index, value) in serde_json::Deserializer::from_str(trimmed)
            .into_iter::<serde_json::Value>()
            .enumerate()
        {
            docs.push(value.map_err(|e| syntax(index + 1, e.to_string()))?);
        }
    } else {
        // serde-saphyr skips empty and null documents, as kubectl does.
        let values: Vec<serde_json::Value> =
            // No source snippet: the error is one line naming the file (the caller's path).
            serde_saphyr::from_multiple_with_options(text, serde_saphyr::options! { with_snippet: false })
                .map_err(|e| syntax(1, e.to_string().replace('\n', " ")))?;
        docs.extend(values.into_iter().filter(|v| !v.is_null()));
    }
    Ok(docs)
}

/// Builds a cluster view from `kubectl get svc,nodes -A -o yaml` output or documents of
/// Services and Nodes, and the proxies in front of them (Gateways, TCPRoutes, ConfigMaps).
/// Other kinds are skipped.
pub fn state_from_text(text: &str, path: &str) -> Result<ClusterState, StateError> {
    let mut state = ClusterState::default();
    visit_objects(text, path, |object| {
        match object.kind {
            "Service" => {
                let svc: Service = object.decode()?;
                let view = ServiceView::from_service(&svc)
                    .ok_or_else(|| object.bad("it has no metadata.name"))?;
                state.upsert_service(view);
            }
            "Node" => {
                let node: Node = object.decode()?;
                let view = NodeView::from_node(&node)
                    .ok_or_else(|| object.bad("it has no metadata.name"))?;
                state.upsert_node(view);
            }
            "Gateway" | "TCPRoute" | "ConfigMap" => {
                let value: serde_json::Value = object.decode()?;
                let bad = |e: crate::proxy::ReadError| object.bad(&e.to_string());
                match object.kind {
                    "Gateway" => state.upsert_gateway(GatewayView::from_value(value).map_err(bad)?),
                    "TCPRoute" => {
                        state.upsert_tcp_route(TcpRouteView::from_value(value).map_err(bad)?)
                    }
                    _ => state.upsert_config_map(ConfigMapView::from_value(value).map_err(bad)?),
                }
            }
            _ => {}
        }
        Ok(())
    })?;
    Ok(state)
}

/// One object of a state file, still raw: its kind and name are read, the rest is decoded
/// only by the visitor that wants it.
pub struct RawObject<'t> {
    pub kind: &'t str,
    pub name: &'t str,
    raw: &'t str,
    path: &'t str,
}

impl RawObject<'_> {
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, StateError> {
        serde_json::from_str(self.raw).map_err(|e| self.bad(&e.to_string()))
    }

    pub fn bad(&self, message: &str) -> StateError {
        StateError::BadObject {
            path: self.path.to_string(),
            kind: self.kind.to_string(),
            name: self.name.to_string(),
            message: message.to_string(),
        }
    }
}

/// Calls `visit` for every object in JSON (one value or a stream) or multi-document YAML,
/// with v1 Lists and arrays flattened. JSON is read without building a tree of the whole
/// file: each object is handed over as its raw slice, so 10,000 Services load in bounded
/// memory.
pub fn visit_objects(
    text: &str,
    path: &str,
    mut visit: impl FnMut(&RawObject<'_>) -> Result<(), StateError>,
) -> Result<(), StateError> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let stream = serde_json::Deserializer::from_str(trimmed).into_iter::<&RawValue>();
        for (index, doc) in stream.enumerate() {
            let doc = doc.map_err(|e| StateError::Syntax {
                path: path.to_string(),
                index: index + 1,
                message: e.to_string(),
            })?;
            visit_document(doc.get(), index + 1, path, &mut visit)?;
        }
    } else {
        for (index, doc) in parse_documents(text, path)?.into_iter().enumerate() {
            visit_document(&doc.to_string(), index + 1, path, &mut visit)?;
        }
    }
    Ok(())
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    items: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default)]
    metadata: Option<HeadMeta<'a>>,
}

#[derive(Deserialize)]
struct HeadMeta<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
}

fn visit_document(
    raw: &str,
    index: usize,
    path: &str,
    visit: &mut impl FnMut(&RawObject<'_>) -> Result<(), StateError>,
) -> Result<(), StateError> {
    let syntax = |e: serde_json::Error| StateError::Syntax {
        path: path.to_string(),
        index,
        message: e.to_string(),
    };
    if raw.trim_start().starts_with('[') {
        let items: Vec<&RawValue> = serde_json::from_str(raw).map_err(syntax)?;
        return items
            .iter()
            .try_for_each(|item| visit_object(item.get(), path, visit));
    }
    let head: Head<'_> = serde_json::from_str(raw).map_err(syntax)?;
    match (head.items, head.kind) {
        (Some(items), _) => items
            .iter()
            .try_for_each(|item| visit_object(item.get(), path, visit)),
        (None, None) => Err(StateError::NoKind {
            path: path.to_string(),
            index,
        }),
        (None, Some(_)) => visit_object(raw, path, visit),
    }
}

fn visit_object(
    raw: &str,
    path: &str,
    visit: &mut impl FnMut(&RawObject<'_>) -> Result<(), StateError>,
) -> Result<(), StateError> {
    let head: Head<'_> = serde_json::from_str(raw).map_err(|e| StateError::BadObject {
        path: path.to_string(),
        kind: "object".into(),
        name: String::new(),
        message: e.to_string(),
    })?;
    visit(&RawObject {
        kind: head.kind.as_deref().unwrap_or_default(),
        name: head
            .metadata
            .as_ref()
            .and_then(|m| m.name.as_deref())
            .unwrap_or_default(),
        raw,
        path,
    })
}
