//! What an operator must know about a decision reaches them. The pod creator is usually the
//! StatefulSet controller, which drops admission warnings, so every decision is logged with
//! the pod's name (or generateName and owner), and warnings and denials become Events on the
//! owning StatefulSet, where `kubectl describe statefulset` shows them. Dry-run requests get
//! no Events (the webhook's `sideEffects: NoneOnDryRun` promises that).
//!
//! Anyone who can reach /mutate (without a client CA, any pod that can reach the Service)
//! chooses the namespace and owner a review names, so an admission Event is written only
//! about a StatefulSet the API server has with the UID the pod's ownerReference gives; a pod
//! without such an owner is logged only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, PostParams};

use crate::decision::review::AdmissionRequest;
use crate::decision::{Decision, PodRef};

/// The component name on Events.
pub const COMPONENT: &str = "memgraph-address-injector";
/// Event reasons, one per kind of message.
pub const REASON_WARNING: &str = "ExternalAddressWarning";
pub const REASON_PENDING: &str = "ExternalAddressPending";
pub const REASON_DENIED: &str = "ExternalAddressDenied";

/// The same message about the same owner is sent at most once in this window: the
/// StatefulSet controller retries a denied pod with backoff, and one Event says it all.
const REPEAT_WINDOW: Duration = Duration::from_secs(300);
/// Events waiting to be sent; past it, new ones are dropped (and logged), never queued
/// without bound, and admission never waits for them.
const QUEUE: usize = 256;
/// The API server limits an Event message to 1 KiB.
const MAX_MESSAGE: usize = 1024;
/// Notices remembered for the repeat window at most; past it the oldest is forgotten (so
/// a flood of distinct notices costs bounded memory and at worst repeats an old Event).
const REMEMBERED: usize = 4 * QUEUE;

/// One Event to create.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Notice {
    pub namespace: String,
    pub object: ObjectRef,
    pub reason: &'static str,
    pub message: String,
    /// `Warning`, or `Normal` for a change that went as planned.
    pub type_: &'static str,
    /// The object was named by an admission review, not seen in a watch: written only when
    /// the API server has a StatefulSet of that name and UID.
    pub claimed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectRef {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub uid: Option<String>,
}

/// The Events a decision calls for: one per warning and one for a denial, about the pod's
/// owner StatefulSet; none for a pod without one (logged only). Pure, for tests.
pub fn notices(decision: &Decision, dry_run: bool) -> Vec<Notice> {
    let Some(pod) = &decision.pod else {
        return Vec::new();
    };
    if dry_run {
        return Vec::new();
    }
    // Only the StatefulSet controller's pods: their owner can be verified by UID.
    let Some(owner) = pod
        .owner
        .as_ref()
        .filter(|o| o.kind == "StatefulSet" && o.api_version == "apps/v1" && !o.uid.is_empty())
    else {
        return Vec::new();
    };
    let object = ObjectRef {
        api_version: owner.api_version.clone(),
        kind: owner.kind.clone(),
        name: owner.name.clone(),
        uid: Some(owner.uid.clone()),
    };
    if object.name.is_empty() {
        return Vec::new();
    }
    let subject = pod_label(pod);
    let mut out = Vec::new();
    if let Some(denial) = &decision.denial {
        let reason = match decision.outcome {
            crate::decision::Outcome::Pending => REASON_PENDING,
            _ => REASON_DENIED,
        };
        out.push(Notice {
            namespace: pod.namespace.clone(),
            object: object.clone(),
            reason,
            message: cut(format!("pod {subject}: {denial}")),
            type_: "Warning",
            claimed: true,
        });
    }
    for warning in &decision.warnings {
        out.push(Notice {
            namespace: pod.namespace.clone(),
            object: object.clone(),
            reason: REASON_WARNING,
            message: cut(format!("pod {subject}: {}", warning.detail)),
            type_: "Warning",
            claimed: true,
        });
    }
    out
}

fn pod_label(pod: &PodRef) -> String {
    match (&pod.name, &pod.generate_name) {
        (Some(name), _) => name.clone(),
        (None, Some(prefix)) => format!("{prefix}*"),
        (None, None) => "<unnamed>".into(),
    }
}

pub fn cut(mut message: String) -> String {
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE - 3;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

/// Logs decisions and sends their Events in the background.
#[derive(Clone, Default)]
pub struct Reporter {
    events: Option<tokio::sync::mpsc::Sender<Notice>>,
    recent: Arc<Mutex<HashMap<Notice, Instant>>>,
}

impl Reporter {
    /// Logs only (state-file mode, tests without an API server).
    pub fn log_only() -> Self {
        Self::default()
    }

    /// Logs, and creates Events through `client` (RBAC: `events: create`, and
    /// `statefulsets: get` to verify an admission's owner).
    pub fn with_events(client: kube::Client, instance: &str) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Notice>(QUEUE);
        let instance = instance.to_string();
        tokio::spawn(async move {
            while let Some(notice) = rx.recv().await {
                if notice.claimed && !owner_exists(&client, &notice).await {
                    continue;
                }
                let api: Api<Event> = Api::namespaced(client.clone(), &notice.namespace);
                let event = to_event(&notice, &instance);
                let sent = tokio::time::timeout(
                    Duration::from_secs(10),
                    api.create(&PostParams::default(), &event),
                )
                .await;
                match sent {
                    Ok(Ok(_)) => {}
                    Ok(Err(err)) => tracing::warn!(
                        namespace = %notice.namespace,
                        object = %notice.object.name,
                        reason = notice.reason,
                        error = %err,
                        "cannot record an Event"
                    ),
                    Err(_) => tracing::warn!(
                        namespace = %notice.namespace,
                        object = %notice.object.name,
                        "recording an Event timed out"
                    ),
                }
            }
        });
        Self {
            events: Some(tx),
            recent: Arc::default(),
        }
    }

    /// Called once per decided request, after the decision and before the answer.
    pub fn decided(&self, request: &AdmissionRequest<'_>, decision: &Decision) {
        if decision.outcome == crate::decision::Outcome::Ignored {
            return;
        }
        let dry_run = request.dry_run.unwrap_or(false);
        let noteworthy = !decision.warnings.is_empty() || decision.denial.is_some();
        // The common case (a clean decision, logged at info) builds nothing when info is off.
        if !noteworthy && !tracing::enabled!(tracing::Level::INFO) {
            return;
        }
        let pod = decision
            .pod
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_else(|| "<no pod>".into());
        let role = decision.role.map(|r| r.as_str()).unwrap_or("none");
        tracing::info!(
            pod = %pod,
            uid = %request.uid,
            result = decision.outcome.as_str(),
            role,
            address = decision.address.as_deref().unwrap_or(""),
            dry_run,
            "admission decided"
        );
        for warning in &decision.warnings {
            tracing::warn!(pod = %pod, uid = %request.uid, dry_run, "{}", warning.detail);
        }
        if let Some(denial) = &decision.denial {
            tracing::warn!(pod = %pod, uid = %request.uid, dry_run, "denied: {denial}");
        }
        let Some(events) = &self.events else {
            return;
        };
        let now = Instant::now();
        for notice in notices(decision, dry_run) {
            if !self.first_in_window(&notice, now) {
                continue;
            }
            if events.try_send(notice).is_err() {
                tracing::warn!(pod = %pod, "Event queue full; an Event was dropped");
            }
        }
    }

    /// Records an Event that is not about an admission (the routing reconciler's), with the
    /// same repeat window and bounded queue.
    pub fn notify(&self, notice: Notice) {
        let Some(events) = &self.events else {
            return;
        };
        if self.first_in_window(&notice, Instant::now()) && events.try_send(notice).is_err() {
            tracing::warn!("Event queue full; an Event was dropped");
        }
    }

    /// True when this notice was not sent within the repeat window.
    fn first_in_window(&self, notice: &Notice, now: Instant) -> bool {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = recent.get(notice) {
            if now.duration_since(*at) < REPEAT_WINDOW {
                return false;
            }
        }
        if recent.len() >= REMEMBERED {
            recent.retain(|_, at| now.duration_since(*at) < REPEAT_WINDOW);
        }
        while recent.len() >= REMEMBERED {
            let oldest = recent
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(n, _)| n.clone());
            match oldest {
                Some(oldest) => recent.remove(&oldest),
                None => break,
            };
        }
        recent.insert(notice.clone(), now);
        true
    }
}

/// Whether the StatefulSet an admission notice names exists with the UID it claims. A GET
/// that fails is a no: an Event is not worth writing about an object nobody can confirm.
async fn owner_exists(client: &kube::Client, notice: &Notice) -> bool {
    let api: Api<k8s_openapi::api::apps::v1::StatefulSet> =
        Api::namespaced(client.clone(), &notice.namespace);
    let found =
        tokio::time::timeout(Duration::from_secs(5), api.get_opt(&notice.object.name)).await;
    let uid = match found {
        Ok(Ok(Some(sts))) => sts.metadata.uid,
        Ok(Ok(None)) => None,
        Ok(Err(err)) => {
            tracing::warn!(namespace = %notice.namespace, statefulset = %notice.object.name, error = %err, "cannot verify the owner of an admission Event; not recording it");
            return false;
        }
        Err(_) => {
            tracing::warn!(namespace = %notice.namespace, statefulset = %notice.object.name, "verifying the owner of an admission Event timed out; not recording it");
            return false;
        }
    };
    let verified = uid.is_some() && uid == notice.object.uid;
    tracing::info!(namespace = %notice.namespace, statefulset = %notice.object.name, verified, "checked the owner of an admission Event");
    if !verified {
        tracing::warn!(namespace = %notice.namespace, statefulset = %notice.object.name, "an admission review named a StatefulSet the API server does not have (with that UID); no Event recorded");
    }
    verified
}

fn to_event(notice: &Notice, instance: &str) -> Event {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}.", notice.object.name)),
            namespace: Some(notice.namespace.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some(notice.object.api_version.clone()),
            kind: Some(notice.object.kind.clone()),
            name: Some(notice.object.name.clone()),
            namespace: Some(notice.namespace.clone()),
            uid: notice.object.uid.clone(),
            ..Default::default()
        },
        reason: Some(notice.reason.to_string()),
        message: Some(notice.message.clone()),
        type_: Some(notice.type_.into()),
        source: Some(EventSource {
            component: Some(COMPONENT.into()),
            host: None,
        }),
        reporting_component: Some(COMPONENT.into()),
        reporting_instance: Some(instance.to_string()),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::{OwnerRef, Warning};

    fn decision(outcome: crate::decision::Outcome) -> Decision {
        let request = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","operation":"DELETE"}}"#;
        let request = crate::decision::review::parse(request).unwrap();
        let mut d = crate::decision::decide(
            &request,
            &Default::default(),
            &crate::decision::Config::default(),
        );
        d.outcome = outcome;
        d.pod = Some(PodRef {
            namespace: "memgraph".into(),
            name: Some("memgraph-data-0-0".into()),
            generate_name: Some("memgraph-data-0-".into()),
            owner: Some(OwnerRef {
                api_version: "apps/v1".into(),
                kind: "StatefulSet".into(),
                name: "memgraph-data-0".into(),
                uid: "1234".into(),
            }),
        });
        d
    }

    #[test]
    fn warnings_and_denials_become_events_on_the_owner_never_on_dry_runs() {
        use crate::decision::Outcome;
        let mut d = decision(Outcome::Pending);
        d.denial = Some("the LoadBalancer has no ingress yet".into());
        d.warnings
            .push(Warning::new("short", "the whole explanation of it"));
        let n = notices(&d, false);
        assert_eq!(n.len(), 2);
        assert_eq!(n[0].reason, REASON_PENDING);
        assert_eq!(n[0].object.kind, "StatefulSet");
        assert_eq!(n[0].object.uid.as_deref(), Some("1234"));
        assert!(n[0].message.contains("memgraph-data-0-0"));
        assert_eq!(n[1].reason, REASON_WARNING);
        assert!(n[1].message.ends_with("the whole explanation of it"));
        assert!(notices(&d, true).is_empty(), "dry run");

        let clean = decision(Outcome::Injected);
        assert!(notices(&clean, false).is_empty());
    }

    #[test]
    fn long_messages_are_cut_to_the_api_limit() {
        let mut d = decision(crate::decision::Outcome::InvalidHost);
        d.denial = Some("é".repeat(2000));
        let n = notices(&d, false);
        assert!(n[0].message.len() <= MAX_MESSAGE);
        assert_eq!(n[0].reason, REASON_DENIED);
    }

    /// As the StatefulSet controller sends it: the owner's apiVersion is read (it once was
    /// not, and every admission Event was dropped).
    #[test]
    fn a_real_review_names_its_statefulset() {
        let review = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/reviews/data.json"
        ))
        .unwrap();
        let request = crate::decision::review::parse(&review).unwrap();
        let mut d = crate::decision::decide(
            &request,
            &Default::default(),
            &crate::decision::Config::default(),
        );
        d.denial = Some("pending".into());
        let n = notices(&d, false);
        assert_eq!(n.len(), 1, "{d:?}");
        assert_eq!(n[0].object.api_version, "apps/v1");
        assert_eq!(n[0].object.kind, "StatefulSet");
        assert!(n[0].object.uid.as_deref().is_some_and(|u| !u.is_empty()));
    }

    #[test]
    fn only_a_statefulset_owner_gets_events() {
        use crate::decision::Outcome;
        let mut d = decision(Outcome::Pending);
        d.denial = Some("pending".into());
        assert!(notices(&d, false).iter().all(|n| n.claimed));
        let owner = d.pod.as_mut().unwrap().owner.as_mut().unwrap();
        owner.uid.clear();
        assert!(notices(&d, false).is_empty(), "an owner without a UID");
        let owner = d.pod.as_mut().unwrap().owner.as_mut().unwrap();
        owner.uid = "1234".into();
        owner.kind = "ReplicaSet".into();
        assert!(notices(&d, false).is_empty(), "not a StatefulSet");
        d.pod.as_mut().unwrap().owner = None;
        assert!(notices(&d, false).is_empty(), "a bare pod");
    }

    #[test]
    fn the_repeat_memory_is_bounded_and_keeps_the_newest() {
        let reporter = Reporter::log_only();
        let mut d = decision(crate::decision::Outcome::Pending);
        d.denial = Some("pending".into());
        let base = notices(&d, false).remove(0);
        let now = Instant::now();
        let nth = |i: usize| Notice {
            message: format!("{} {i}", base.message),
            ..base.clone()
        };
        for i in 0..3 * REMEMBERED {
            assert!(reporter.first_in_window(&nth(i), now + Duration::from_millis(i as u64)));
        }
        assert!(reporter.recent.lock().unwrap().len() <= REMEMBERED);
        let last = now + Duration::from_millis(3 * REMEMBERED as u64);
        assert!(
            !reporter.first_in_window(&nth(3 * REMEMBERED - 1), last),
            "the newest is remembered"
        );
        assert!(
            reporter.first_in_window(&nth(0), last),
            "the oldest was forgotten"
        );
    }

    #[test]
    fn the_same_notice_is_sent_once_per_window() {
        let reporter = Reporter::log_only();
        let mut d = decision(crate::decision::Outcome::Pending);
        d.denial = Some("pending".into());
        let notice = notices(&d, false).remove(0);
        let now = Instant::now();
        assert!(reporter.first_in_window(&notice, now));
        assert!(!reporter.first_in_window(&notice, now + Duration::from_secs(10)));
        assert!(reporter.first_in_window(&notice, now + REPEAT_WINDOW + Duration::from_secs(1)));
    }
}
