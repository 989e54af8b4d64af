//! The HTTPS ceiling for scripts/bench: the least a webhook on our TLS stack can do per
//! request (axum + axum-server/rustls with ring, HTTP/1.1 and HTTP/2, the same certificate,
//! a multi-threaded tokio runtime with default workers) — read the body, answer fixed bytes.
//! Ours is measured against it in the same run, so the ratio holds whatever the machine.
//!
//!   ceiling_server LISTEN CERT KEY RESPONSE_FILE

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use axum_server::tls_rustls::RustlsConfig;

async fn mutate(State(answer): State<Bytes>, request: Request) -> Response {
    match axum::body::to_bytes(request.into_body(), 7 * 1024 * 1024).await {
        Ok(_) => (
            [(header::CONTENT_TYPE, "application/json")],
            Body::from(answer),
        )
            .into_response(),
        Err(_) => axum::http::StatusCode::BAD_REQUEST.into_response(),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, cert, key, response] = args.as_slice() else {
        return Err("usage: ceiling_server LISTEN CERT KEY RESPONSE_FILE".into());
    };
    let listen: SocketAddr = listen.parse()?;
    let answer = Bytes::from(std::fs::read(response)?);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                rustls::pki_types::pem::PemObject::pem_file_iter(cert)?
                    .collect::<Result<Vec<_>, _>>()?,
                rustls::pki_types::pem::PemObject::from_pem_file(key)?,
            )?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let tls = RustlsConfig::from_config(Arc::new(config));
        let app = Router::new()
            .route("/mutate", post(mutate))
            .with_state(answer);
        axum_server::bind_rustls(listen, tls)
            .serve(app.into_make_service())
            .await?;
        Ok(())
    })
}
