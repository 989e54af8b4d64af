//! Certificates: `gen-certs` (a CA and a serving certificate for the webhook Service) and the
//! rustls server configuration built from PEM files.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{0} already exists; pass --force to overwrite it")]
    Exists(PathBuf),
    #[error("cannot write {path}: {cause}")]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("cannot read {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{0} holds no PEM certificate")]
    NoCertificate(PathBuf),
    #[error("{path}: a PEM section does not parse ({cause}); the file is damaged or half written")]
    BadPem { path: PathBuf, cause: String },
    #[error("{0}: the certificate is not a readable X.509 certificate")]
    BadCertificate(PathBuf),
    #[error("{0} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey(PathBuf),
    #[error("the client CA file {0} is not usable: {1}")]
    ClientCa(PathBuf, String),
    #[error("--valid-days {0} is out of range: give 1 to {MAX_VALID_DAYS} days")]
    ValidDays(i64),
    #[error("cannot generate the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("the key in {key} does not belong to the certificate in {cert}; replace both files together (a Secret updated half way?)")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("the certificate in {cert} {problem}; renew it (or fix the clock)")]
    NotValidNow { cert: PathBuf, problem: String },
    #[error("--tls-dns-name {0:?} is not a DNS name; give the webhook Service's name, e.g. memgraph-address-injector.NAMESPACE.svc")]
    BadDnsName(String),
    #[error("the certificate in {cert} is not valid for {name} (its subject alternative names do not cover it: {cause}); issue it for the webhook Service's DNS name")]
    NameMissing {
        cert: PathBuf,
        name: String,
        cause: rustls::Error,
    },
    #[error("the certificate in {cert} does not chain to the CA in {ca} ({cause}); issue it from that CA or fix --tls-ca")]
    NotFromCa {
        cert: PathBuf,
        ca: PathBuf,
        cause: rustls::Error,
    },
    #[error(
        "the certificate in {cert} and the key in {key} do not form a usable TLS identity: {cause}"
    )]
    Tls {
        cert: PathBuf,
        key: PathBuf,
        cause: rustls::Error,
    },
}

/// The CA gets twice the serving certificate's validity; X.509 dates end in 9999, and
/// 100 years is far past any rotation policy.
pub const MAX_VALID_DAYS: i64 = 36_500;

pub struct GeneratedFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Writes `ca.crt`, `tls.crt` and `tls.key` for `NAME.NS.svc` (+ `.cluster.local` and IPs).
pub fn generate(
    service: &str,
    namespace: &str,
    ips: &[IpAddr],
    out: &Path,
    force: bool,
    valid_days: i64,
) -> Result<GeneratedFiles, CertError> {
    if !(1..=MAX_VALID_DAYS).contains(&valid_days) {
        return Err(CertError::ValidDays(valid_days));
    }
    let files = GeneratedFiles {
        ca: out.join("ca.crt"),
        cert: out.join("tls.crt"),
        key: out.join("tls.key"),
    };
    if !force {
        for path in [&files.ca, &files.cert, &files.key] {
            if path.exists() {
                return Err(CertError::Exists(path.clone()));
            }
        }
    }
    let now = OffsetDateTime::now_utc();
    // Tolerate clocks a little behind ours.
    let not_before = now - Duration::hours(1);

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name.push(
        DnType::CommonName,
        format!("memgraph-address-injector CA ({namespace})"),
    );
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = not_before;
    ca_params.not_after = now + Duration::days(valid_days * 2);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let mut params = CertificateParams::new(vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ])?;
    params
        .subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{service}.{namespace}.svc"));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.not_before = not_before;
    params.not_after = now + Duration::days(valid_days);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca)?;

    std::fs::create_dir_all(out).map_err(|cause| CertError::Write {
        path: out.to_path_buf(),
        cause,
    })?;
    write(&files.ca, ca.pem().as_bytes(), 0o644, force)?;
    write(&files.cert, cert.pem().as_bytes(), 0o644, force)?;
    write(&files.key, key.serialize_pem().as_bytes(), 0o600, force)?;
    Ok(files)
}

/// Creates `path` with `mode` from the start, so that the private key is never readable by
/// others, not even between creating and writing it. Without `force` an existing file is an
/// error (create_new: no race with a file appearing meanwhile); with it, the file is
/// truncated and its mode set before any byte is written.
fn write(path: &Path, bytes: &[u8], mode: u32, force: bool) -> Result<(), CertError> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let err = |cause| CertError::Write {
        path: path.to_path_buf(),
        cause,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(mode);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path).map_err(|cause| {
        if cause.kind() == std::io::ErrorKind::AlreadyExists {
            CertError::Exists(path.to_path_buf())
        } else {
            err(cause)
        }
    })?;
    // An existing file keeps its old mode on open; the umask may also have narrowed ours.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_key_is_created_owner_only_and_force_keeps_it_so() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("certs");
        let files = generate("svc", "ns", &[], &out, false, 30).unwrap();
        assert_eq!(mode(&files.key), 0o600);
        assert_eq!(mode(&files.cert), 0o644);
        assert!(matches!(
            generate("svc", "ns", &[], &out, false, 30),
            Err(CertError::Exists(_))
        ));
        // A key left world-readable by someone else is narrowed when overwritten.
        std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let before = std::fs::read(&files.key).unwrap();
        let again = generate("svc", "ns", &[], &out, true, 30).unwrap();
        assert_eq!(mode(&again.key), 0o600);
        assert_ne!(std::fs::read(&again.key).unwrap(), before);
    }

    /// A validity past what a date can hold (or below a day) is an error naming the flag,
    /// not a panic in the date arithmetic; nothing is written.
    #[test]
    fn validity_out_of_range_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("certs");
        for days in [0, -5, MAX_VALID_DAYS + 1, i64::MAX / 2, i64::MAX] {
            let err = generate("svc", "ns", &[], &out, false, days)
                .err()
                .expect("refused");
            assert!(matches!(err, CertError::ValidDays(d) if d == days), "{err}");
            assert!(err.to_string().contains("--valid-days"), "{err}");
        }
        assert!(!out.exists(), "nothing written");
        generate("svc", "ns", &[], &out, false, MAX_VALID_DAYS).unwrap();
    }

    #[test]
    fn create_new_refuses_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tls.key");
        write(&path, b"one", 0o600, false).unwrap();
        assert!(matches!(
            write(&path, b"two", 0o600, false),
            Err(CertError::Exists(_))
        ));
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        assert_eq!(mode(&path), 0o600);
    }
}
