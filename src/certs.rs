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
    #[error("cannot generate the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error(
        "the certificate in {cert} and the key in {key} do not form a usable TLS identity: {cause}"
    )]
    Tls {
        cert: PathBuf,
        key: PathBuf,
        cause: rustls::Error,
    },
}

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
    ca_params.not_after = now + Duration::days(valid_days.max(1) * 2);
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
    params.not_after = now + Duration::days(valid_days.max(1));
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca)?;

    std::fs::create_dir_all(out).map_err(|cause| CertError::Write {
        path: out.to_path_buf(),
        cause,
    })?;
    write(&files.ca, ca.pem().as_bytes(), 0o644)?;
    write(&files.cert, cert.pem().as_bytes(), 0o644)?;
    write(&files.key, key.serialize_pem().as_bytes(), 0o600)?;
    Ok(files)
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |cause| CertError::Write {
        path: path.to_path_buf(),
        cause,
    };
    std::fs::write(path, bytes).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)
}
