//! The serving certificate, kept in step with its files without a restart: a file watch for
//! prompt pickup (in-place replacement and the kubelet's `..data` symlink swap of Secret
//! volumes) plus a periodic poll that compares bytes, in case an event is missed. A reload
//! that fails (garbage, a key that does not match, a half-swapped Secret, a certificate not
//! valid now) is logged, counted and retried by the poll; the last good pair keeps serving
//! and readiness does not change, so a bad Secret update never takes every replica out.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum_server::tls_rustls::RustlsConfig;
use notify::Watcher;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::certs::CertError;

#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
}

/// What readiness and metrics need to know about the certificate being served.
#[derive(Debug, Default)]
pub struct ServingCert {
    not_before: AtomicI64,
    not_after: AtomicI64,
    reloads: AtomicU64,
    reload_errors: AtomicU64,
}

impl ServingCert {
    /// Expiry of the served certificate, Unix seconds.
    pub fn not_after(&self) -> i64 {
        self.not_after.load(Ordering::Relaxed)
    }

    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    pub fn reload_errors(&self) -> u64 {
        self.reload_errors.load(Ordering::Relaxed)
    }

    /// Why the server should not be ready, if it should not: only a served certificate that
    /// clients must refuse. A failed reload is not a reason, since the last good pair still
    /// serves; it shows in the log and the reload error counter.
    pub fn problem(&self, now_unix: i64) -> Option<String> {
        validity_problem(
            self.not_before.load(Ordering::Relaxed),
            self.not_after(),
            now_unix,
        )
        .map(|p| format!("the served TLS certificate {p}"))
    }

    fn set_validity(&self, loaded: &Loaded) {
        self.not_before.store(loaded.not_before, Ordering::Relaxed);
        self.not_after.store(loaded.not_after, Ordering::Relaxed);
    }
}

fn validity_problem(not_before: i64, not_after: i64, now_unix: i64) -> Option<String> {
    if now_unix >= not_after {
        Some(format!("has expired (not after {not_after}, Unix seconds)"))
    } else if now_unix < not_before {
        Some(format!(
            "is not valid yet (not before {not_before}, Unix seconds)"
        ))
    } else {
        None
    }
}

pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

struct Loaded {
    config: Arc<rustls::ServerConfig>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    not_before: i64,
    not_after: i64,
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|cause| CertError::Read {
        path: path.to_path_buf(),
        cause,
    })
}

/// Every certificate of a PEM file; a section that does not parse is an error naming the file.
pub fn pem_certificates(
    pem: &[u8],
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|cause| CertError::BadPem {
            path: path.to_path_buf(),
            cause: cause.to_string(),
        })?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate(path.to_path_buf()));
    }
    Ok(chain)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
fn pem_private_key(pem: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|cause| match cause {
        rustls::pki_types::pem::Error::NoItemsFound => CertError::NoKey(path.to_path_buf()),
        other => CertError::BadPem {
            path: path.to_path_buf(),
            cause: other.to_string(),
        },
    })
}

fn load(files: &TlsFiles) -> Result<Loaded, CertError> {
    let cert_pem = read(&files.cert)?;
    let key_pem = read(&files.key)?;
    let chain = pem_certificates(&cert_pem, &files.cert)?;
    let leaf = chain
        .first()
        .ok_or_else(|| CertError::NoCertificate(files.cert.clone()))?;
    let (not_before, not_after) = x509_parser::parse_x509_certificate(leaf)
        .map(|(_, cert)| {
            let validity = cert.validity();
            (
                validity.not_before.timestamp(),
                validity.not_after.timestamp(),
            )
        })
        .map_err(|_| CertError::BadCertificate(files.cert.clone()))?;
    let private_key = pem_private_key(&key_pem, &files.key)?;
    let builder = rustls::ServerConfig::builder_with_protocol_versions(&[
        &rustls::version::TLS13,
        &rustls::version::TLS12,
    ]);
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in pem_certificates(&read(ca)?, ca)? {
                roots
                    .add(cert)
                    .map_err(|cause| CertError::ClientCa(ca.clone(), cause.to_string()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .map_err(|cause| CertError::ClientCa(ca.clone(), cause.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    // Certificate and key are checked as a pair: with ring, `with_single_cert` compares the
    // key's public half with the certificate's (`CertifiedKey::keys_match`), so a new
    // certificate next to the old key (a half-swapped Secret) is refused here.
    let mut config = builder
        .with_single_cert(chain, private_key)
        .map_err(|cause| match cause {
            rustls::Error::InconsistentKeys(_) => CertError::KeyMismatch {
                cert: files.cert.clone(),
                key: files.key.clone(),
            },
            cause => CertError::Tls {
                cert: files.cert.clone(),
                key: files.key.clone(),
                cause,
            },
        })?;
    // The API server speaks HTTP/2 or HTTP/1.1 to webhooks.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Loaded {
        config: Arc::new(config),
        cert_pem,
        key_pem,
        not_before,
        not_after,
    })
}

/// Loads the certificate once (an error here stops startup) and keeps it current.
pub struct Reloader {
    files: TlsFiles,
    pub rustls: RustlsConfig,
    pub serving: Arc<ServingCert>,
    current: (Vec<u8>, Vec<u8>),
}

impl Reloader {
    pub fn new(files: TlsFiles) -> Result<Self, CertError> {
        // At startup any parseable pair is served, even an expired one: readiness then says
        // what is wrong, which is easier to act on than a crash loop.
        let loaded = load(&files)?;
        let serving = Arc::new(ServingCert::default());
        serving.set_validity(&loaded);
        Ok(Self {
            files,
            rustls: RustlsConfig::from_config(loaded.config),
            serving,
            current: (loaded.cert_pem, loaded.key_pem),
        })
    }

    /// Reloads when the files' bytes differ from what is served.
    fn check(&mut self) {
        let (cert, key) = match (read(&self.files.cert), read(&self.files.key)) {
            (Ok(cert), Ok(key)) => (cert, key),
            (Err(err), _) | (_, Err(err)) => {
                self.failed(&err);
                return;
            }
        };
        if (&cert, &key) == (&self.current.0, &self.current.1) {
            return;
        }
        let loaded = load(&self.files).and_then(|loaded| {
            // A replacement that clients would refuse is not swapped in for a working one.
            match validity_problem(loaded.not_before, loaded.not_after, now_unix()) {
                Some(problem) => Err(CertError::NotValidNow {
                    cert: self.files.cert.clone(),
                    problem,
                }),
                None => Ok(loaded),
            }
        });
        match loaded {
            Ok(loaded) => {
                self.serving.set_validity(&loaded);
                self.rustls.reload_from_config(loaded.config);
                self.serving.reloads.fetch_add(1, Ordering::Relaxed);
                self.current = (loaded.cert_pem, loaded.key_pem);
                tracing::info!(cert = %self.files.cert.display(), not_after = loaded.not_after, "reloaded the serving certificate");
            }
            // A half-written pair (certificate replaced, key not yet) lands here; the next
            // event or poll picks up the finished pair. Readiness is untouched.
            Err(err) => self.failed(&err),
        }
    }

    fn failed(&self, err: &CertError) {
        self.serving.reload_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %err, "cannot reload the serving certificate; still serving the previous one, will retry");
    }

    /// Watches the files' directories and polls every `poll`; runs until the process ends.
    pub fn spawn(mut self, poll: Duration) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(16);
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok() {
                let _ = tx.try_send(());
            }
        });
        let mut watcher = match watcher {
            Ok(w) => Some(w),
            Err(err) => {
                tracing::warn!(error = %err, "cannot watch the certificate files; polling only");
                None
            }
        };
        if let Some(w) = watcher.as_mut() {
            let mut dirs: Vec<PathBuf> = [&self.files.cert, &self.files.key]
                .iter()
                .filter_map(|p| p.parent().map(Path::to_path_buf))
                .collect();
            dirs.dedup();
            for dir in dirs {
                if let Err(err) = w.watch(&dir, notify::RecursiveMode::NonRecursive) {
                    tracing::warn!(dir = %dir.display(), error = %err, "cannot watch; polling only");
                }
            }
        }
        tokio::spawn(async move {
            let _keep_watching = watcher;
            let mut tick = tokio::time::interval(poll);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    Some(()) = rx.recv() => {
                        // Let a writer finish the pair, then drain the burst of events.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        while rx.try_recv().is_ok() {}
                    }
                }
                self.check();
            }
        });
    }
}
