//! `serve`: `POST /mutate` over HTTPS, and `/livez`, `/readyz`, `/metrics` on a plain-HTTP
//! listener. A thin shell: it reads the body, calls the pure decision against the cluster
//! view, and writes the answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::cluster::SharedCluster;
use crate::decision::{self, review, Config};
use crate::metrics::Metrics;

/// The API server's limit on a request body is 3 MiB, on an object ~1.5 MiB; anything past
/// 7 MiB is not an AdmissionReview.
pub const BODY_LIMIT: usize = 7 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot load the serving certificate: {0}")]
    Certificate(#[from] crate::certs::CertError),
    #[error("cannot listen on {addr}: {cause}")]
    Bind {
        addr: SocketAddr,
        cause: std::io::Error,
    },
    #[error("the HTTPS server failed: {0}")]
    Serve(std::io::Error),
}

pub struct ServeOptions {
    pub listen: SocketAddr,
    pub health_listen: SocketAddr,
    pub tls: crate::tls::TlsFiles,
    /// How often the certificate files are compared with what is served.
    pub cert_poll: Duration,
    pub shutdown_grace: Duration,
    /// Time between SIGTERM (readiness fails) and closing the listener, so that endpoints
    /// stop sending new requests here first.
    pub shutdown_delay: Duration,
    pub header_read_timeout: Duration,
}

#[derive(Clone)]
pub struct AppState {
    pub cluster: SharedCluster,
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    /// Time allowed for one admission request, live Service list included; below the
    /// webhook's timeoutSeconds so that the API server gets an answer, not a timeout.
    pub request_budget: Duration,
    /// Admission requests decided at once; past it, a clear 503 instead of a queue.
    pub in_flight: Arc<tokio::sync::Semaphore>,
    pub max_in_flight: usize,
    /// Set once `serve` has loaded the certificate.
    pub serving: Option<Arc<crate::tls::ServingCert>>,
    /// Set on SIGTERM: /readyz fails so that the Service stops routing here, while the
    /// server keeps answering for the shutdown delay.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
}

impl AppState {
    pub fn new(
        cluster: SharedCluster,
        config: Config,
        request_budget: Duration,
        max_in_flight: usize,
    ) -> Self {
        Self {
            cluster,
            config: Arc::new(config),
            metrics: Arc::default(),
            request_budget,
            in_flight: Arc::new(tokio::sync::Semaphore::new(max_in_flight)),
            max_in_flight,
            serving: None,
            draining: Arc::default(),
        }
    }
}

fn plain(status: StatusCode, message: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message + "\n",
    )
        .into_response()
}

async fn mutate(State(app): State<AppState>, request: Request) -> Response {
    let started = Instant::now();
    let Ok(_permit) = app.in_flight.clone().try_acquire_owned() else {
        app.metrics.record_bad_request("overloaded");
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "over capacity: {} admission requests are already being decided; retry",
                app.max_in_flight
            ),
        );
    };
    if !is_json(request.headers()) {
        app.metrics.record_bad_request("content_type");
        return plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the request must have Content-Type: application/json (an AdmissionReview)".into(),
        );
    }
    // The header timeout does not cover the body: a client trickling it would hold an
    // in-flight slot for ever, so the body shares the request's budget.
    let read = tokio::time::timeout(
        app.request_budget,
        axum::body::to_bytes(request.into_body(), BODY_LIMIT),
    );
    let body = match read.await {
        Err(_) => {
            app.metrics.record_bad_request("body_timeout");
            return plain(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {:?}",
                    app.request_budget
                ),
            );
        }
        Ok(Ok(body)) => body,
        Ok(Err(err)) => {
            let too_large = std::error::Error::source(&err)
                .is_some_and(|s| s.to_string().contains("length limit"));
            if too_large {
                app.metrics.record_bad_request("too_large");
                return plain(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the request body exceeds {BODY_LIMIT} bytes (7 MiB); an AdmissionReview is far smaller"),
                );
            }
            app.metrics.record_bad_request("body");
            return plain(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {err}"),
            );
        }
    };
    review_body(&app, body, started).await
}

async fn review_body(app: &AppState, body: Bytes, started: Instant) -> Response {
    let request = match review::parse(&body) {
        Ok(request) => request,
        Err(err) => {
            app.metrics.record_bad_request("invalid_review");
            return plain(StatusCode::BAD_REQUEST, err.to_string());
        }
    };
    let Some(mut decision) = decide_guarded(app, &request) else {
        return panicked(app);
    };
    if decision.outcome.may_be_cache_miss() && app.cluster.is_live() {
        let namespace = request.namespace.as_deref().unwrap_or("default");
        app.metrics.record_live_list();
        // What is left of the request's budget, keeping a margin to answer in.
        let budget = app
            .request_budget
            .saturating_sub(started.elapsed())
            .saturating_sub(Duration::from_millis(100));
        if app.cluster.refresh_namespace(namespace, budget).await {
            let Some(again) = decide_guarded(app, &request) else {
                return panicked(app);
            };
            decision = again;
        }
    }
    let role = decision.role.map(|r| r.as_str()).unwrap_or("none");
    app.metrics
        .record(decision.outcome.as_str(), role, started.elapsed());
    if decision.outcome != decision::Outcome::Ignored {
        tracing::info!(
            uid = %request.uid,
            namespace = request.namespace.as_deref().unwrap_or(""),
            result = decision.outcome.as_str(),
            role,
            address = decision.address.as_deref().unwrap_or(""),
            denied = decision.denial.as_deref().unwrap_or(""),
            dry_run = request.dry_run.unwrap_or(false),
            "admission review"
        );
    }
    let bytes = review::encode(&request.uid, &decision);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(bytes),
    )
        .into_response()
}

/// The decision with a panic caught: a bug of ours answers 500 and is counted, it never
/// takes a connection (or the process) down.
fn decide_guarded(
    app: &AppState,
    request: &review::AdmissionRequest<'_>,
) -> Option<decision::Decision> {
    guarded(|| decision::decide(request, &app.cluster.read(), &app.config))
}

fn guarded<T>(f: impl FnOnce() -> T) -> Option<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok()
}

fn panicked(app: &AppState) -> Response {
    app.metrics.record_panic();
    plain(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error while deciding this request (a bug: please report it with the webhook's log)".into(),
    )
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

async fn livez() -> &'static str {
    "ok\n"
}

async fn readyz(State(app): State<AppState>) -> Response {
    if app.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down".into(),
        );
    }
    if !app.cluster.is_ready() {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: Services and Nodes have not been listed yet".into(),
        );
    }
    if let Some(problem) = app
        .serving
        .as_ref()
        .and_then(|s| s.problem(crate::tls::now_unix()))
    {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {problem}"),
        );
    }
    plain(StatusCode::OK, "ok".into())
}

async fn metrics(State(app): State<AppState>) -> Response {
    let cache = {
        let state = app.cluster.read();
        crate::metrics::CacheStats {
            services: state.service_count(),
            nodes: state.node_count(),
            ready: app.cluster.is_ready(),
            watch_errors: app.cluster.watch_errors(),
        }
    };
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(&cache, app.serving.as_deref()),
    )
        .into_response()
}

pub fn webhook_router(app: AppState) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        // The body limit is enforced in the handler, with a message that says so.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(app)
}

pub fn health_router(app: AppState) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(app)
}

/// Runs both listeners until SIGTERM or Ctrl-C, then stops accepting and lets in-flight
/// requests finish.
pub async fn serve(options: ServeOptions, mut app: AppState) -> Result<(), ServeError> {
    let reloader = crate::tls::Reloader::new(options.tls.clone())?;
    let tls = reloader.rustls.clone();
    app.serving = Some(reloader.serving.clone());
    reloader.spawn(options.cert_poll);

    let health_listener = tokio::net::TcpListener::bind(options.health_listen)
        .await
        .map_err(|cause| ServeError::Bind {
            addr: options.health_listen,
            cause,
        })?;
    let webhook_listener =
        std::net::TcpListener::bind(options.listen).map_err(|cause| ServeError::Bind {
            addr: options.listen,
            cause,
        })?;
    webhook_listener
        .set_nonblocking(true)
        .map_err(ServeError::Serve)?;

    let handle = axum_server::Handle::new();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    {
        let handle = handle.clone();
        let grace = options.shutdown_grace;
        let delay = options.shutdown_delay;
        let draining = app.draining.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            draining.store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(
                ?delay,
                "SIGTERM: readiness failing, still serving while endpoints update"
            );
            tokio::time::sleep(delay).await;
            tracing::info!("shutting down: no new connections, finishing in-flight requests");
            handle.graceful_shutdown(Some(grace));
            let _ = stop_tx.send(true);
        });
    }

    let health = {
        let mut stop = stop_rx.clone();
        axum::serve(health_listener, health_router(app.clone())).with_graceful_shutdown(
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        )
    };
    tracing::info!(webhook = %options.listen, health = %options.health_listen, "serving");
    let mut webhook = axum_server::from_tcp_rustls(webhook_listener, tls)
        .map_err(ServeError::Serve)?
        .handle(handle);
    // A client that never finishes its headers is dropped instead of holding a connection.
    webhook
        .http_builder()
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(options.header_read_timeout);
    let webhook = webhook.serve(webhook_router(app).into_make_service());
    let (webhook, health) = tokio::join!(webhook, health);
    webhook.map_err(ServeError::Serve)?;
    health.map_err(ServeError::Serve)?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_decision_answers_500_and_is_counted() {
        let app = AppState::new(
            SharedCluster::fixed(Default::default()),
            Config::default(),
            Duration::from_secs(1),
            4,
        );
        assert_eq!(guarded(|| 7), Some(7));
        let caught: Option<()> = guarded(|| panic!("a bug in the decision"));
        assert!(caught.is_none());
        let response = panicked(&app);
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let metrics = app.metrics.render(&Default::default(), None);
        assert!(
            metrics.contains("memgraph_address_injector_handler_panics_total 1"),
            "{metrics}"
        );
    }
}
