//! `/metrics` on prometheus-client: admission requests by result and role, requests refused
//! before a decision, a histogram of the decision latency, and the figures read at scrape time
//! (cluster view, serving certificate). Every name starts with `memgraph_address_injector_`.
//!
//! Encoded as OpenMetrics 1.0 when the scraper asks for it (`Accept:
//! application/openmetrics-text`, as Prometheus does), else as the Prometheus text format
//! 0.0.4 (curl, older scrapers); see [`Format::negotiate`].
//!
//! Adding a counter family is two lines: a field of [`Instruments`], e.g.
//! `pub foo: Family<FooLabels, Counter>,`, and its registration in [`Metrics::default`],
//! `registry.register("foo", "What a foo is", m.foo.clone());` (no `_total`: the encoder adds
//! it). Then count with `metrics.instruments().foo.get_or_create(&labels).inc()`, or add a
//! `record_foo` method. Labels are a `#[derive(EncodeLabelSet)]` struct whose values are enums
//! (see [`Rejection`]), so a typo is a compile error, not a new series.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::decision::pod::Role;
use crate::decision::Outcome;

/// The prefix of every metric name.
pub const PREFIX: &str = "memgraph_address_injector";

/// Upper bounds of the decision latency buckets, in seconds: a cached decision takes ~10 µs,
/// one with a live Service list milliseconds.
const BUCKETS: [f64; 12] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.1,
    1.0,
];

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot encode the metrics (a bug: please report it with the webhook's log)")]
    Encode(#[from] std::fmt::Error),
}

/// The exposition format of one scrape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text, ends with `# EOF`.
    OpenMetrics,
    /// Prometheus text format 0.0.4.
    Prometheus,
}

impl Format {
    /// The format for an `Accept` header: OpenMetrics when the header names
    /// `application/openmetrics-text` with a quality at least that of the plain text it also
    /// accepts (Prometheus asks for OpenMetrics first), else the Prometheus text format
    /// (no header, `*/*`, `text/plain`).
    pub fn negotiate(accept: Option<&str>) -> Format {
        let mut openmetrics: Option<f32> = None;
        let mut text: Option<f32> = None;
        for range in accept.unwrap_or("").split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let mut quality = Some(1.0_f32);
            for param in parts {
                if let Some((name, value)) = param.split_once('=') {
                    if name.trim().eq_ignore_ascii_case("q") {
                        quality = value.trim().parse().ok();
                    }
                }
            }
            // A malformed quality drops the range rather than guessing.
            let Some(quality) = quality else { continue };
            let best = match media.as_str() {
                "application/openmetrics-text" => &mut openmetrics,
                "text/plain" | "text/*" | "*/*" => &mut text,
                _ => continue,
            };
            *best = Some(best.map_or(quality, |q| q.max(quality)));
        }
        match openmetrics {
            Some(q) if q > 0.0 && q >= text.unwrap_or(0.0) => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }
}

/// The cluster view's figures, read at scrape time.
#[derive(Clone, Copy, Debug, Default)]
pub struct CacheStats {
    pub services: usize,
    pub nodes: usize,
    pub ready: bool,
    pub watch_errors: u64,
}

/// Why a request was refused before any decision: the `reason` label of
/// `memgraph_address_injector_rejected_requests_total`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Rejection {
    /// 503: as many admission requests as `--max-in-flight` are being decided.
    Overloaded,
    /// 415: not `Content-Type: application/json`.
    ContentType,
    /// 408: the body did not arrive within the request budget.
    BodyTimeout,
    /// 413: the body is larger than [`crate::server::BODY_LIMIT`].
    TooLarge,
    /// 400: the body could not be read.
    Body,
    /// 400: the body is not an AdmissionReview.
    InvalidReview,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Overloaded => "overloaded",
            Rejection::ContentType => "content_type",
            Rejection::BodyTimeout => "body_timeout",
            Rejection::TooLarge => "too_large",
            Rejection::Body => "body",
            Rejection::InvalidReview => "invalid_review",
        }
    }
}

impl EncodeLabelValue for Rejection {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        self.as_str().encode(encoder)
    }
}

/// The decision's result as a label value, spelled by [`Outcome::as_str`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResultLabel(pub Outcome);

// By the spelling, which is one-to-one with the variant (the core type has no `Hash`).
impl Hash for ResultLabel {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.as_str().hash(state);
    }
}

impl EncodeLabelValue for ResultLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        self.0.as_str().encode(encoder)
    }
}

/// The pod's Memgraph role as a label value; `none` when the pod has none (ignored pods).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoleLabel(pub Option<Role>);

impl RoleLabel {
    pub fn as_str(self) -> &'static str {
        self.0.map_or("none", Role::as_str)
    }
}

impl Hash for RoleLabel {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl EncodeLabelValue for RoleLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        self.as_str().encode(encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    pub result: ResultLabel,
    pub role: RoleLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectionLabels {
    pub reason: Rejection,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
enum Kind {
    Service,
    Node,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: Kind,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum ReloadResult {
    Ok,
    Error,
}

impl EncodeLabelValue for ReloadResult {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        match self {
            ReloadResult::Ok => "ok",
            ReloadResult::Error => "error",
        }
        .encode(encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: ReloadResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    commit: &'static str,
}

/// What a registration in a routing table points at.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum RegistrationState {
    /// The external address the cluster gives (what outside clients need).
    External,
    /// Something else (an in-cluster name, a stale address).
    InCluster,
    /// The external address is not known yet (pending LoadBalancer, no usable node).
    Unknown,
}

impl EncodeLabelValue for RegistrationState {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        match self {
            Self::External => "external",
            Self::InCluster => "in_cluster",
            Self::Unknown => "unknown",
        }
        .encode(encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegistrationLabels {
    pub namespace: String,
    pub state: RegistrationState,
}

/// How a reconcile of one cluster ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ReconcileResult {
    /// The table matches the cluster (changed or not).
    Ok,
    /// Left for later or for a person: unknown addresses, or a version that cannot update.
    Pending,
    Unreachable,
    Auth,
    Tls,
    Refused,
    NotVerified,
    Error,
}

impl ReconcileResult {
    pub const ALL: [Self; 8] = [
        Self::Ok,
        Self::Pending,
        Self::Unreachable,
        Self::Auth,
        Self::Tls,
        Self::Refused,
        Self::NotVerified,
        Self::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Pending => "pending",
            Self::Unreachable => "unreachable",
            Self::Auth => "auth",
            Self::Tls => "tls",
            Self::Refused => "refused",
            Self::NotVerified => "not_verified",
            Self::Error => "error",
        }
    }
}

impl EncodeLabelValue for ReconcileResult {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        self.as_str().encode(encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub namespace: String,
    pub result: ReconcileResult,
}

/// Upper bounds of change → corrected table, in seconds.
const CORRECTION_BUCKETS: [f64; 10] = [0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0];

/// The instruments counted as requests are served. Each is a cheap handle (an `Arc` inside),
/// registered once in [`Metrics::default`].
#[derive(Clone, Debug)]
pub struct Instruments {
    pub admission_requests: Family<AdmissionLabels, Counter>,
    pub rejected_requests: Family<RejectionLabels, Counter>,
    pub decision_duration: Histogram,
    pub live_service_lists: Counter,
    pub handler_panics: Counter,
    /// Routing reconciler: registrations by state, per cluster (namespace).
    pub routing_registrations: Family<RegistrationLabels, prometheus_client::metrics::gauge::Gauge>,
    /// Routing reconciler: runs by result, per cluster.
    pub routing_reconciles: Family<ReconcileLabels, Counter>,
    /// Routing reconciler: from the first change seen to a verified, corrected table.
    pub routing_correction_duration: Histogram,
    /// Routing reconciler: 1 while this replica holds the Lease.
    pub routing_leader: prometheus_client::metrics::gauge::Gauge,
    /// Routing reconciler: when each cluster was last reconciled successfully.
    pub routing_last_success: Arc<Mutex<std::collections::BTreeMap<String, std::time::Instant>>>,
}

impl Default for Instruments {
    fn default() -> Self {
        Self {
            admission_requests: Family::default(),
            rejected_requests: Family::default(),
            decision_duration: Histogram::new(BUCKETS),
            live_service_lists: Counter::default(),
            handler_panics: Counter::default(),
            routing_registrations: Family::default(),
            routing_reconciles: Family::default(),
            routing_correction_duration: Histogram::new(CORRECTION_BUCKETS),
            routing_leader: Default::default(),
            routing_last_success: Arc::default(),
        }
    }
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    instruments: Instruments,
    scrape_time: Arc<ScrapeTime>,
    /// One scrape at a time, so that each encodes the figures it read.
    scrape: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Instruments::default();
        let mut registry = Registry::with_prefix(PREFIX);
        registry.register(
            "admission_requests",
            "Admission reviews answered, by decision result and Memgraph role",
            m.admission_requests.clone(),
        );
        registry.register(
            "rejected_requests",
            "Requests answered with a 4xx or 503 before any decision, by reason",
            m.rejected_requests.clone(),
        );
        registry.register_with_unit(
            "decision_duration",
            "Time to decide one admission review, including any live Service list",
            Unit::Seconds,
            m.decision_duration.clone(),
        );
        registry.register(
            "live_service_lists",
            "Live Service lists made on a cache miss",
            m.live_service_lists.clone(),
        );
        registry.register(
            "handler_panics",
            "Requests answered 500 because deciding them panicked",
            m.handler_panics.clone(),
        );
        registry.register(
            "build",
            "The running build: crate version and git commit",
            Info::new(BuildLabels {
                version: crate::VERSION,
                commit: crate::COMMIT,
            }),
        );
        registry.register(
            "routing_registrations",
            "Routing reconciler: registrations by state (external, in_cluster, unknown) per Memgraph cluster (namespace)",
            m.routing_registrations.clone(),
        );
        registry.register(
            "routing_reconciles",
            "Routing reconciler: reconcile runs per cluster, by result (ok, pending, or the error's reason)",
            m.routing_reconciles.clone(),
        );
        registry.register_with_unit(
            "routing_correction_duration",
            "Routing reconciler: time from a cluster change to a verified, corrected routing table",
            Unit::Seconds,
            m.routing_correction_duration.clone(),
        );
        registry.register(
            "routing_leader",
            "Routing reconciler: 1 while this replica holds the Lease and writes to Memgraph",
            m.routing_leader.clone(),
        );
        registry.register_collector(Box::new(LastSuccess(Arc::clone(&m.routing_last_success))));
        let scrape_time = Arc::new(ScrapeTime::default());
        registry.register_collector(Box::new(Arc::clone(&scrape_time)));
        Self {
            registry,
            instruments: m,
            scrape_time,
            scrape: Mutex::new(()),
        }
    }
}

impl Metrics {
    pub fn instruments(&self) -> &Instruments {
        &self.instruments
    }

    /// Removes every routing series of a namespace whose cluster went away.
    pub fn forget_routing_namespace(&self, namespace: &str) {
        let m = &self.instruments;
        for state in [
            RegistrationState::External,
            RegistrationState::InCluster,
            RegistrationState::Unknown,
        ] {
            m.routing_registrations.remove(&RegistrationLabels {
                namespace: namespace.to_string(),
                state,
            });
        }
        for result in ReconcileResult::ALL {
            m.routing_reconciles.remove(&ReconcileLabels {
                namespace: namespace.to_string(),
                result,
            });
        }
        m.routing_last_success
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(namespace);
    }

    /// One answered admission review and the time it took to decide.
    pub fn record(&self, outcome: Outcome, role: Option<Role>, elapsed: Duration) {
        let labels = AdmissionLabels {
            result: ResultLabel(outcome),
            role: RoleLabel(role),
        };
        self.instruments
            .admission_requests
            .get_or_create(&labels)
            .inc();
        self.instruments
            .decision_duration
            .observe(elapsed.as_secs_f64());
    }

    /// A request refused before any decision (bad body, wrong content type, ...).
    pub fn record_bad_request(&self, reason: Rejection) {
        self.instruments
            .rejected_requests
            .get_or_create(&RejectionLabels { reason })
            .inc();
    }

    pub fn record_panic(&self) {
        self.instruments.handler_panics.inc();
    }

    pub fn record_live_list(&self) {
        self.instruments.live_service_lists.inc();
    }

    /// The exposition in `format`, with the scrape-time figures as given.
    pub fn encode(
        &self,
        format: Format,
        cache: &CacheStats,
        serving: Option<&crate::tls::ServingCert>,
    ) -> Result<String, MetricsError> {
        let figures = Figures {
            cache: *cache,
            serving: serving.map(|s| ServingFigures {
                not_after: s.not_after(),
                reloads: s.reloads(),
                reload_errors: s.reload_errors(),
            }),
        };
        self.encode_figures(format, figures)
    }

    fn encode_figures(&self, format: Format, figures: Figures) -> Result<String, MetricsError> {
        let _one_scrape = lock(&self.scrape);
        *lock(&self.scrape_time.figures) = figures;
        let mut out = String::new();
        match format {
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut out, &self.registry)?
            }
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?
            }
        }
        Ok(out)
    }

    /// The Prometheus text exposition; on the (unreachable) encoding error, a comment saying so.
    pub fn render(&self, cache: &CacheStats, serving: Option<&crate::tls::ServingCert>) -> String {
        self.encode(Format::Prometheus, cache, serving)
            .unwrap_or_else(|err| format!("# {err}\n"))
    }
}

/// A poisoned lock only means a scrape panicked; the figures are overwritten on each scrape.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Clone, Copy, Debug)]
struct ServingFigures {
    not_after: i64,
    reloads: u64,
    reload_errors: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct Figures {
    cache: CacheStats,
    /// None without a serving certificate (`review`, unit tests): no certificate series,
    /// rather than an expiry of 0 that an alert would read as expired.
    serving: Option<ServingFigures>,
}

/// The figures owned elsewhere (cluster view, certificate reloader), set by
/// [`Metrics::encode`] just before the registry is encoded.
#[derive(Debug, Default)]
struct ScrapeTime {
    figures: Mutex<Figures>,
}

impl Collector for ScrapeTime {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Figures { cache, serving } = *lock(&self.figures);
        let gauge = |n: usize| ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX));

        let mut family = encoder.encode_descriptor(
            "cached_objects",
            "Objects in the cluster view.",
            None,
            MetricType::Gauge,
        )?;
        for (kind, n) in [(Kind::Service, cache.services), (Kind::Node, cache.nodes)] {
            gauge(n).encode(family.encode_family(&KindLabels { kind })?)?;
        }

        if let Some(serving) = serving {
            ConstGauge::new(serving.not_after).encode(encoder.encode_descriptor(
                "serving_certificate_expiry_timestamp",
                "Expiry of the served TLS certificate, Unix time.",
                Some(&Unit::Seconds),
                MetricType::Gauge,
            )?)?;
            let mut family = encoder.encode_descriptor(
                "certificate_reloads",
                "Serving certificate reloads, by result.",
                None,
                MetricType::Counter,
            )?;
            for (result, n) in [
                (ReloadResult::Ok, serving.reloads),
                (ReloadResult::Error, serving.reload_errors),
            ] {
                ConstCounter::new(n).encode(family.encode_family(&ReloadLabels { result })?)?;
            }
        }

        ConstCounter::new(cache.watch_errors).encode(encoder.encode_descriptor(
            "watch_errors",
            "Errors of the Service and Node watches (each retried with backoff); a rising count means the cache may be stale.",
            None,
            MetricType::Counter,
        )?)?;
        ConstGauge::new(i64::from(cache.ready)).encode(encoder.encode_descriptor(
            "ready",
            "Whether the cluster view has been listed once.",
            None,
            MetricType::Gauge,
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// One exposition read back: `series` (name with its label set, as written) → value, and
    /// the `# TYPE` of each family.
    struct Parsed {
        series: BTreeMap<String, f64>,
        types: BTreeMap<String, String>,
        units: BTreeMap<String, String>,
    }

    fn parse(text: &str) -> Parsed {
        let mut parsed = Parsed {
            series: BTreeMap::new(),
            types: BTreeMap::new(),
            units: BTreeMap::new(),
        };
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
                parsed.types.insert(name.into(), kind.into());
            } else if let Some(rest) = line.strip_prefix("# UNIT ") {
                let (name, unit) = rest.split_once(' ').expect("# UNIT name unit");
                parsed.units.insert(name.into(), unit.into());
            } else if line.starts_with('#') {
                continue;
            } else {
                let (series, value) = line.rsplit_once(' ').expect("series value");
                let value = value.parse().unwrap_or_else(|_| panic!("a number: {line}"));
                assert!(
                    parsed.series.insert(series.into(), value).is_none(),
                    "duplicate series {series}"
                );
            }
        }
        parsed
    }

    fn name(suffix: &str) -> String {
        format!("{PREFIX}_{suffix}")
    }

    /// Some traffic: two injections and one ignored pod, two bad requests, a live list, a
    /// panic.
    fn busy() -> Metrics {
        let metrics = Metrics::default();
        metrics.record(
            Outcome::Injected,
            Some(Role::Data),
            Duration::from_micros(20),
        );
        metrics.record(
            Outcome::Injected,
            Some(Role::Data),
            Duration::from_micros(30),
        );
        metrics.record(Outcome::Ignored, None, Duration::from_millis(3));
        metrics.record_bad_request(Rejection::TooLarge);
        metrics.record_bad_request(Rejection::TooLarge);
        metrics.record_bad_request(Rejection::ContentType);
        metrics.record_live_list();
        metrics.record_panic();
        metrics
    }

    const CACHE: CacheStats = CacheStats {
        services: 7,
        nodes: 3,
        ready: true,
        watch_errors: 4,
    };

    fn figures() -> Figures {
        Figures {
            cache: CACHE,
            serving: Some(ServingFigures {
                not_after: 1_900_000_000,
                reloads: 2,
                reload_errors: 1,
            }),
        }
    }

    /// The samples are the same in both formats: every name and label docs/operations.md and
    /// docs/routing.md document.
    fn assert_samples(parsed: &Parsed) {
        let expect = [
            (
                r#"admission_requests_total{result="injected",role="data"}"#,
                2.0,
            ),
            (
                r#"admission_requests_total{result="ignored",role="none"}"#,
                1.0,
            ),
            (r#"rejected_requests_total{reason="too_large"}"#, 2.0),
            (r#"rejected_requests_total{reason="content_type"}"#, 1.0),
            ("live_service_lists_total", 1.0),
            ("handler_panics_total", 1.0),
            (r#"cached_objects{kind="Service"}"#, 7.0),
            (r#"cached_objects{kind="Node"}"#, 3.0),
            ("watch_errors_total", 4.0),
            ("ready", 1.0),
            (
                "serving_certificate_expiry_timestamp_seconds",
                1_900_000_000.0,
            ),
            (r#"certificate_reloads_total{result="ok"}"#, 2.0),
            (r#"certificate_reloads_total{result="error"}"#, 1.0),
            ("decision_duration_seconds_count", 3.0),
            (r#"decision_duration_seconds_bucket{le="+Inf"}"#, 3.0),
            (
                &format!(
                    r#"build_info{{version="{}",commit="{}"}}"#,
                    env!("CARGO_PKG_VERSION"),
                    env!("MAI_BUILD_COMMIT")
                ),
                1.0,
            ),
        ];
        for (series, value) in expect {
            assert_eq!(
                parsed.series.get(&name(series)),
                Some(&value),
                "{series} in {:#?}",
                parsed.series
            );
        }
        let sum = parsed.series[&name("decision_duration_seconds_sum")];
        assert!((sum - 0.003_05).abs() < 1e-9, "sum {sum}");
        // Cumulative buckets in bound order: 20 µs first counts at le=2.5e-5, 30 µs at 5e-5,
        // 3 ms at 0.005.
        let bucket = name("decision_duration_seconds_bucket{le=\"");
        let mut buckets: Vec<(f64, f64)> = parsed
            .series
            .iter()
            .filter_map(|(k, v)| {
                let le = k.strip_prefix(&bucket)?.strip_suffix("\"}")?;
                Some((le.parse().expect("a bound"), *v))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let bounds: Vec<f64> = buckets.iter().map(|b| b.0).collect();
        let counts: Vec<f64> = buckets.iter().map(|b| b.1).collect();
        assert_eq!(bounds[..BUCKETS.len()], BUCKETS);
        assert_eq!(bounds[BUCKETS.len()], f64::INFINITY);
        assert_eq!(
            counts,
            [0., 1., 2., 2., 2., 2., 2., 2., 3., 3., 3., 3., 3.],
            "{buckets:?}"
        );
        // No other series of these families (a stray label value); metrics added later are
        // other families and are not counted here.
        let families = [
            "admission_requests",
            "rejected_requests",
            "live_service_lists",
            "handler_panics",
            "cached_objects",
            "watch_errors",
            "ready",
            "serving_certificate_expiry",
            "certificate_reloads",
            "decision_duration",
            "build_info",
        ];
        let ours = parsed
            .series
            .keys()
            .filter(|k| families.iter().any(|f| k.starts_with(&name(f))))
            .count();
        assert_eq!(
            ours,
            expect.len() + 1 + BUCKETS.len(),
            "{:#?}",
            parsed.series
        );
    }

    #[test]
    fn prometheus_text_has_every_documented_series_and_typed_families() {
        let text = busy()
            .encode_figures(Format::Prometheus, figures())
            .expect("encodes");
        let parsed = parse(&text);
        assert_samples(&parsed);
        // 0.0.4 names a counter family with its `_total` and knows no `info` type.
        for (family, kind) in [
            ("admission_requests_total", "counter"),
            ("rejected_requests_total", "counter"),
            ("watch_errors_total", "counter"),
            ("certificate_reloads_total", "counter"),
            ("decision_duration_seconds", "histogram"),
            ("cached_objects", "gauge"),
            ("serving_certificate_expiry_timestamp_seconds", "gauge"),
            ("build_info", "gauge"),
        ] {
            assert_eq!(
                parsed.types.get(&name(family)).map(String::as_str),
                Some(kind),
                "{family}"
            );
        }
        assert!(!text.contains("# EOF"), "{text}");
        assert!(parsed.units.is_empty(), "{text}");
        // The exact line the HTTPS test asserts.
        assert!(text.contains(&format!("{}_count 3\n", name("decision_duration_seconds"))));
    }

    #[test]
    fn openmetrics_has_the_same_samples_and_ends_with_eof() {
        let text = busy()
            .encode_figures(Format::OpenMetrics, figures())
            .expect("encodes");
        assert!(text.ends_with("# EOF\n"), "{text}");
        let parsed = parse(&text);
        assert_samples(&parsed);
        // OpenMetrics names a counter family without `_total`, and has `info` and units.
        for (family, kind) in [
            ("admission_requests", "counter"),
            ("watch_errors", "counter"),
            ("certificate_reloads", "counter"),
            ("decision_duration_seconds", "histogram"),
            ("ready", "gauge"),
            ("build", "info"),
        ] {
            assert_eq!(
                parsed.types.get(&name(family)).map(String::as_str),
                Some(kind),
                "{family}"
            );
        }
        assert_eq!(
            parsed
                .units
                .get(&name("decision_duration_seconds"))
                .map(String::as_str),
            Some("seconds")
        );
    }

    #[test]
    fn scrape_time_figures_are_the_latest_and_certificate_series_only_with_a_certificate() {
        let metrics = Metrics::default();
        let before = parse(&metrics.render(&CacheStats::default(), None));
        assert_eq!(
            before.series[&name(r#"cached_objects{kind="Service"}"#)],
            0.0
        );
        assert_eq!(before.series[&name("ready")], 0.0);
        // No expiry of 0 that an expiry alert would take for an expired certificate.
        assert!(
            !before.series.keys().any(|k| k.contains("certificate")),
            "{:?}",
            before.series
        );
        // Nothing recorded yet: the request families are left out, not written empty.
        assert!(!before
            .series
            .keys()
            .any(|k| k.contains("admission_requests")));

        let serving = crate::tls::ServingCert::default();
        let after = parse(&metrics.render(&CACHE, Some(&serving)));
        assert_eq!(
            after.series[&name(r#"cached_objects{kind="Service"}"#)],
            7.0
        );
        assert_eq!(after.series[&name("watch_errors_total")], 4.0);
        assert_eq!(after.series[&name("ready")], 1.0);
        assert_eq!(
            after.series[&name(r#"certificate_reloads_total{result="ok"}"#)],
            0.0
        );
        assert!(after
            .series
            .contains_key(&name("serving_certificate_expiry_timestamp_seconds")));
    }

    #[test]
    fn every_rejection_reason_is_spelled_as_documented() {
        let metrics = Metrics::default();
        let all = [
            (Rejection::Overloaded, "overloaded"),
            (Rejection::ContentType, "content_type"),
            (Rejection::BodyTimeout, "body_timeout"),
            (Rejection::TooLarge, "too_large"),
            (Rejection::Body, "body"),
            (Rejection::InvalidReview, "invalid_review"),
        ];
        for (reason, _) in all {
            metrics.record_bad_request(reason);
        }
        let parsed = parse(&metrics.render(&CACHE, None));
        for (_, spelled) in all {
            let series = name(&format!(r#"rejected_requests_total{{reason="{spelled}"}}"#));
            assert_eq!(parsed.series.get(&series), Some(&1.0), "{series}");
        }
    }

    #[test]
    fn openmetrics_only_when_the_scraper_prefers_it() {
        use Format::{OpenMetrics, Prometheus};
        let cases = [
            (None, Prometheus),
            (Some("*/*"), Prometheus),
            (Some("text/plain"), Prometheus),
            (Some("application/openmetrics-text"), OpenMetrics),
            // Prometheus 2.x.
            (Some("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"), OpenMetrics),
            // Prometheus 3.x.
            (Some("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1"), OpenMetrics),
            (Some("text/plain;version=0.0.4, application/openmetrics-text;q=0.5"), Prometheus),
            (Some("Application/OpenMetrics-Text; Q=0.9, text/plain; q=0.9"), OpenMetrics),
            (Some("application/openmetrics-text;q=0"), Prometheus),
            (Some("application/openmetrics-text;q=oops"), Prometheus),
            (Some("application/json"), Prometheus),
        ];
        for (accept, format) in cases {
            assert_eq!(Format::negotiate(accept), format, "{accept:?}");
        }
        assert_eq!(
            OpenMetrics.content_type(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        assert_eq!(
            Prometheus.content_type(),
            "text/plain; version=0.0.4; charset=utf-8"
        );
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NamespaceLabels {
    namespace: String,
}

/// `routing_seconds_since_last_success{namespace}`, computed at scrape time.
#[derive(Debug)]
struct LastSuccess(Arc<Mutex<std::collections::BTreeMap<String, std::time::Instant>>>);

impl Collector for LastSuccess {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let last = lock(&self.0).clone();
        if last.is_empty() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            "routing_seconds_since_last_success",
            "Routing reconciler: seconds since each cluster's last successful reconcile.",
            None,
            MetricType::Gauge,
        )?;
        for (namespace, at) in last {
            ConstGauge::new(at.elapsed().as_secs_f64())
                .encode(family.encode_family(&NamespaceLabels { namespace })?)?;
        }
        Ok(())
    }
}
