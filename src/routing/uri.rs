//! `--bolt` values: `host:port`, `[v6]:port`, `host` (port 7687) or a URI with a Bolt scheme.
//! The host and port go through the project's one `host:port` parser.

use memgraph_bolt::client::{BoltAddress, DEFAULT_PORT};

use crate::decision::hostport::{HostPort, HostPortError};

/// How the connection is secured, from the URI scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Security {
    /// `bolt://`, `neo4j://` or no scheme.
    Plain,
    /// `bolt+s://`, `neo4j+s://`: TLS, the server verified against `--bolt-ca` or system roots.
    Verified,
    /// `bolt+ssc://`, `neo4j+ssc://`: TLS without verifying the server (opt-in).
    SelfSigned,
}

#[derive(Debug, thiserror::Error)]
pub enum UriError {
    #[error("{0:?}: the scheme must be bolt, neo4j, bolt+s, neo4j+s, bolt+ssc or neo4j+ssc")]
    Scheme(String),
    #[error("{uri:?} is not a Bolt address: {cause}")]
    Address { uri: String, cause: HostPortError },
}

/// A parsed `--bolt`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoltUri {
    pub address: BoltAddress,
    pub security: Security,
}

impl BoltUri {
    pub fn parse(text: &str) -> Result<Self, UriError> {
        let mut rest = text.trim();
        let mut security = Security::Plain;
        if let Some((scheme, after)) = rest.split_once("://") {
            security = match scheme {
                "bolt" | "neo4j" | "bolt+routing" => Security::Plain,
                "bolt+s" | "neo4j+s" => Security::Verified,
                "bolt+ssc" | "neo4j+ssc" => Security::SelfSigned,
                _ => return Err(UriError::Scheme(text.to_string())),
            };
            rest = after;
        }
        let rest = rest.split(['/', '?']).next().unwrap_or_default();
        let HostPort { host, port } =
            HostPort::parse(rest, Some(DEFAULT_PORT)).map_err(|cause| UriError::Address {
                uri: text.to_string(),
                cause,
            })?;
        Ok(Self {
            address: BoltAddress { host, port },
            security,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_in_every_form_clients_write() {
        let a = |s: &str| BoltUri::parse(s).map(|a| a.address.to_string());
        assert_eq!(a("10.0.0.1:30001").unwrap(), "10.0.0.1:30001");
        assert_eq!(
            a("memgraph.example.com").unwrap(),
            "memgraph.example.com:7687"
        );
        assert_eq!(
            a("neo4j://db.example.com:7688").unwrap(),
            "db.example.com:7688"
        );
        assert_eq!(a("bolt://db.example.com/").unwrap(), "db.example.com:7687");
        assert_eq!(a("[2001:db8::1]:7687").unwrap(), "[2001:db8::1]:7687");
        assert_eq!(a("[2001:db8::1]").unwrap(), "[2001:db8::1]:7687");
        for bad in [
            "",
            ":7687",
            "host:0",
            "host:99999",
            "host:x",
            "2001:db8::1",
            "[::1",
            "http://host:7687",
            "ho'st:7687",
            "a b:7687",
        ] {
            assert!(a(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn schemes_choose_the_security() {
        let s = |t: &str| BoltUri::parse(t).unwrap().security;
        assert_eq!(s("h:1"), Security::Plain);
        assert_eq!(s("neo4j://h:1"), Security::Plain);
        assert_eq!(s("bolt+s://h:1"), Security::Verified);
        assert_eq!(s("neo4j+s://h:1"), Security::Verified);
        assert_eq!(s("bolt+ssc://h:1"), Security::SelfSigned);
        assert_eq!(s("neo4j+ssc://h:1"), Security::SelfSigned);
    }
}
