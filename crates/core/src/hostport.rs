//! The one `host:port` parser and formatter, and the one rule for what a host may be. Used by
//! the webhook (annotations, Node addresses), `routing` (table entries, `--bolt`) and the
//! reconciler, so a value from the cluster is judged the same way wherever it is read.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// RFC 1123: a DNS name is at most 253 characters (without a trailing dot).
pub const MAX_DNS_NAME: usize = 253;
/// RFC 1123: each label is at most 63 characters.
pub const MAX_DNS_LABEL: usize = 63;

/// Why a text is not a host clients can dial.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("the host is empty")]
    Empty,
    #[error("{0:?} carries a port; give the host alone (the port comes from the Service)")]
    HasPort(String),
    #[error("{0:?} is a wildcard, not a host a client can dial")]
    Wildcard(String),
    #[error("{0:?} is longer than {MAX_DNS_NAME} characters, the limit of a DNS name")]
    TooLong(String),
    #[error("{host:?} is neither an IP address nor a DNS name (RFC 1123): {why}")]
    NotAHost { host: String, why: &'static str },
}

/// What kind of host a valid host is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostKind {
    Ipv4,
    Ipv6,
    DnsName,
}

/// Checks that `host` is an IP literal (IPv6 with or without brackets) or an RFC 1123 DNS name
/// of at most 253 characters. Nothing else may reach a pod, a flag or a query.
pub fn validate_host(host: &str) -> Result<HostKind, HostError> {
    if host.is_empty() {
        return Err(HostError::Empty);
    }
    if host.parse::<Ipv4Addr>().is_ok() {
        return Ok(HostKind::Ipv4);
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if bare.parse::<Ipv6Addr>().is_ok() {
        return Ok(HostKind::Ipv6);
    }
    if host.starts_with('*') {
        return Err(HostError::Wildcard(host.to_string()));
    }
    if host.contains(':') {
        return Err(HostError::HasPort(host.to_string()));
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.len() > MAX_DNS_NAME {
        return Err(HostError::TooLong(truncate(host)));
    }
    let not_a_host = |why| HostError::NotAHost {
        host: truncate(host),
        why,
    };
    for label in name.split('.') {
        if label.is_empty() {
            return Err(not_a_host("it has an empty label"));
        }
        if label.len() > MAX_DNS_LABEL {
            return Err(not_a_host("a label is longer than 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(not_a_host(
                "only letters, digits, '-' and '.' are allowed (no spaces, quotes or '*')",
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(not_a_host("a label starts or ends with '-'"));
        }
    }
    Ok(HostKind::DnsName)
}

/// Long values are cut in messages so that one bad annotation cannot flood a log line.
fn truncate(text: &str) -> String {
    const KEEP: usize = 64;
    match text.char_indices().nth(KEEP) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

pub fn is_ipv6_literal(host: &str) -> bool {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<Ipv6Addr>()
        .is_ok()
}

pub fn is_ip(host: &str) -> bool {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok()
}

/// Why a text is not `host:port`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostPortError {
    #[error("{0:?} has an unclosed '['")]
    UnclosedBracket(String),
    #[error("{0:?} has text after ']' that is not :PORT")]
    AfterBracket(String),
    #[error("{0:?}: write an IPv6 address as [addr]:port")]
    BareIpv6(String),
    #[error("{0:?}: the port must be a number from 1 to 65535")]
    BadPort(String),
    #[error("{0:?} has no port")]
    NoPort(String),
    #[error(transparent)]
    Host(#[from] HostError),
}

/// A validated `host:port`; IPv6 hosts are kept without brackets.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    /// `host:port` or `[v6]:port`; with `default_port`, a missing port takes it.
    pub fn parse(text: &str, default_port: Option<u16>) -> Result<Self, HostPortError> {
        let (host, port) = split(text)?;
        let port = match (port, default_port) {
            (Some(p), _) => parse_port(p).ok_or_else(|| HostPortError::BadPort(text.into()))?,
            (None, Some(default)) => default,
            (None, None) => return Err(HostPortError::NoPort(text.into())),
        };
        validate_host(host)?;
        Ok(Self {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_host_port(&self.host, self.port))
    }
}

/// `host:port`, with an IPv6 literal in brackets.
pub fn format_host_port(host: &str, port: impl fmt::Display) -> String {
    if is_ipv6_literal(host) && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn parse_port(text: &str) -> Option<u16> {
    text.parse::<u16>().ok().filter(|p| *p != 0)
}

/// Splits `host:port` / `[v6]:port` / `host` without judging the host.
fn split(text: &str) -> Result<(&str, Option<&str>), HostPortError> {
    if let Some(v6) = text.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| HostPortError::UnclosedBracket(text.into()))?;
        return match after.strip_prefix(':') {
            Some(port) => Ok((host, Some(port))),
            None if after.is_empty() => Ok((host, None)),
            None => Err(HostPortError::AfterBracket(text.into())),
        };
    }
    match text.rsplit_once(':') {
        Some((host, _)) if host.contains(':') => Err(HostPortError::BareIpv6(text.into())),
        Some((host, port)) => Ok((host, Some(port))),
        None => Ok((text, None)),
    }
}

/// The host part of `host:port` / `[v6]:port`, leniently (for display and classification of
/// what a server sent): the whole text when it does not split.
pub fn host_of(address: &str) -> &str {
    match split(address) {
        Ok((host, Some(port))) if parse_port(port).is_some() => host,
        Ok((host, None)) if address.starts_with('[') => host,
        _ => address,
    }
}

/// The port of `host:port`, if any.
pub fn port_of(address: &str) -> Option<u16> {
    match split(address) {
        Ok((_, Some(port))) => parse_port(port),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_that_may_reach_a_pod() {
        assert_eq!(validate_host("db.example.com"), Ok(HostKind::DnsName));
        assert_eq!(validate_host("db.example.com."), Ok(HostKind::DnsName));
        assert_eq!(validate_host("node-1"), Ok(HostKind::DnsName));
        assert_eq!(validate_host("203.0.113.7"), Ok(HostKind::Ipv4));
        assert_eq!(validate_host("2001:db8::1"), Ok(HostKind::Ipv6));
        assert_eq!(validate_host("[2001:db8::1]"), Ok(HostKind::Ipv6));
    }

    #[test]
    fn hosts_that_never_reach_a_pod() {
        assert!(matches!(
            validate_host("db.example.com:7687"),
            Err(HostError::HasPort(_))
        ));
        assert!(matches!(
            validate_host("*.example.com"),
            Err(HostError::Wildcard(_))
        ));
        assert!(matches!(
            validate_host(&"a".repeat(300)),
            Err(HostError::TooLong(_))
        ));
        for bad in [
            "db example.com",
            "-db.example.com",
            "db..example.com",
            "db.exa\"mple.com",
            "db.example.com'",
            "a.*.com",
            "a\nb",
            "ünïcode.example",
        ] {
            assert!(
                matches!(validate_host(bad), Err(HostError::NotAHost { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(validate_host(""), Err(HostError::Empty));
        let long_label = format!("{}.example.com", "a".repeat(64));
        assert!(validate_host(&long_label).is_err());
    }

    #[test]
    fn messages_cut_long_values() {
        let err = validate_host(&"a".repeat(300)).unwrap_err().to_string();
        assert!(err.len() < 200, "{err}");
    }

    #[test]
    fn parse_and_format() {
        let hp = HostPort::parse("db.example.com:7687", None).unwrap();
        assert_eq!((hp.host.as_str(), hp.port), ("db.example.com", 7687));
        assert_eq!(hp.to_string(), "db.example.com:7687");
        let v6 = HostPort::parse("[2001:db8::1]:30001", None).unwrap();
        assert_eq!(v6.host, "2001:db8::1");
        assert_eq!(v6.to_string(), "[2001:db8::1]:30001");
        assert_eq!(HostPort::parse("h", Some(7687)).unwrap().port, 7687);
        assert!(matches!(
            HostPort::parse("h", None),
            Err(HostPortError::NoPort(_))
        ));
        assert!(matches!(
            HostPort::parse("2001:db8::1:7687", None),
            Err(HostPortError::BareIpv6(_))
        ));
        assert!(matches!(
            HostPort::parse("h:0", None),
            Err(HostPortError::BadPort(_))
        ));
        assert!(matches!(
            HostPort::parse("h:99999", None),
            Err(HostPortError::BadPort(_))
        ));
        assert!(matches!(
            HostPort::parse("[::1", None),
            Err(HostPortError::UnclosedBracket(_))
        ));
        assert!(matches!(
            HostPort::parse("a b:1", None),
            Err(HostPortError::Host(_))
        ));
    }

    #[test]
    fn lenient_split_for_display() {
        assert_eq!(host_of("a.svc.cluster.local:7687"), "a.svc.cluster.local");
        assert_eq!(host_of("[::1]:7687"), "::1");
        assert_eq!(host_of("bare"), "bare");
        assert_eq!(port_of("a:7687"), Some(7687));
        assert_eq!(port_of("[::1]:30001"), Some(30001));
        assert_eq!(port_of("::1"), None);
        assert_eq!(format_host_port("::1", 1), "[::1]:1");
        assert_eq!(format_host_port("[::1]", 1), "[::1]:1");
    }
}
