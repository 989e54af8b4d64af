//! What a hostile or careless client cannot do to `serve` (the audit of issue 18): idle
//! HTTP/2 and HTTP/1.1 connections cannot hold the connection cap, bad limits are refused at
//! start, a certificate reload that does not name the Service (or does not chain to the CA)
//! is not served, a rotated client CA is picked up, and a flood of 7 MiB reviews stays
//! inside the chart's memory limit.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use support::*;

fn state_flag() -> String {
    fixture("states/nodeport.yaml")
        .to_string_lossy()
        .into_owned()
}

fn review_body() -> Vec<u8> {
    review_of(&yaml_fixture("pods/data-3x.yaml"), "memgraph", "hostile")
        .to_string()
        .into_bytes()
}

fn tls_config(ca_pem: &[u8], alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

async fn tls_stream(
    port: u16,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| std::io::Error::other("handshake timed out"))?
}

/// An HTTP/2 connection that has answered one review; the task ends when the connection
/// closes.
async fn h2_connection_after_one_review(
    port: u16,
    ca_pem: &[u8],
    body: &[u8],
) -> Result<H2, String> {
    let tls = tls_stream(port, tls_config(ca_pem, &[b"h2"]))
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = http::Request::post(format!("https://127.0.0.1:{port}/mutate"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap();
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(response.status(), 200);
    let answer = response.into_body().collect().await.unwrap().to_bytes();
    assert!(answer.starts_with(b"{"), "{answer:?}");
    // The sender is kept: hyper would close a connection without one. Open and quiet is
    // what an idle API server connection is.
    Ok(H2 {
        _sender: sender,
        driver,
    })
}

struct H2 {
    _sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    driver: tokio::task::JoinHandle<()>,
}

/// HTTP/2 connections that have served a review and then go quiet are closed after the idle
/// timeout (PINGs do not keep them), and so do HTTP/1.1 keep-alive connections: a full cap
/// of idle connections frees itself, and new admissions get through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_so_they_cannot_hold_the_cap() {
    const CAP: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let webhook = start_webhook(
        dir.path(),
        &[
            "--cluster-state",
            &state_flag(),
            "--max-connections",
            &CAP.to_string(),
            "--idle-timeout-seconds",
            "1",
        ],
        &[],
    );
    let ca = webhook.ca_pem();
    let body = review_body();
    let mut drivers = Vec::new();
    for _ in 0..CAP - 1 {
        drivers.push(
            h2_connection_after_one_review(webhook.port, &ca, &body)
                .await
                .unwrap(),
        );
    }
    // One HTTP/1.1 keep-alive connection after one request.
    let mut h1 = tls_stream(webhook.port, tls_config(&ca, &[b"http/1.1"]))
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let head = format!(
        "POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    h1.write_all(head.as_bytes()).await.unwrap();
    h1.write_all(&body).await.unwrap();
    let mut first = vec![0u8; 64 * 1024];
    let n = h1.read(&mut first).await.unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &first[..n]);

    // The cap is full: a new connection is refused at once.
    assert!(
        h2_connection_after_one_review(webhook.port, &ca, &body)
            .await
            .is_err(),
        "the cap of {CAP} is full"
    );

    // Within a few seconds every idle connection is closed by the server.
    let started = Instant::now();
    for h2 in drivers {
        tokio::time::timeout(Duration::from_secs(10), h2.driver)
            .await
            .expect("an idle HTTP/2 connection was closed by the server")
            .unwrap();
    }
    let mut rest = Vec::new();
    let eof = tokio::time::timeout(Duration::from_secs(10), h1.read_to_end(&mut rest)).await;
    assert!(
        eof.is_ok(),
        "an idle HTTP/1.1 keep-alive connection was closed by the server"
    );
    let took = started.elapsed();
    eprintln!("idle connections closed {took:.1?} after they went quiet (idle timeout 1 s)");
    assert!(
        took >= Duration::from_millis(500),
        "{took:?}: closed too early"
    );

    // And admissions get through again.
    h2_connection_after_one_review(webhook.port, &ca, &body)
        .await
        .expect("a slot is free again");
}

/// A connection busy with a slow request is not idle: the idle timeout counts requests,
/// not bytes, and a request in flight keeps its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_keeps_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let webhook = start_webhook(
        dir.path(),
        &[
            "--cluster-state",
            &state_flag(),
            "--idle-timeout-seconds",
            "1",
            "--request-budget-ms",
            "5000",
        ],
        &[],
    );
    let ca = webhook.ca_pem();
    let body = review_body();
    let mut h1 = tls_stream(webhook.port, tls_config(&ca, &[b"http/1.1"]))
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let head = format!(
        "POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    h1.write_all(head.as_bytes()).await.unwrap();
    // The body arrives 2.5 s later: longer than the idle timeout, inside the budget.
    h1.write_all(&body[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    h1.write_all(&body[10..]).await.unwrap();
    let mut answer = vec![0u8; 64 * 1024];
    let n = h1.read(&mut answer).await.unwrap();
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        &answer[..n]
    );
}

/// Limits of 0 would refuse every request while the pod looks healthy: each is refused at
/// start with a line naming the flag.
#[test]
fn zero_limits_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    for flag in [
        "--request-budget-ms",
        "--max-in-flight",
        "--max-connections",
        "--idle-timeout-seconds",
    ] {
        let out = std::process::Command::new(BIN)
            .args(["serve", "--cluster-state", &state_flag(), flag, "0"])
            .arg("--tls-cert")
            .arg(dir.path().join("missing.crt"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag} 0 was accepted");
        assert!(
            stderr.contains(&format!("{flag} must be at least 1")),
            "{flag}: {stderr}"
        );
    }
}
