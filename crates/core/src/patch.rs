//! Targeted JSON Patch operations on the raw Pod: add an absent array or map whole, replace
//! an existing entry in place, never a diff of a typed round trip. Every setter is a no-op
//! when the pod already has the wanted value, which makes the webhook idempotent.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation, RemoveOperation, ReplaceOperation};
use serde_json::{json, Map, Value};

use super::pod::{ArgList, Container, Pod};

fn pointer<'t>(tokens: impl IntoIterator<Item = json_patch::jsonptr::Token<'t>>) -> PointerBuf {
    PointerBuf::from_tokens(tokens)
}

fn container_path(index: usize, field: &str) -> Vec<json_patch::jsonptr::Token<'static>> {
    vec![
        "spec".into(),
        "containers".into(),
        index.into(),
        field.to_string().into(),
    ]
}

fn add(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation { path, value })
}

fn replace(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Replace(ReplaceOperation { path, value })
}

/// An empty `metadata` when the pod has none, so that the label and annotation operations
/// after it have a parent (a pod from the API server always has one).
pub fn metadata(pod: &Pod<'_>) -> Vec<PatchOperation> {
    if pod.metadata.is_some() {
        return Vec::new();
    }
    vec![add(pointer(["metadata".into()]), json!({}))]
}

/// Pod annotations to set; emitted as one map when the pod has none.
pub fn annotations(pod: &Pod<'_>, wanted: &[(&str, &str)]) -> Vec<PatchOperation> {
    metadata_map("annotations", pod.annotations(), wanted)
}

/// Pod labels to set; emitted as one map when the pod has none.
pub fn labels(pod: &Pod<'_>, wanted: &[(&str, &str)]) -> Vec<PatchOperation> {
    metadata_map("labels", pod.labels(), wanted)
}

fn metadata_map<'a>(
    field: &'static str,
    existing: Option<&std::collections::BTreeMap<super::pod::Str<'a>, super::pod::Str<'a>>>,
    wanted: &[(&str, &str)],
) -> Vec<PatchOperation> {
    let changed: Vec<_> = wanted
        .iter()
        .filter(|(k, v)| existing.and_then(|a| a.get(*k)).map(|x| x.as_ref()) != Some(*v))
        .collect();
    if changed.is_empty() {
        return Vec::new();
    }
    if existing.is_none() {
        let map: Map<String, Value> = changed
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        return vec![add(
            pointer(["metadata".into(), field.into()]),
            Value::Object(map),
        )];
    }
    changed
        .into_iter()
        .map(|(k, v)| {
            add(
                pointer(["metadata".into(), field.into(), (*k).into()]),
                Value::String(v.to_string()),
            )
        })
        .collect()
}

/// Environment variables to set in one container. An existing entry is replaced in place
/// (also one with `valueFrom`), later duplicates of the name are removed, new ones appended.
pub fn env(
    index: usize,
    container: &Container<'_>,
    wanted: &[(&str, &str)],
) -> Vec<PatchOperation> {
    let env_path = || pointer(container_path(index, "env"));
    let Some(existing) = container.env.as_ref() else {
        if wanted.is_empty() {
            return Vec::new();
        }
        let entries = wanted
            .iter()
            .map(|(n, v)| json!({ "name": n, "value": v }))
            .collect();
        return vec![add(env_path(), Value::Array(entries))];
    };
    let mut replaces = Vec::new();
    let mut removals = Vec::new();
    let mut appends = Vec::new();
    for (name, value) in wanted {
        let mut positions = existing
            .iter()
            .enumerate()
            .filter(|(_, e)| e.name == *name)
            .map(|(i, _)| i);
        match positions.next() {
            None => appends.push(json!({ "name": name, "value": value })),
            Some(first) => {
                let entry = &existing[first];
                if entry.value.as_deref() != Some(*value) || entry.value_from.is_some() {
                    let mut path = env_path();
                    path.push_back(first);
                    replaces.push(replace(path, json!({ "name": name, "value": value })));
                }
                removals.extend(positions);
            }
        }
    }
    // Replacements use the original indices, so they go before any removal; removals run
    // from the highest index down so each index is still the original one.
    removals.sort_unstable_by(|a, b| b.cmp(a));
    let mut ops = replaces;
    ops.extend(removals.into_iter().map(|i| {
        let mut path = env_path();
        path.push_back(i);
        PatchOperation::Remove(RemoveOperation { path })
    }));
    ops.extend(appends.into_iter().map(|v| {
        let mut path = env_path();
        path.push_back("-");
        add(path, v)
    }));
    ops
}

/// Sets `--name=value` on the container: rewrites the value of an existing flag in place
/// (either form), else appends the flag to `args`.
pub fn flag(
    index: usize,
    container: &Container<'_>,
    name: &str,
    value: &str,
) -> Vec<PatchOperation> {
    let token_path = |list: ArgList, i: usize| {
        let mut path = pointer(container_path(index, list.field()));
        path.push_back(i);
        path
    };
    match container.flag(name) {
        Some(hit) if hit.value == value => Vec::new(),
        Some(hit) => {
            let tokens = match hit.list {
                ArgList::Args => container.args.as_deref(),
                ArgList::Command => container.command.as_deref(),
            }
            .unwrap_or(&[]);
            if hit.value_in_next_token && hit.index + 1 < tokens.len() {
                vec![replace(
                    token_path(hit.list, hit.index + 1),
                    Value::String(value.to_string()),
                )]
            } else {
                // Keep the spelling the user wrote (`--coordinator_hostname`, `-flag`).
                let original = tokens[hit.index].as_ref();
                let spelled = original.split('=').next().unwrap_or(original);
                vec![replace(
                    token_path(hit.list, hit.index),
                    Value::String(format!("{spelled}={value}")),
                )]
            }
        }
        None => {
            let token = Value::String(format!("--{name}={value}"));
            match container.args {
                None => vec![add(
                    pointer(container_path(index, "args")),
                    Value::Array(vec![token]),
                )],
                Some(_) => {
                    let mut path = pointer(container_path(index, "args"));
                    path.push_back("-");
                    vec![add(path, token)]
                }
            }
        }
    }
}
