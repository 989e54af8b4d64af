//! Production defences of `serve`, over real TLS on 127.0.0.1: certificate rotation (files
//! replaced in place, and the kubelet's `..data` symlink swap) under load, readiness on
//! certificate health, client authentication, the in-flight cap, the header timeout, SIGTERM
//! with requests in flight, and a bounded load with its memory.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use serde_json::Value;
use support::*;

fn state_flag() -> String {
    fixture("states/nodeport.yaml")
        .to_string_lossy()
        .into_owned()
}

fn review_body() -> Vec<u8> {
    review_of(&yaml_fixture("pods/data-3x.yaml"), "memgraph", "load")
        .to_string()
        .into_bytes()
}

/// A client that trusts several CAs (the old and the new during a rotation).
fn client_trusting(cas: &[&Path]) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .timeout(Duration::from_secs(10));
    for ca in cas {
        builder = builder.add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap(),
        );
    }
    builder.build().unwrap()
}

/// A fresh client (new connections, so a new handshake) that trusts only `ca`.
async fn handshake_ok(url: &str, ca: &Path) -> bool {
    client_trusting(&[ca]).get(url).send().await.is_ok()
}

async fn ok_review(client: &reqwest::Client, url: &str, body: &[u8]) -> bool {
    match client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
    {
        Ok(r) if r.status() == 200 => r
            .json::<Value>()
            .await
            .is_ok_and(|v| v["response"]["allowed"] == true),
        _ => false,
    }
}

/// Runs `tasks` loops of reviews until `stop`; returns (ok, failed).
fn load(
    client: reqwest::Client,
    url: String,
    tasks: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(u64, u64)> {
    tokio::spawn(async move {
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let body = Arc::new(review_body());
        let mut handles = Vec::new();
        for _ in 0..tasks {
            let (client, url, body, ok, failed, stop) = (
                client.clone(),
                url.clone(),
                body.clone(),
                ok.clone(),
                failed.clone(),
                stop.clone(),
            );
            handles.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if ok_review(&client, &url, &body).await {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for h in handles {
            let _ = h.await;
        }
        (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
    })
}

async fn metrics(webhook: &Webhook) -> String {
    reqwest::get(webhook.health_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn in_place_rotation_under_load_fails_no_request_and_is_picked_up_within_10s() {
    let dir = tempfile::tempdir().unwrap();
    let webhook = start_webhook(
        dir.path(),
        &["--cluster-state", &state_flag(), "--cert-poll-seconds", "5"],
        &[],
    );
    let old_ca = webhook.certs.join("ca.crt");
    let next = dir.path().join("next");
    gen_certs(&next, &["127.0.0.1"]);
    let new_ca = next.join("ca.crt");
    let url = webhook.url("/mutate");
    assert!(handshake_ok(&url, &old_ca).await);
    assert!(!handshake_ok(&url, &new_ca).await);

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let running = load(
        client_trusting(&[&old_ca, &new_ca]),
        url.clone(),
        8,
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Replace the files in place, as `kubectl cp` or a config-management tool would.
    std::fs::copy(next.join("tls.crt"), webhook.certs.join("tls.crt")).unwrap();
    std::fs::copy(next.join("tls.key"), webhook.certs.join("tls.key")).unwrap();
    let took = wait_async(
        Duration::from_secs(10),
        "the new certificate to be served",
        async || handshake_ok(&url, &new_ca).await,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = running.await.unwrap();
    eprintln!(
        "in-place rotation picked up after {took:?}; {ok} requests ok, {failed} failed during it"
    );
    assert_eq!(failed, 0);
    assert!(ok > 0);
    assert!(
        !handshake_ok(&url, &old_ca).await,
        "old certificate still served"
    );
    assert!(metrics(&webhook)
        .await
        .contains(r#"memgraph_address_injector_certificate_reloads_total{result="ok"} 1"#));
}

#[tokio::test]
async fn secret_volume_symlink_swap_is_picked_up() {
    // The layout the kubelet gives a Secret volume: tls.crt -> ..data/tls.crt, ..data -> ..v1.
    let dir = tempfile::tempdir().unwrap();
    let volume = dir.path().join("volume");
    let v1 = volume.join("..v1");
    gen_certs(&v1, &["127.0.0.1"]);
    let v2 = volume.join("..v2");
    gen_certs(&v2, &["127.0.0.1"]);
    std::os::unix::fs::symlink("..v1", volume.join("..data")).unwrap();
    for f in ["tls.crt", "tls.key", "ca.crt"] {
        std::os::unix::fs::symlink(format!("..data/{f}"), volume.join(f)).unwrap();
    }
    let certs_link = dir.path().join("certs");
    std::os::unix::fs::symlink(&volume, &certs_link).unwrap();
    let webhook = start_webhook(
        dir.path(),
        &[
            "--cluster-state",
            &state_flag(),
            "--cert-poll-seconds",
            "30",
        ],
        &[],
    );
    let url = webhook.url("/mutate");
    assert!(handshake_ok(&url, &v1.join("ca.crt")).await);
    // The atomic swap: a new link renamed over ..data.
    std::os::unix::fs::symlink("..v2", volume.join("..data_tmp")).unwrap();
    std::fs::rename(volume.join("..data_tmp"), volume.join("..data")).unwrap();
    // The poll is 30 s: only the watch can pick it up this fast.
    let took = wait_async(
        Duration::from_secs(10),
        "the swapped certificate",
        async || handshake_ok(&url, &v2.join("ca.crt")).await,
    )
    .await;
    eprintln!("symlink swap picked up after {took:?}");
}

/// Polls /readyz every 50 ms until dropped; counts answers other than 200.
struct ReadyWatch {
    not_ready: Arc<AtomicU64>,
    polls: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl ReadyWatch {
    fn start(url: String) -> ReadyWatch {
        let not_ready = Arc::new(AtomicU64::new(0));
        let polls = Arc::new(AtomicU64::new(0));
        let task = {
            let (not_ready, polls) = (not_ready.clone(), polls.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                loop {
                    let status = client.get(&url).send().await.map(|r| r.status().as_u16());
                    polls.fetch_add(1, Ordering::Relaxed);
                    if status.ok() != Some(200) {
                        not_ready.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        ReadyWatch {
            not_ready,
            polls,
            task,
        }
    }

    /// (polls, answers other than 200)
    fn stop(self) -> (u64, u64) {
        self.task.abort();
        (
            self.polls.load(Ordering::Relaxed),
            self.not_ready.load(Ordering::Relaxed),
        )
    }
}

const RELOAD_ERRORS: &str =
    r#"memgraph_address_injector_certificate_reloads_total{result="error"}"#;
const RELOADS_OK: &str = r#"memgraph_address_injector_certificate_reloads_total{result="ok"}"#;

async fn reload_errors(webhook: &Webhook) -> f64 {
    webhook
        .metric(RELOAD_ERRORS)
        .await
        .expect("reload error counter")
}

/// Waits until the reload error counter passes `above`: the bad update was seen and refused.
async fn wait_reload_error(webhook: &Webhook, above: f64, what: &str) {
    wait_async(Duration::from_secs(10), what, async || {
        reload_errors(webhook).await > above
    })
    .await;
}

#[tokio::test]
async fn broken_certificate_updates_under_load_keep_serving_and_ready() {
    let dir = tempfile::tempdir().unwrap();
    let webhook = start_webhook(
        dir.path(),
        &["--cluster-state", &state_flag(), "--cert-poll-seconds", "1"],
        &[],
    );
    let old_ca = webhook.certs.join("ca.crt");
    let next = dir.path().join("next");
    gen_certs(&next, &["127.0.0.1"]);
    let new_ca = next.join("ca.crt");
    let url = webhook.url("/mutate");
    let ready = ReadyWatch::start(webhook.health_url("/readyz"));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let running = load(
        client_trusting(&[&old_ca, &new_ca]),
        url.clone(),
        8,
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(reload_errors(&webhook).await, 0.0);

    // 1. Garbage where the certificate should be.
    std::fs::write(webhook.certs.join("tls.crt"), b"not a certificate").unwrap();
    wait_reload_error(&webhook, 0.0, "the garbage certificate to be refused").await;
    assert!(
        handshake_ok(&url, &old_ca).await,
        "the last good pair stopped serving"
    );

    // 2. The new certificate next to the old key.
    std::fs::copy(next.join("tls.crt"), webhook.certs.join("tls.crt")).unwrap();
    let before = reload_errors(&webhook).await;
    wait_reload_error(&webhook, before, "the mismatched pair to be refused").await;
    assert!(
        handshake_ok(&url, &old_ca).await,
        "the last good pair stopped serving"
    );
    assert!(
        !handshake_ok(&url, &new_ca).await,
        "a mismatched pair was served"
    );
    // Retried by the poll while the files stay bad (every second here).
    let before = reload_errors(&webhook).await;
    wait_reload_error(&webhook, before, "the poll to retry").await;
    assert!(webhook
        .log_text()
        .contains("does not belong to the certificate"));

    // 3. The key follows: the good pair is picked up.
    std::fs::copy(next.join("tls.key"), webhook.certs.join("tls.key")).unwrap();
    let took = wait_async(
        Duration::from_secs(10),
        "the new certificate to be served",
        async || handshake_ok(&url, &new_ca).await,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = running.await.unwrap();
    let (polls, not_ready) = ready.stop();
    eprintln!(
        "broken updates: {ok} reviews ok, {failed} failed; /readyz {polls} polls, {not_ready} not 200; good pair picked up after {took:?}"
    );
    assert_eq!(failed, 0);
    assert!(ok > 0);
    assert!(polls > 10, "{polls}");
    assert_eq!(
        not_ready, 0,
        "/readyz failed during a bad certificate update"
    );
    assert!(
        !handshake_ok(&url, &old_ca).await,
        "old certificate still served"
    );
    assert_eq!(webhook.metric(RELOADS_OK).await, Some(1.0));
}

#[tokio::test]
async fn a_half_swapped_secret_volume_is_refused_then_the_full_swap_is_served() {
    // The kubelet's Secret volume: tls.crt -> ..data/tls.crt, ..data -> ..vN, swapped by
    // renaming a new ..data link. ..v2 is a half swap: the new certificate, the old key.
    let dir = tempfile::tempdir().unwrap();
    let volume = dir.path().join("volume");
    let (v1, v2, v3) = (
        volume.join("..v1"),
        volume.join("..v2"),
        volume.join("..v3"),
    );
    gen_certs(&v1, &["127.0.0.1"]);
    gen_certs(&v3, &["127.0.0.1"]);
    std::fs::create_dir_all(&v2).unwrap();
    std::fs::copy(v3.join("tls.crt"), v2.join("tls.crt")).unwrap();
    std::fs::copy(v3.join("ca.crt"), v2.join("ca.crt")).unwrap();
    std::fs::copy(v1.join("tls.key"), v2.join("tls.key")).unwrap();
    std::os::unix::fs::symlink("..v1", volume.join("..data")).unwrap();
    for f in ["tls.crt", "tls.key", "ca.crt"] {
        std::os::unix::fs::symlink(format!("..data/{f}"), volume.join(f)).unwrap();
    }
    std::os::unix::fs::symlink(&volume, dir.path().join("certs")).unwrap();
    let swap = |to: &str| {
        std::os::unix::fs::symlink(to, volume.join("..data_tmp")).unwrap();
        std::fs::rename(volume.join("..data_tmp"), volume.join("..data")).unwrap();
    };
    let webhook = start_webhook(
        dir.path(),
        &["--cluster-state", &state_flag(), "--cert-poll-seconds", "1"],
        &[],
    );
    let url = webhook.url("/mutate");
    let (old_ca, new_ca) = (v1.join("ca.crt"), v3.join("ca.crt"));
    let ready = ReadyWatch::start(webhook.health_url("/readyz"));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let running = load(
        client_trusting(&[&old_ca, &new_ca]),
        url.clone(),
        8,
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    swap("..v2");
    wait_reload_error(&webhook, 0.0, "the half swap to be refused").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        handshake_ok(&url, &old_ca).await,
        "the last good pair stopped serving"
    );
    assert!(
        !handshake_ok(&url, &new_ca).await,
        "a mismatched pair was served"
    );

    swap("..v3");
    let took = wait_async(
        Duration::from_secs(10),
        "the full swap to be served",
        async || handshake_ok(&url, &new_ca).await,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = running.await.unwrap();
    let (polls, not_ready) = ready.stop();
    eprintln!(
        "half swap: {ok} reviews ok, {failed} failed; /readyz {polls} polls, {not_ready} not 200; full swap served after {took:?}"
    );
    assert_eq!(failed, 0);
    assert!(ok > 0);
    assert_eq!(not_ready, 0, "/readyz failed during a half-swapped Secret");
    assert_eq!(webhook.metric(RELOADS_OK).await, Some(1.0));
}

fn write_self_signed(dir: &Path, not_before: (i32, u8, u8), not_after: (i32, u8, u8)) {
    std::fs::create_dir_all(dir).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
    params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("ca.crt"), cert.pem()).unwrap();
}

#[tokio::test]
async fn an_expired_served_certificate_makes_readyz_fail_until_a_good_one_arrives() {
    let dir = tempfile::tempdir().unwrap();
    // Started with an expired pair: served (TLS clients will refuse it), but not ready.
    write_self_signed(&dir.path().join("certs"), (2020, 1, 1), (2021, 1, 1));
    let webhook = start_webhook(
        dir.path(),
        &["--cluster-state", &state_flag(), "--cert-poll-seconds", "1"],
        &[],
    );
    let readyz = async || {
        let r = reqwest::get(webhook.health_url("/readyz")).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    let (status, body) = readyz().await;
    assert_eq!(status, 503);
    assert!(
        body.contains("served TLS certificate has expired"),
        "{body}"
    );

    // A good pair replaces it and readiness returns.
    let next = dir.path().join("next");
    gen_certs(&next, &["127.0.0.1"]);
    std::fs::copy(next.join("tls.key"), webhook.certs.join("tls.key")).unwrap();
    std::fs::copy(next.join("tls.crt"), webhook.certs.join("tls.crt")).unwrap();
    wait_async(Duration::from_secs(10), "readyz to recover", async || {
        readyz().await.0 == 200
    })
    .await;
    let expiry = webhook
        .metric("memgraph_address_injector_serving_certificate_expiry_timestamp_seconds")
        .await
        .expect("expiry gauge") as i64;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (now + 364 * 86400..=now + 366 * 86400).contains(&expiry),
        "{expiry}"
    );

    // An update to a pair that is expired, or not valid yet, is refused: the working pair
    // keeps serving and readiness holds.
    for (name, from, to) in [
        ("expired", (2020, 1, 1), (2021, 1, 1)),
        ("future", (2090, 1, 1), (2091, 1, 1)),
    ] {
        let bad = dir.path().join(name);
        write_self_signed(&bad, from, to);
        let before = reload_errors(&webhook).await;
        std::fs::copy(bad.join("tls.key"), webhook.certs.join("tls.key")).unwrap();
        std::fs::copy(bad.join("tls.crt"), webhook.certs.join("tls.crt")).unwrap();
        wait_reload_error(&webhook, before, "the invalid pair to be refused").await;
        assert_eq!(readyz().await.0, 200, "{name}");
        assert!(handshake_ok(&webhook.url("/mutate"), &next.join("ca.crt")).await);
    }
    assert!(webhook.log_text().contains("is not valid yet"));
}

#[tokio::test]
async fn client_ca_requires_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    std::fs::write(dir.path().join("client-ca.crt"), ca.pem()).unwrap();
    let client_key = rcgen::KeyPair::generate().unwrap();
    let mut client_params =
        rcgen::CertificateParams::new(vec!["kube-apiserver".to_string()]).unwrap();
    client_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client_params.signed_by(&client_key, &ca).unwrap();

    let client_ca = dir
        .path()
        .join("client-ca.crt")
        .to_string_lossy()
        .into_owned();
    let webhook = start_webhook(
        dir.path(),
        &["--cluster-state", &state_flag(), "--client-ca", &client_ca],
        &[],
    );
    let url = webhook.url("/mutate");
    let body = review_body();
    let anonymous = https_client(&webhook.ca_pem());
    assert!(
        !ok_review(&anonymous, &url, &body).await,
        "a client without a certificate was served"
    );
    let identity = reqwest::Identity::from_pem(
        format!("{}{}", client_cert.pem(), client_key.serialize_pem()).as_bytes(),
    )
    .unwrap();
    let authenticated = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&webhook.ca_pem()).unwrap())
        .identity(identity)
        .build()
        .unwrap();
    assert!(ok_review(&authenticated, &url, &body).await);
}

#[tokio::test]
async fn past_the_in_flight_cap_requests_get_a_clear_503() {
    let dir = tempfile::tempdir().unwrap();
    let webhook = start_webhook(
        dir.path(),
        &["--cluster-state", &state_flag(), "--max-in-flight", "1"],
        &[],
    );
    let client = https_client(&webhook.ca_pem());
    let url = webhook.url("/mutate");
    let body = review_body();
    let release = Arc::new(tokio::sync::Notify::new());
    let (a, b) = body.split_at(body.len() / 2);
    let held = {
        let request = client
            .post(&url)
            .header("content-type", "application/json")
            .body(stalled_body(a.to_vec(), b.to_vec(), release.clone()));
        tokio::spawn(async move { request.send().await.map(|r| r.status().as_u16()) })
    };
    // Until the held request has its slot (TLS and headers can take a while on a loaded
    // machine), another one may still get it and be answered: after a head start, ask
    // again until refused.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let second = loop {
        let second = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert!(
            !held.is_finished(),
            "the held request lost the race for the one slot"
        );
        if second.status() != 200 || tokio::time::Instant::now() > deadline {
            break second;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(second.status(), 503);
    assert!(second.text().await.unwrap().contains("over capacity"));
    release.notify_one();
    assert_eq!(held.await.unwrap().unwrap(), 200);
    assert!(ok_review(&client, &url, &body).await);
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let webhook = start_webhook(
        dir.path(),
        &[
            "--cluster-state",
            &state_flag(),
            "--header-read-timeout-seconds",
            "1",
        ],
        &[],
    );
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&webhook.ca_pem()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", webhook.port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(b"POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(8), tls.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection was still open after 8 s");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish() {
    let dir = tempfile::tempdir().unwrap();
    let mut webhook = start_webhook(dir.path(), &["--cluster-state", &state_flag()], &[]);
    let client = https_client(&webhook.ca_pem());
    let url = webhook.url("/mutate");
    let body = review_body();
    let (a, b) = body.split_at(body.len() / 2);
    let release = Arc::new(tokio::sync::Notify::new());
    let mut in_flight = Vec::new();
    for _ in 0..16 {
        let request = client
            .post(&url)
            .header("content-type", "application/json")
            .body(stalled_body(a.to_vec(), b.to_vec(), release.clone()));
        in_flight.push(tokio::spawn(async move {
            let response = request.send().await.map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let value: Value = response.json().await.map_err(|e| e.to_string())?;
            Ok::<_, String>((status, value["response"]["allowed"] == true))
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // SIGTERM while 16 requests are half sent.
    let pid = webhook.process.pid().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    release.notify_waiters();
    for handle in in_flight {
        assert_eq!(handle.await.unwrap(), Ok((200, true)));
    }
    let status = webhook
        .process
        .terminate(Duration::from_secs(10))
        .expect("exits");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn bounded_load_has_no_errors_and_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let webhook = start_webhook(dir.path(), &["--cluster-state", &state_flag()], &[]);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let running = load(
        https_client(&webhook.ca_pem()),
        webhook.url("/mutate"),
        32,
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = running.await.unwrap();
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", webhook.process.pid())).unwrap();
    let hwm_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap();
    eprintln!(
        "32 concurrent TLS clients for 3 s: {ok} reviews ok, {failed} failed, peak RSS {} MiB",
        hwm_kib / 1024
    );
    assert_eq!(failed, 0);
    assert!(ok > 100, "{ok}");
    assert!(hwm_kib < 64 * 1024, "peak RSS {hwm_kib} KiB");
}

#[tokio::test]
async fn a_body_that_never_arrives_times_out_and_frees_its_slot() {
    let dir = tempfile::tempdir().unwrap();
    let webhook = start_webhook(
        dir.path(),
        &[
            "--cluster-state",
            &state_flag(),
            "--max-in-flight",
            "1",
            "--request-budget-ms",
            "500",
        ],
        &[],
    );
    let client = https_client(&webhook.ca_pem());
    let url = webhook.url("/mutate");
    let body = review_body();
    let never = Arc::new(tokio::sync::Notify::new());
    let response = client
        .post(&url)
        .header("content-type", "application/json")
        .body(stalled_body(
            body[..100].to_vec(),
            body[100..].to_vec(),
            never,
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 408);
    assert!(response.text().await.unwrap().contains("did not arrive"));
    assert!(
        ok_review(&client, &url, &body).await,
        "the slot was not freed"
    );
}

fn vm_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap()
}

fn tls_connector(ca_pem: &[u8]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn past_the_connection_cap_new_connections_are_closed_at_once() {
    const CAP: usize = 16;
    const EXCESS: usize = 400;
    let dir = tempfile::tempdir().unwrap();
    let webhook = start_webhook(
        dir.path(),
        &[
            "--cluster-state",
            &state_flag(),
            "--max-connections",
            &CAP.to_string(),
        ],
        &[],
    );
    let connector = tls_connector(&webhook.ca_pem());
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let connect = async || {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", webhook.port))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), connector.connect(name.clone(), tcp)).await
    };
    // Fill the cap with idle, handshaken TLS connections.
    let mut idle = Vec::new();
    for _ in 0..CAP {
        idle.push(
            connect()
                .await
                .expect("handshake in time")
                .expect("handshake"),
        );
    }
    let rss_full = vm_kib(webhook.process.pid(), "VmRSS:");
    // Many more: each is closed before the handshake, promptly (not after a timeout).
    let started = Instant::now();
    let mut refused = 0;
    let mut excess = Vec::new();
    for _ in 0..EXCESS {
        match connect().await {
            Ok(Ok(stream)) => excess.push(stream),
            Ok(Err(_)) => refused += 1,
            Err(_) => panic!("an excess connection was left hanging for 5 s"),
        }
    }
    let took = started.elapsed();
    let rss_after = vm_kib(webhook.process.pid(), "VmRSS:");
    eprintln!(
        "cap {CAP}: {refused}/{EXCESS} excess connections refused in {took:?}; RSS {} KiB with the cap full, {} KiB after",
        rss_full, rss_after
    );
    assert_eq!(refused, EXCESS);
    assert!(
        rss_after < rss_full + 4 * 1024,
        "RSS grew {rss_full} -> {rss_after} KiB"
    );
    // Admissions fail while the cap is full, and succeed once connections close.
    let client = https_client(&webhook.ca_pem());
    let url = webhook.url("/mutate");
    let body = review_body();
    assert!(!ok_review(&client, &url, &body).await);
    drop(idle);
    let client = https_client(&webhook.ca_pem());
    wait_async(Duration::from_secs(5), "a slot to free up", async || {
        ok_review(&client, &url, &body).await
    })
    .await;
    assert!(webhook.log_text().contains("connection cap is reached"));
}

#[tokio::test]
async fn the_health_listener_drops_slow_headers_and_caps_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let webhook = start_webhook(
        dir.path(),
        &[
            "--cluster-state",
            &state_flag(),
            "--header-read-timeout-seconds",
            "1",
        ],
        &[],
    );
    let addr = ("127.0.0.1", webhook.health_port);
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(8), slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection was still open after 8 s");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // 64 connections fill the cap; the next is closed without an answer.
    let mut held = Vec::new();
    for _ in 0..64 {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        // A complete request keeps the connection past the header timeout (keep-alive).
        c.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut first = [0u8; 12];
        c.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"HTTP/1.1 200");
        held.push(c);
    }
    let mut over = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = over
        .write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), over.read_to_end(&mut answer)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "past the cap: {read:?} {:?}",
        String::from_utf8_lossy(&answer)
    );
    drop(held);
    wait_async(
        Duration::from_secs(5),
        "the health listener to answer again",
        async || reqwest::get(webhook.health_url("/livez")).await.is_ok(),
    )
    .await;
}
