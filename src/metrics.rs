//! Prometheus text metrics: admission requests by result and role, and a histogram of the
//! decision latency. Small enough that a metrics library would be most of the code.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds in seconds.
const BUCKETS: [f64; 12] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.1,
    1.0,
];

/// The cluster view's figures, read at scrape time.
#[derive(Clone, Copy, Debug, Default)]
pub struct CacheStats {
    pub services: usize,
    pub nodes: usize,
    pub ready: bool,
    pub watch_errors: u64,
}

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    bad_requests: Mutex<BTreeMap<&'static str, u64>>,
    live_lists: AtomicU64,
    panics: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Metrics {
    pub fn record(&self, result: &'static str, role: &'static str, elapsed: Duration) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((result, role))
            .or_default() += 1;
        let seconds = elapsed.as_secs_f64();
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }

    /// A request refused before any decision (bad body, wrong content type, ...).
    pub fn record_bad_request(&self, reason: &'static str) {
        *self
            .bad_requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(reason)
            .or_default() += 1;
    }

    pub fn record_panic(&self) {
        self.panics.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_live_list(&self) {
        self.live_lists.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, cache: &CacheStats, serving: Option<&crate::tls::ServingCert>) -> String {
        let CacheStats {
            services,
            nodes,
            ready,
            watch_errors,
        } = *cache;
        let mut out = String::new();
        out.push_str("# HELP memgraph_address_injector_admission_requests_total Admission reviews answered, by decision result and Memgraph role.\n");
        out.push_str("# TYPE memgraph_address_injector_admission_requests_total counter\n");
        for ((result, role), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "memgraph_address_injector_admission_requests_total{{result=\"{result}\",role=\"{role}\"}} {n}"
            );
        }
        out.push_str("# HELP memgraph_address_injector_rejected_requests_total Requests answered with a 4xx before any decision, by reason.\n");
        out.push_str("# TYPE memgraph_address_injector_rejected_requests_total counter\n");
        for (reason, n) in self
            .bad_requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "memgraph_address_injector_rejected_requests_total{{reason=\"{reason}\"}} {n}"
            );
        }
        out.push_str("# HELP memgraph_address_injector_decision_duration_seconds Time to decide one admission review, including any live Service list.\n");
        out.push_str("# TYPE memgraph_address_injector_decision_duration_seconds histogram\n");
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "memgraph_address_injector_decision_duration_seconds_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "memgraph_address_injector_decision_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "memgraph_address_injector_decision_duration_seconds_sum {}",
            self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9
        );
        let _ = writeln!(
            out,
            "memgraph_address_injector_decision_duration_seconds_count {count}"
        );
        out.push_str("# HELP memgraph_address_injector_live_service_lists_total Live Service lists made on a cache miss.\n");
        out.push_str("# TYPE memgraph_address_injector_live_service_lists_total counter\n");
        let _ = writeln!(
            out,
            "memgraph_address_injector_live_service_lists_total {}",
            self.live_lists.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP memgraph_address_injector_cached_objects Objects in the cluster view.\n",
        );
        out.push_str("# TYPE memgraph_address_injector_cached_objects gauge\n");
        let _ = writeln!(
            out,
            "memgraph_address_injector_cached_objects{{kind=\"Service\"}} {services}"
        );
        let _ = writeln!(
            out,
            "memgraph_address_injector_cached_objects{{kind=\"Node\"}} {nodes}"
        );
        out.push_str("# HELP memgraph_address_injector_handler_panics_total Requests answered 500 because deciding them panicked.\n");
        out.push_str("# TYPE memgraph_address_injector_handler_panics_total counter\n");
        let _ = writeln!(
            out,
            "memgraph_address_injector_handler_panics_total {}",
            self.panics.load(Ordering::Relaxed)
        );
        if let Some(serving) = serving {
            out.push_str("# HELP memgraph_address_injector_serving_certificate_expiry_timestamp_seconds Expiry of the served TLS certificate, Unix time.\n");
            out.push_str("# TYPE memgraph_address_injector_serving_certificate_expiry_timestamp_seconds gauge\n");
            let _ = writeln!(
                out,
                "memgraph_address_injector_serving_certificate_expiry_timestamp_seconds {}",
                serving.not_after()
            );
            out.push_str("# HELP memgraph_address_injector_certificate_reloads_total Serving certificate reloads, by result.\n");
            out.push_str("# TYPE memgraph_address_injector_certificate_reloads_total counter\n");
            let _ = writeln!(
                out,
                "memgraph_address_injector_certificate_reloads_total{{result=\"ok\"}} {}",
                serving.reloads()
            );
            let _ = writeln!(
                out,
                "memgraph_address_injector_certificate_reloads_total{{result=\"error\"}} {}",
                serving.reload_errors()
            );
        }
        out.push_str("# HELP memgraph_address_injector_watch_errors_total Errors of the Service and Node watches (each retried with backoff); a rising count means the cache may be stale.\n");
        out.push_str("# TYPE memgraph_address_injector_watch_errors_total counter\n");
        let _ = writeln!(
            out,
            "memgraph_address_injector_watch_errors_total {watch_errors}"
        );
        out.push_str("# HELP memgraph_address_injector_ready Whether the cluster view has been listed once.\n");
        out.push_str("# TYPE memgraph_address_injector_ready gauge\n");
        let _ = writeln!(out, "memgraph_address_injector_ready {}", u8::from(ready));
        out
    }
}
