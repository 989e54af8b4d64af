//! `serve`: `POST /mutate` over HTTPS, and `/livez`, `/readyz`, `/metrics` on a plain-HTTP
//! listener. A thin shell: it reads the body, calls the pure decision against the cluster
//! view, and writes the answer.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, BodyDataStream, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::cluster::SharedCluster;
use crate::decision::{self, review, Config};
use crate::metrics::{Metrics, Rejection};

/// The API server's limit on a request body is 3 MiB, on an object ~1.5 MiB; anything past
/// 7 MiB is not an AdmissionReview.
pub const BODY_LIMIT: usize = 7 * 1024 * 1024;
/// Request bodies buffered at once, all requests together, unless `--max-buffered-body-bytes`
/// says otherwise: with the chart's 128 Mi limit, 256 in-flight 7 MiB bodies would not fit.
pub const DEFAULT_BODY_BUDGET: usize = 32 * 1024 * 1024;

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
    /// Open HTTPS connections at most; past it a new connection is closed at once.
    pub max_connections: usize,
    /// A connection (HTTP/1.1 or HTTP/2) with no request for this long is closed, so that
    /// idle connections cannot hold every slot of the cap.
    pub idle_timeout: Duration,
}

/// HTTP/2 PINGs on a quiet connection, and how long an answer may take before the peer is
/// taken for gone. They find dead peers; idle but live ones are closed by the idle timeout,
/// which PINGs do not reset (it counts requests, not bytes).
pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Unread bytes one connection may hold outside the body budget: the HTTP/1.1 read buffer,
/// and the HTTP/2 flow-control windows (what a peer may send before we read it).
pub const HTTP1_MAX_BUF: usize = 64 * 1024;
pub const HTTP2_STREAM_WINDOW: u32 = 64 * 1024;
pub const HTTP2_CONNECTION_WINDOW: u32 = 128 * 1024;
/// Admission requests on one HTTP/2 connection at once; the in-flight cap is the real limit.
pub const HTTP2_MAX_STREAMS: u32 = 64;

/// Open connections on the plain-HTTP health listener at most: probes and a scraper or two.
pub const HEALTH_MAX_CONNECTIONS: usize = 64;

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
    /// Bytes of request bodies buffered at once, in KiB permits; a body that would pass it
    /// gets a 503 as it arrives, so memory stays bounded whatever the request sizes.
    pub body_budget: Arc<tokio::sync::Semaphore>,
    pub body_budget_bytes: usize,
    /// Set once `serve` has loaded the certificate.
    pub serving: Option<Arc<crate::tls::ServingCert>>,
    /// Set on SIGTERM: /readyz fails so that the Service stops routing here, while the
    /// server keeps answering for the shutdown delay.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// Logs each decision and turns warnings and denials into Events.
    pub reporter: crate::report::Reporter,
}

impl AppState {
    /// Sets the bytes of request bodies buffered at once (`--max-buffered-body-bytes`).
    pub fn with_body_budget(mut self, bytes: usize) -> Self {
        let kib = bytes
            .div_ceil(1024)
            .min(tokio::sync::Semaphore::MAX_PERMITS);
        self.body_budget = Arc::new(tokio::sync::Semaphore::new(kib));
        self.body_budget_bytes = bytes;
        self
    }

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
            body_budget: Arc::new(tokio::sync::Semaphore::new(DEFAULT_BODY_BUDGET / 1024)),
            body_budget_bytes: DEFAULT_BODY_BUDGET,
            serving: None,
            draining: Arc::default(),
            reporter: crate::report::Reporter::log_only(),
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

/// While draining (after SIGTERM, before the listener closes), every HTTP/1.1 answer says
/// `Connection: close`, so that the API server drops its kept-alive connection now instead of
/// writing its next review into a socket that closes at the end of the delay (seen on a real
/// node: "write: broken pipe", one failed admission while a webhook pod was deleted). HTTP/2
/// connections get a GOAWAY from the graceful shutdown instead.
async fn mutate_draining(State(app): State<AppState>, request: Request) -> Response {
    let http11 = request.version() == axum::http::Version::HTTP_11;
    let draining = app.draining.load(std::sync::atomic::Ordering::Relaxed);
    let mut response = mutate(State(app), request).await;
    if draining && http11 {
        response.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    response
}

async fn mutate(State(app): State<AppState>, request: Request) -> Response {
    let started = Instant::now();
    let Ok(_permit) = app.in_flight.clone().try_acquire_owned() else {
        app.metrics.record_bad_request(Rejection::Overloaded);
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "over capacity: {} admission requests are already being decided; retry",
                app.max_in_flight
            ),
        );
    };
    if !is_json(request.headers()) {
        app.metrics.record_bad_request(Rejection::ContentType);
        return plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the request must have Content-Type: application/json (an AdmissionReview)".into(),
        );
    }
    // The header timeout does not cover the body: a client trickling it would hold an
    // in-flight slot for ever, so the body shares the request's budget.
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let read = tokio::time::timeout(
        app.request_budget,
        read_body(&app, declared, request.into_body()),
    );
    let (body, _bytes_held) = match read.await {
        Err(_) => {
            app.metrics.record_bad_request(Rejection::BodyTimeout);
            return plain(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {:?}",
                    app.request_budget
                ),
            );
        }
        Ok(Ok(read)) => read,
        Ok(Err(BodyError::TooLarge(rest))) => {
            drain(&app, started, rest).await;
            app.metrics.record_bad_request(Rejection::TooLarge);
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body exceeds {BODY_LIMIT} bytes (7 MiB); an AdmissionReview is far smaller"),
            );
        }
        Ok(Err(BodyError::OverBudget(rest))) => {
            drain(&app, started, rest).await;
            app.metrics.record_bad_request(Rejection::Overloaded);
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "over capacity: request bodies being read hold {} bytes (--max-buffered-body-bytes); retry",
                    app.body_budget_bytes
                ),
            );
        }
        Ok(Err(BodyError::Read(err))) => {
            app.metrics.record_bad_request(Rejection::Body);
            return plain(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {err}"),
            );
        }
    };
    review_body(&app, body, started).await
}

enum BodyError {
    /// Refused bodies carry what is left of them, to be drained before the answer.
    TooLarge(BodyDataStream),
    OverBudget(BodyDataStream),
    Read(axum::Error),
}

/// The body, buffered under [`BODY_LIMIT`] and paid for from the shared byte budget before
/// it is kept; the permit returned holds those bytes until it is dropped. A Content-Length
/// (what the API server sends) is paid in full up front and buffered in one allocation, so
/// that a flood is refused before it is read and the heap is not fragmented by regrowth.
async fn read_body(
    app: &AppState,
    declared: Option<usize>,
    body: Body,
) -> Result<(Bytes, Option<tokio::sync::OwnedSemaphorePermit>), BodyError> {
    use futures::StreamExt;
    let mut chunks = body.into_data_stream();
    if declared.is_some_and(|len| len > BODY_LIMIT) {
        return Err(BodyError::TooLarge(chunks));
    }
    let mut buffer: Vec<u8> = Vec::new();
    let mut held: Option<tokio::sync::OwnedSemaphorePermit> = None;
    let mut held_kib = 0usize;
    if let Some(len) = declared {
        let Some(permit) = pay(app, &mut held_kib, len) else {
            return Err(BodyError::OverBudget(chunks));
        };
        held = Some(permit);
        buffer.reserve_exact(len);
    }
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(BodyError::Read)?;
        let len = buffer.len() + chunk.len();
        if len > BODY_LIMIT {
            return Err(BodyError::TooLarge(chunks));
        }
        if len > buffer.capacity() {
            // No (or a wrong) Content-Length: grow by doubling, each step paid for first;
            // capacity, not length, is what the allocator hands out.
            let want = len.max(buffer.capacity() * 2).min(BODY_LIMIT);
            let Some(permit) = pay(app, &mut held_kib, want) else {
                return Err(BodyError::OverBudget(chunks));
            };
            match held.as_mut() {
                Some(h) => h.merge(permit),
                None => held = Some(permit),
            }
            buffer.reserve_exact(want - buffer.len());
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok((Bytes::from(buffer), held))
}

/// Permits for a buffer of `bytes`, beyond the `held_kib` already paid; `None` past the budget.
fn pay(
    app: &AppState,
    held_kib: &mut usize,
    bytes: usize,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let need_kib = bytes.div_ceil(1024).max(*held_kib);
    let more = u32::try_from(need_kib - *held_kib).unwrap_or(u32::MAX);
    let permit = app.body_budget.clone().try_acquire_many_owned(more).ok()?;
    *held_kib = need_kib;
    Some(permit)
}

/// Reads the rest of a refused body without keeping it, for what is left of the request's
/// budget: an HTTP/1.1 client still sending would otherwise never read the answer (both sides
/// blocked on full buffers, or a broken pipe when the connection closes under it).
async fn drain(app: &AppState, started: Instant, mut rest: BodyDataStream) {
    use futures::StreamExt;
    let left = app.request_budget.saturating_sub(started.elapsed());
    let _ =
        tokio::time::timeout(left, async { while let Some(Ok(_)) = rest.next().await {} }).await;
}

async fn review_body(app: &AppState, body: Bytes, started: Instant) -> Response {
    let request = match review::parse(&body) {
        Ok(request) => request,
        Err(err) => {
            app.metrics.record_bad_request(Rejection::InvalidReview);
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
        if let Some(live) = app.cluster.live_view(namespace, budget).await {
            let Some(again) = guarded(|| decision::decide(&request, &live, &app.config)) else {
                return panicked(app);
            };
            decision = again;
        }
    }
    app.metrics
        .record(decision.outcome, decision.role, started.elapsed());
    app.reporter.decided(&request, &decision);
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
    let not_listed = app.cluster.not_listed();
    if !not_listed.is_empty() {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: not listed yet: {} (the first list of each watched kind)",
                not_listed.join(", ")
            ),
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

async fn metrics(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let cache = {
        let state = app.cluster.read();
        crate::metrics::CacheStats {
            services: state.service_count(),
            nodes: state.node_count(),
            ready: app.cluster.is_ready(),
            watch_errors: app.cluster.watch_errors(),
        }
    };
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = crate::metrics::Format::negotiate(accept);
    match app.metrics.encode(format, &cache, app.serving.as_deref()) {
        Ok(text) => ([(header::CONTENT_TYPE, format.content_type())], text).into_response(),
        Err(err) => plain(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    }
}

pub fn webhook_router(app: AppState) -> Router {
    Router::new()
        .route("/mutate", post(mutate_draining))
        // Enforced when the handler reads the body, which answers with a message that says so.
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
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

    let bind = |addr: SocketAddr| {
        std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|cause| ServeError::Bind { addr, cause })
    };
    let health_listener = bind(options.health_listen)?;
    let webhook_listener = bind(options.listen)?;

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

    // The health listener gets the same defences as the webhook's: a header timeout and a
    // connection cap, so that nothing on the pod network can pile up connections on it.
    let health_handle = axum_server::Handle::new();
    {
        let health_handle = health_handle.clone();
        let mut stop = stop_rx.clone();
        let grace = options.shutdown_grace;
        tokio::spawn(async move {
            let _ = stop.wait_for(|s| *s).await;
            health_handle.graceful_shutdown(Some(grace));
        });
    }
    let idle = options.idle_timeout;
    let mut health = axum_server::from_tcp(health_listener)
        .map_err(ServeError::Serve)?
        .map(|plain| Capped::new(plain, HEALTH_MAX_CONNECTIONS, "health").idle_after(idle))
        .handle(health_handle);
    limit_http(health.http_builder(), &options);
    let health = health.serve(health_router(app.clone()).into_make_service());

    tracing::info!(webhook = %options.listen, health = %options.health_listen, max_connections = options.max_connections, "serving");
    let max_connections = options.max_connections;
    let mut webhook = axum_server::from_tcp_rustls(webhook_listener, tls)
        .map_err(ServeError::Serve)?
        .map(|tls| Capped::new(tls, max_connections, "webhook").idle_after(idle))
        .handle(handle);
    limit_http(webhook.http_builder(), &options);
    let webhook = webhook.serve(webhook_router(app).into_make_service());
    let (webhook, health) = tokio::join!(webhook, health);
    webhook.map_err(ServeError::Serve)?;
    health.map_err(ServeError::Serve)?;
    Ok(())
}

/// A client that never finishes its HTTP/1.1 headers is dropped instead of holding a
/// connection; HTTP/2 peers that stop answering PINGs are dropped too.
fn limit_http(
    builder: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    options: &ServeOptions,
) {
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .max_buf_size(HTTP1_MAX_BUF);
    // hyper's defaults let each HTTP/2 connection buffer ~1 MiB of unread body outside the
    // body budget; 64 such connections would be half the chart's memory limit.
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .keep_alive_timeout(HTTP2_KEEPALIVE_TIMEOUT)
        .initial_stream_window_size(HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(HTTP2_CONNECTION_WINDOW)
        .max_concurrent_streams(HTTP2_MAX_STREAMS);
}

/// An acceptor that caps open connections. Past the cap a new connection is closed at once,
/// before any TLS work: memory stays bounded, and the client (the API server) gets a prompt
/// error it can retry on another replica, rather than waiting behind idle keep-alive
/// connections that may never close.
#[derive(Clone)]
pub struct Capped<A> {
    inner: A,
    slots: Arc<tokio::sync::Semaphore>,
    cap: usize,
    refused: Arc<std::sync::atomic::AtomicU64>,
    listener: &'static str,
    idle: Option<Duration>,
}

impl<A> Capped<A> {
    pub fn new(inner: A, cap: usize, listener: &'static str) -> Self {
        Self {
            inner,
            slots: Arc::new(tokio::sync::Semaphore::new(cap)),
            cap,
            refused: Arc::default(),
            listener,
            idle: None,
        }
    }

    /// Closes a connection that has had no request in flight for `idle`.
    pub fn idle_after(mut self, idle: Duration) -> Self {
        self.idle = Some(idle);
        self
    }
}

impl<A, I, S> axum_server::accept::Accept<I, S> for Capped<A>
where
    A: axum_server::accept::Accept<I, Tracked<S>>,
    A::Future: Send + 'static,
    A::Stream: Send + 'static,
    A::Service: Send + 'static,
{
    type Stream = Counted<A::Stream>;
    type Service = A::Service;
    type Future =
        futures::future::BoxFuture<'static, std::io::Result<(Self::Stream, Self::Service)>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            drop(stream);
            // Logged at 1, 2, 4, 8, ... refusals: visible, but no log flood under attack.
            let refused = self
                .refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    listener = self.listener,
                    cap = self.cap,
                    refused_total = refused,
                    "connection refused: the connection cap is reached"
                );
            }
            return Box::pin(std::future::ready(Err(std::io::Error::other(
                "the connection cap is reached",
            ))));
        };
        let activity = Arc::new(Activity::new());
        let accepted = self.inner.accept(
            stream,
            Tracked {
                inner: service,
                activity: activity.clone(),
            },
        );
        let idle = self.idle;
        Box::pin(async move {
            let (stream, service) = accepted.await?;
            let idle = idle.map(|limit| IdleClock {
                sleep: Box::pin(tokio::time::sleep(limit)),
                activity,
                limit,
            });
            Ok((
                Counted {
                    inner: stream,
                    _slot: slot,
                    idle,
                },
                service,
            ))
        })
    }
}

/// What a connection is doing: requests being answered, and when the last one ended.
#[derive(Debug)]
pub struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    last: std::sync::Mutex<Instant>,
}

impl Activity {
    fn new() -> Self {
        Self {
            in_flight: Default::default(),
            last: std::sync::Mutex::new(Instant::now()),
        }
    }

    fn last(&self) -> Instant {
        *self.last.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Holds a request as in flight on its connection until dropped (answered or abandoned).
struct Busy(Arc<Activity>);

impl Busy {
    fn new(activity: Arc<Activity>) -> Self {
        activity
            .in_flight
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Self(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        *self.0.last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// A connection's service, counting its requests for the idle timeout.
#[derive(Clone)]
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S, R> tower_service::Service<R> for Tracked<S>
where
    S: tower_service::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let busy = Busy::new(self.activity.clone());
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answered = answer.await;
            drop(busy);
            answered
        })
    }
}

/// The idle timeout of one connection: a timer re-armed from its last request.
struct IdleClock {
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    activity: Arc<Activity>,
    limit: Duration,
}

impl IdleClock {
    /// `None` when the connection has been idle for the limit; else when to look again.
    fn next_check(&self) -> Option<Instant> {
        let now = Instant::now();
        if self
            .activity
            .in_flight
            .load(std::sync::atomic::Ordering::Acquire)
            > 0
        {
            return Some(now + self.limit);
        }
        let due = self.activity.last() + self.limit;
        (due > now).then_some(due)
    }
}

/// A connection holding one slot of its listener's cap until it is dropped.
pub struct Counted<T> {
    inner: T,
    _slot: tokio::sync::OwnedSemaphorePermit,
    idle: Option<IdleClock>,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counted<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        // The server always waits to read on an open connection, so the timer is polled
        // here; at the limit the read ends (EOF) and hyper closes the connection.
        if let Some(clock) = self.idle.as_mut() {
            while clock.sleep.as_mut().poll(cx).is_ready() {
                match clock.next_check() {
                    Some(at) => clock.sleep.as_mut().reset(at.into()),
                    None => return std::task::Poll::Ready(Ok(())),
                }
            }
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
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

    #[tokio::test]
    async fn while_draining_http11_answers_ask_to_close_the_connection() {
        let app = AppState::new(
            SharedCluster::fixed(Default::default()),
            Config::default(),
            Duration::from_secs(1),
            4,
        );
        let review = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","operation":"DELETE"}}"#;
        let request = |version| {
            axum::http::Request::post("/mutate")
                .version(version)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(&review[..]))
                .unwrap()
        };
        let before =
            mutate_draining(State(app.clone()), request(axum::http::Version::HTTP_11)).await;
        assert_eq!(before.status(), StatusCode::OK);
        assert!(before.headers().get(header::CONNECTION).is_none());

        app.draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let during =
            mutate_draining(State(app.clone()), request(axum::http::Version::HTTP_11)).await;
        assert_eq!(
            during.status(),
            StatusCode::OK,
            "still answered while draining"
        );
        assert_eq!(during.headers()[header::CONNECTION], "close");
        // HTTP/2 has no Connection header; its connections get a GOAWAY instead.
        let h2 = mutate_draining(State(app), request(axum::http::Version::HTTP_2)).await;
        assert!(h2.headers().get(header::CONNECTION).is_none());
    }
}
