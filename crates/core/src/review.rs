//! The AdmissionReview v1 envelope: decoded borrowed (the Pod stays raw until the decision
//! reads the few fields it needs) and encoded with the patch as the API's base64 string.

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::pod::Pod;

pub const API_VERSION: &str = "admission.k8s.io/v1";

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("the body is not UTF-8, so not a JSON AdmissionReview: {0}")]
    NotUtf8(#[from] std::str::Utf8Error),
    #[error("the body is not a JSON AdmissionReview: {0}")]
    NotJson(#[from] serde_json::Error),
    #[error("the AdmissionReview has apiVersion {0:?}; this webhook speaks admission.k8s.io/v1 only (set admissionReviewVersions: [v1])")]
    WrongApiVersion(String),
    #[error("the AdmissionReview has kind {0:?}, expected AdmissionReview")]
    WrongKind(String),
    #[error("the AdmissionReview has no request")]
    NoRequest,
}

/// The envelope, generic over how `request.object` is decoded: as a Pod in the same pass
/// (the common case), or as a raw slice when that fails (to tell a bad Pod from bad JSON).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", bound(deserialize = "O: Deserialize<'de>"))]
struct Envelope<'a, O> {
    #[serde(borrow, default)]
    api_version: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default = "none")]
    request: Option<Request<'a, O>>,
}

fn none<T>() -> Option<T> {
    None
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", bound(deserialize = "O: Deserialize<'de>"))]
struct Request<'a, O> {
    #[serde(borrow, default)]
    uid: Cow<'a, str>,
    #[serde(borrow, default)]
    kind: GroupVersionKind<'a>,
    #[serde(borrow, default)]
    sub_resource: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    operation: Cow<'a, str>,
    #[serde(borrow, default)]
    namespace: Option<Cow<'a, str>>,
    #[serde(default)]
    dry_run: Option<bool>,
    #[serde(default = "none")]
    object: Option<O>,
}

/// The request's object: decoded, absent, or present but not a readable Pod.
#[derive(Debug)]
pub enum PodObject<'a> {
    Missing,
    Pod(Box<Pod<'a>>),
    Unreadable(String),
}

#[derive(Debug, Default, Deserialize)]
pub struct GroupVersionKind<'a> {
    #[serde(borrow, default)]
    pub group: Cow<'a, str>,
    #[serde(borrow, default)]
    pub version: Cow<'a, str>,
    #[serde(borrow, default)]
    pub kind: Cow<'a, str>,
}

#[derive(Debug)]
pub struct AdmissionRequest<'a> {
    pub uid: Cow<'a, str>,
    pub kind: GroupVersionKind<'a>,
    pub sub_resource: Option<Cow<'a, str>>,
    pub operation: Cow<'a, str>,
    pub namespace: Option<Cow<'a, str>>,
    pub dry_run: Option<bool>,
    pub object: PodObject<'a>,
}

impl<'a, O> Request<'a, O> {
    fn with_object(self, object: PodObject<'a>) -> AdmissionRequest<'a> {
        AdmissionRequest {
            uid: self.uid,
            kind: self.kind,
            sub_resource: self.sub_resource,
            operation: self.operation,
            namespace: self.namespace,
            dry_run: self.dry_run,
            object,
        }
    }
}

impl AdmissionRequest<'_> {
    pub fn is_pod_create(&self) -> bool {
        self.kind.group.is_empty()
            && self.kind.kind == "Pod"
            && self.operation == "CREATE"
            && self.sub_resource.as_deref().unwrap_or("").is_empty()
    }
}

fn check<O>(envelope: Envelope<'_, O>) -> Result<Request<'_, O>, ReviewError> {
    match envelope.api_version.as_deref() {
        Some(API_VERSION) => {}
        other => return Err(ReviewError::WrongApiVersion(other.unwrap_or("").into())),
    }
    match envelope.kind.as_deref() {
        Some("AdmissionReview") => {}
        other => return Err(ReviewError::WrongKind(other.unwrap_or("").into())),
    }
    envelope.request.ok_or(ReviewError::NoRequest)
}

/// Decodes the review in one pass, the Pod included. Only when that fails is the body read
/// again with the object kept raw, to answer a bad Pod (allowed, with a warning) apart from
/// a bad review (a 4xx).
pub fn parse(body: &[u8]) -> Result<AdmissionRequest<'_>, ReviewError> {
    // Checked up front: from_slice skips the fields it ignores without validating them, so
    // a body with invalid UTF-8 there would pass as JSON (found by fuzz target `review`).
    let body = std::str::from_utf8(body)?;
    if let Ok(envelope) = serde_json::from_str::<Envelope<'_, Pod<'_>>>(body) {
        let mut request = check(envelope)?;
        let object = match request.object.take() {
            None => PodObject::Missing,
            Some(pod) => PodObject::Pod(Box::new(pod)),
        };
        return Ok(request.with_object(object));
    }
    let envelope: Envelope<'_, &RawValue> = serde_json::from_str(body)?;
    let request = check(envelope)?;
    let object = match request.object {
        None => PodObject::Missing,
        Some(raw) => match serde_json::from_str::<Pod<'_>>(raw.get()) {
            Ok(pod) => PodObject::Pod(Box::new(pod)),
            Err(err) => PodObject::Unreadable(err.to_string()),
        },
    };
    Ok(request.with_object(object))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewOut<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: ResponseOut<'a>,
}

#[derive(Serialize)]
struct StatusOut<'a> {
    code: u16,
    message: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseOut<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<StatusOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<&'a str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    audit_annotations: &'a BTreeMap<String, String>,
}

/// The AdmissionReview response for a decision.
pub fn encode(uid: &str, decision: &super::Decision) -> Vec<u8> {
    // A denied request carries no patch: there is nothing to patch.
    let patch = (!decision.patch.is_empty() && decision.denial.is_none()).then(|| {
        let json = serde_json::to_vec(&decision.patch).unwrap_or_default();
        base64::engine::general_purpose::STANDARD.encode(json)
    });
    let out = ReviewOut {
        api_version: API_VERSION,
        kind: "AdmissionReview",
        response: ResponseOut {
            uid,
            allowed: decision.denial.is_none(),
            status: decision
                .denial
                .as_deref()
                .map(|message| StatusOut { code: 403, message }),
            patch_type: patch.as_ref().map(|_| "JSONPatch"),
            patch,
            warnings: decision
                .warnings
                .iter()
                .map(|w| w.summary.as_str())
                .collect(),
            audit_annotations: &decision.audit_annotations,
        },
    };
    // Serialising plain strings, bools and maps of strings cannot fail.
    serde_json::to_vec(&out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_utf8_in_an_ignored_field_is_not_json() {
        // From the fuzz target `review`: serde_json skipped the unknown field without
        // validating it, and the webhook patched a body that no JSON parser accepts.
        let mut body = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"group":"","version":"v1","kind":"Pod"},"operation":"CREATE","object":{"metadata":{"name":"p"},"spec":{"containers":[]},"extra":"XX"}}}"#.to_vec();
        let at = body.windows(2).position(|w| w == b"XX").unwrap();
        body[at..at + 2].copy_from_slice(&[0xFF, 0xFE]);
        assert!(serde_json::from_slice::<serde_json::Value>(&body).is_err());
        assert!(matches!(parse(&body), Err(ReviewError::NotUtf8(_))));
        // The same body with valid text still parses.
        body[at..at + 2].copy_from_slice(b"ok");
        assert!(parse(&body).is_ok());
    }
}
