//! The TLS side of `--bolt`: the rustls client configuration (ring) that `bolt+s://` and
//! `neo4j+s://` verify the server with (`--bolt-ca`, else the system's roots), and the one
//! `bolt+ssc://` / `neo4j+ssc://` use, which accepts any certificate (opt-in, for self-signed
//! servers) but still checks the handshake's signatures.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::uri::Security;
use memgraph_bolt::Transport;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read --bolt-ca {path}: {cause}")]
    ReadCa {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("--bolt-ca: {cause}")]
    CaPem { cause: Box<crate::certs::CertError> },
    #[error("--bolt-ca {path}: a certificate is not usable as a trust anchor: {reason}")]
    CaCertificate { path: PathBuf, reason: String },
    #[error("no system CA certificates could be loaded{errors}; pass the server's CA with --bolt-ca FILE")]
    NoSystemRoots { errors: String },
    #[error("--bolt-ca applies to bolt+s:// and neo4j+s:// only; {uri} is {what}")]
    CaNotUsed { uri: String, what: &'static str },
}

/// The transport for a `--bolt` URI's security.
pub fn transport(security: Security, ca: Option<&Path>, uri: &str) -> Result<Transport, TlsError> {
    let config = match (security, ca) {
        (Security::Plain, None) => return Ok(Transport::Plain),
        (Security::Plain, Some(_)) => {
            return Err(TlsError::CaNotUsed {
                uri: uri.to_string(),
                what: "plain Bolt (no TLS)",
            })
        }
        (Security::SelfSigned, Some(_)) => {
            return Err(TlsError::CaNotUsed {
                uri: uri.to_string(),
                what: "TLS without verification (+ssc)",
            })
        }
        (Security::Verified, ca) => {
            let roots = match ca {
                Some(path) => ca_roots(path)?,
                None => system_roots()?,
            };
            builder()
                .with_root_certificates(roots)
                .with_no_client_auth()
        }
        (Security::SelfSigned, None) => builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServerCertificate(provider())))
            .with_no_client_auth(),
    };
    Ok(Transport::Tls(Arc::new(config)))
}

/// The ring provider, named here rather than taken from the process default so that the
/// configuration is the same in tests and in the binary (which installs ring as default).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn builder() -> rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier> {
    ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
}

fn ca_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let pem = std::fs::read(path).map_err(|cause| TlsError::ReadCa {
        path: path.to_path_buf(),
        cause,
    })?;
    let mut roots = RootCertStore::empty();
    for cert in crate::tls::pem_certificates(&pem, path).map_err(|cause| TlsError::CaPem {
        cause: Box::new(cause),
    })? {
        roots.add(cert).map_err(|e| TlsError::CaCertificate {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let errors = found
            .errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        return Err(TlsError::NoSystemRoots {
            errors: if errors.is_empty() {
                String::new()
            } else {
                format!(" ({errors})")
            },
        });
    }
    Ok(roots)
}

/// `+ssc`: any certificate is accepted (the user asked for that); the handshake signatures
/// are still verified, so the peer must hold the key of the certificate it shows.
#[derive(Debug)]
struct AnyServerCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_needs_no_tls_and_refuses_a_ca() {
        assert!(matches!(
            transport(Security::Plain, None, "h:1"),
            Ok(Transport::Plain)
        ));
        let ca = Path::new("/nonexistent/ca.crt");
        assert!(matches!(
            transport(Security::Plain, Some(ca), "bolt://h:1"),
            Err(TlsError::CaNotUsed { .. })
        ));
        assert!(matches!(
            transport(Security::SelfSigned, Some(ca), "bolt+ssc://h:1"),
            Err(TlsError::CaNotUsed { .. })
        ));
        assert!(matches!(
            transport(Security::SelfSigned, None, "bolt+ssc://h:1"),
            Ok(Transport::Tls(_))
        ));
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_named() {
        let missing = Path::new("/nonexistent/ca.crt");
        let err = transport(Security::Verified, Some(missing), "bolt+s://h:1").unwrap_err();
        assert!(matches!(err, TlsError::ReadCa { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/ca.crt"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("ca.crt");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = transport(Security::Verified, Some(&empty), "bolt+s://h:1").unwrap_err();
        assert!(matches!(err, TlsError::CaPem { .. }), "{err}");
    }

    #[test]
    fn a_generated_ca_is_a_trust_anchor() {
        let dir = tempfile::tempdir().unwrap();
        let files =
            crate::certs::generate("svc", "ns", &[], dir.path(), false, 1).expect("gen-certs");
        assert!(matches!(
            transport(Security::Verified, Some(&files.ca), "bolt+s://h:1"),
            Ok(Transport::Tls(_))
        ));
    }
}
