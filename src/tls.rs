//! The serving certificate, kept in step with its files without a restart: a file watch for
//! prompt pickup (in-place replacement and the kubelet's `..data` symlink swap of Secret
//! volumes) plus a periodic poll that compares bytes, in case an event is missed. A reload
//! that fails (garbage, a key that does not match, a half-swapped Secret, a certificate not
//! valid now) is logged, counted and retried by the poll; the last good pair keeps serving
//! and readiness does not change, so a bad Secret update never takes every replica out.
//!
//! A replacement must also be the webhook's own identity: valid for the Service's DNS name
//! (`--tls-dns-name`) and, when `--tls-ca` is given, issued by the CA the API server trusts
//! (the caBundle). A pair that fails either would make the API server refuse every call, so
//! it is not swapped in; at startup it is served and readiness names the problem.

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
    /// When set, a certificate must be valid for this name (the webhook Service's DNS name).
    pub dns_name: Option<String>,
    /// When set, a certificate must chain to this CA (the caBundle the API server uses).
    pub ca: Option<PathBuf>,
}

/// What readiness and metrics need to know about the certificate being served.
#[derive(Debug, Default)]
pub struct ServingCert {
    not_before: AtomicI64,
    not_after: AtomicI64,
    reloads: AtomicU64,
    reload_errors: AtomicU64,
    /// Set at startup when the served pair is not the webhook's identity (wrong name, other
    /// CA); cleared by a reload that passes.
    identity_problem: std::sync::Mutex<Option<String>>,
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
    /// clients must refuse (expired, not yet valid, or, as loaded at startup, not valid for
    /// `--tls-dns-name` or not from `--tls-ca`). A failed reload is not a reason, since the
    /// last good pair still serves; it shows in the log and the reload error counter.
    pub fn problem(&self, now_unix: i64) -> Option<String> {
        if let Some(problem) = self
            .identity_problem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Some(problem);
        }
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

    fn set_identity_problem(&self, problem: Option<String>) {
        *self
            .identity_problem
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = problem;
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
    files: FileBytes,
    not_before: i64,
    not_after: i64,
    /// The pair loads but is not the webhook's identity (see [`check_identity`]).
    identity: Result<(), CertError>,
}

/// The bytes of every file the served config was built from: a change to any of them (a
/// rotated client CA too) is a reload.
#[derive(Default, PartialEq)]
struct FileBytes {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
    ca: Option<Vec<u8>>,
}

impl FileBytes {
    fn read(files: &TlsFiles) -> Result<Self, CertError> {
        Ok(Self {
            cert: read(&files.cert)?,
            key: read(&files.key)?,
            client_ca: files.client_ca.as_deref().map(read).transpose()?,
            ca: files.ca.as_deref().map(read).transpose()?,
        })
    }
}

/// Whether the leaf is valid for `--tls-dns-name` and chains to `--tls-ca`, as the API
/// server will check it (webpki, the same code rustls clients run).
fn check_identity(
    files: &TlsFiles,
    bytes: &FileBytes,
    chain: &[CertificateDer<'static>],
) -> Result<(), CertError> {
    let Some(leaf) = chain.first() else {
        return Err(CertError::NoCertificate(files.cert.clone()));
    };
    let parsed = rustls::server::ParsedCertificate::try_from(leaf)
        .map_err(|_| CertError::BadCertificate(files.cert.clone()))?;
    if let Some(name) = &files.dns_name {
        let server_name = rustls::pki_types::ServerName::try_from(name.as_str())
            .map_err(|_| CertError::BadDnsName(name.clone()))?;
        rustls::client::verify_server_name(&parsed, &server_name).map_err(|cause| {
            CertError::NameMissing {
                cert: files.cert.clone(),
                name: name.clone(),
                cause,
            }
        })?;
    }
    if let (Some(ca), Some(ca_pem)) = (&files.ca, &bytes.ca) {
        let mut roots = rustls::RootCertStore::empty();
        for cert in pem_certificates(ca_pem, ca)? {
            roots
                .add(cert)
                .map_err(|cause| CertError::ClientCa(ca.clone(), cause.to_string()))?;
        }
        let algorithms = rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .all;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            &chain[1..],
            rustls::pki_types::UnixTime::now(),
            algorithms,
        )
        .map_err(|cause| CertError::NotFromCa {
            cert: files.cert.clone(),
            ca: ca.clone(),
            cause,
        })?;
    }
    Ok(())
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
    let bytes = FileBytes::read(files)?;
    let chain = pem_certificates(&bytes.cert, &files.cert)?;
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
    let identity = check_identity(files, &bytes, &chain);
    let private_key = pem_private_key(&bytes.key, &files.key)?;
    let builder = rustls::ServerConfig::builder_with_protocol_versions(&[
        &rustls::version::TLS13,
        &rustls::version::TLS12,
    ]);
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            let pem = bytes.client_ca.as_deref().unwrap_or_default();
            for cert in pem_certificates(pem, ca)? {
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
        files: bytes,
        not_before,
        not_after,
        identity,
    })
}

/// Loads the certificate once (an error here stops startup) and keeps it current.
pub struct Reloader {
    files: TlsFiles,
    pub rustls: RustlsConfig,
    pub serving: Arc<ServingCert>,
    current: FileBytes,
}

impl Reloader {
    pub fn new(files: TlsFiles) -> Result<Self, CertError> {
        // A name that can never match is a configuration error, not a certificate problem.
        if let Some(name) = &files.dns_name {
            rustls::pki_types::ServerName::try_from(name.as_str())
                .map_err(|_| CertError::BadDnsName(name.clone()))?;
        }
        // At startup any parseable pair is served, even an expired one: readiness then says
        // what is wrong, which is easier to act on than a crash loop.
        let loaded = load(&files)?;
        let serving = Arc::new(ServingCert::default());
        serving.set_validity(&loaded);
        if let Err(err) = &loaded.identity {
            tracing::error!(error = %err, "the serving certificate is not the webhook's identity; not ready until it is replaced");
            serving.set_identity_problem(Some(err.to_string()));
        }
        Ok(Self {
            files,
            rustls: RustlsConfig::from_config(loaded.config),
            serving,
            current: loaded.files,
        })
    }

    /// Reloads when the files' bytes differ from what is served.
    fn check(&mut self) {
        match FileBytes::read(&self.files) {
            Ok(bytes) if bytes == self.current => return,
            Ok(_) => {}
            Err(err) => {
                self.failed(&err);
                return;
            }
        }
        let loaded = load(&self.files).and_then(|mut loaded| {
            // A replacement that clients would refuse is not swapped in for a working one.
            if let Some(problem) = validity_problem(loaded.not_before, loaded.not_after, now_unix())
            {
                return Err(CertError::NotValidNow {
                    cert: self.files.cert.clone(),
                    problem,
                });
            }
            std::mem::replace(&mut loaded.identity, Ok(())).map(|()| loaded)
        });
        match loaded {
            Ok(loaded) => {
                self.serving.set_validity(&loaded);
                self.rustls.reload_from_config(loaded.config);
                self.serving.set_identity_problem(None);
                self.serving.reloads.fetch_add(1, Ordering::Relaxed);
                self.current = loaded.files;
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
            let mut dirs: Vec<PathBuf> = [Some(&self.files.cert), Some(&self.files.key)]
                .into_iter()
                .chain([self.files.client_ca.as_ref(), self.files.ca.as_ref()])
                .flatten()
                .filter_map(|p| p.parent().map(Path::to_path_buf))
                .collect();
            dirs.sort();
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
