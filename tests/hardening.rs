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

async fn wait_async(
    timeout: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> bool,
) -> Duration {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if check().await {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}");
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

#[tokio::test]
async fn broken_or_expired_certificates_make_readyz_false_and_reloads_retry() {
    let dir = tempfile::tempdir().unwrap();
    let webhook = start_webhook(
        dir.path(),
        &["--cluster-state", &state_flag(), "--cert-poll-seconds", "1"],
        &[],
    );
    let ready = async || {
        reqwest::get(webhook.health_url("/readyz"))
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(ready().await, 200);
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

    let good = std::fs::read(webhook.certs.join("tls.crt")).unwrap();
    std::fs::write(webhook.certs.join("tls.crt"), b"not a certificate").unwrap();
    wait_async(Duration::from_secs(10), "readyz to turn 503", async || {
        ready().await == 503
    })
    .await;
    let body = reqwest::get(webhook.health_url("/readyz"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        body.contains("does not match the certificate files"),
        "{body}"
    );
    // Still serving the last good certificate meanwhile.
    assert!(handshake_ok(&webhook.url("/mutate"), &webhook.certs.join("ca.crt")).await);
    std::fs::write(webhook.certs.join("tls.crt"), good).unwrap();
    wait_async(Duration::from_secs(10), "readyz to recover", async || {
        ready().await == 200
    })
    .await;

    // An expired certificate: served (TLS clients will refuse it), but not ready.
    let expired = dir.path().join("expired");
    std::fs::create_dir_all(&expired).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(webhook.certs.join("tls.key"), key.serialize_pem()).unwrap();
    std::fs::write(webhook.certs.join("tls.crt"), cert.pem()).unwrap();
    wait_async(
        Duration::from_secs(10),
        "readyz to report the expiry",
        async || {
            reqwest::get(webhook.health_url("/readyz"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
                .contains("expired")
        },
    )
    .await;
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

/// A body that sends `first` and then waits for `release` before sending `rest`.
fn stalled_body(first: Vec<u8>, rest: Vec<u8>, release: Arc<tokio::sync::Notify>) -> reqwest::Body {
    let stream = futures::stream::unfold(0u8, move |step| {
        let (first, rest, release) = (first.clone(), rest.clone(), release.clone());
        async move {
            match step {
                0 => Some((Ok::<_, std::io::Error>(first), 1)),
                1 => {
                    release.notified().await;
                    Some((Ok(rest), 2))
                }
                _ => None,
            }
        }
    });
    reqwest::Body::wrap_stream(stream)
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
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = client
        .post(&url)
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
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
