//! A small Bolt client: handshake (5.0–5.2, 4.4, 4.3), HELLO (+ LOGON on 5.1+), ROUTE, and
//! auto-commit RUN + PULL. Just enough for `routing check` and `routing sync`; the wire
//! format lives in `packstream`, the decisions in `table` and `plan`.
//! Message layouts: shared/memgraph-ha.md, "Bolt ROUTE, for tests".

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::packstream::{self, PackStreamError, Value};

pub const DEFAULT_PORT: u16 = 7687;
const USER_AGENT: &str = concat!("memgraph-address-injector/", env!("CARGO_PKG_VERSION"));

/// Proposed in order of preference: 5.2 down to 5.0, then 4.4 down to 4.3
/// (`[0, range, minor, major]`). Memgraph offers 4.3 and 5.2 (and older ones we do not need).
const PROPOSALS: [[u8; 4]; 4] = [[0, 2, 2, 5], [0, 1, 4, 4], [0, 0, 0, 0], [0, 0, 0, 0]];

// Message tags.
const HELLO: u8 = 0x01;
const GOODBYE: u8 = 0x02;
const RESET: u8 = 0x0F;
const RUN: u8 = 0x10;
const PULL: u8 = 0x3F;
const ROUTE: u8 = 0x66;
const LOGON: u8 = 0x6A;
const SUCCESS: u8 = 0x70;
const RECORD: u8 = 0x71;
const IGNORED: u8 = 0x7E;
const FAILURE: u8 = 0x7F;

#[derive(Debug, thiserror::Error)]
pub enum BoltError {
    #[error("cannot resolve {address}: {source}")]
    Resolve {
        address: String,
        source: std::io::Error,
    },
    #[error("cannot connect to {address}: {source} (is it reachable from here, and is it the Bolt port?)")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error("{address} did not answer within {ms} ms ({step})")]
    Timeout {
        address: String,
        step: &'static str,
        ms: u128,
    },
    #[error("{address} answered with TLS, but this client speaks plain Bolt; connect to a Bolt port without TLS (Memgraph without --bolt-cert-file)")]
    TlsServer { address: String },
    #[error("{address} is not a Bolt server (handshake reply {reply:02X?})")]
    NotBolt { address: String, reply: Vec<u8> },
    #[error(
        "{address} speaks none of the Bolt versions 5.0-5.2, 4.4 and 4.3 that this client offers"
    )]
    NoCommonVersion { address: String },
    #[error("{address} refused the credentials: {message} (check --user and --password-file)")]
    Auth { address: String, message: String },
    #[error("{address} is not a Memgraph coordinator (it refused {request}: {message}); point --bolt at a coordinator's Bolt address")]
    NotCoordinator {
        address: String,
        request: &'static str,
        message: String,
    },
    #[error("{address} failed {query:?}: {code}: {message}")]
    Query {
        address: String,
        query: String,
        code: String,
        message: String,
    },
    #[error("{address} broke the Bolt protocol: {message}")]
    Protocol { address: String, message: String },
    #[error("{address} closed the connection ({step})")]
    Closed { address: String, step: &'static str },
    #[error("{address}: {source}")]
    Io {
        address: String,
        source: std::io::Error,
    },
    #[error("{address}: {source}")]
    PackStream {
        address: String,
        source: PackStreamError,
    },
}

/// `host:port` of a Bolt server, from `host:port`, `[v6]:port`, `host` (port 7687) or a
/// `bolt://` / `neo4j://` URI.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct BoltAddress {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for BoltAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // An IPv6 literal (the only host with a ':') is written in brackets.
        if self.host.contains(':') && !self.host.starts_with('[') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[derive(Clone, Debug)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

/// A query's result: column names and rows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueryResult {
    pub fields: Vec<String>,
    pub records: Vec<Vec<Value>>,
}

impl QueryResult {
    /// Rows as maps from column name to value.
    pub fn rows(&self) -> Vec<BTreeMap<String, Value>> {
        self.records
            .iter()
            .map(|r| self.fields.iter().cloned().zip(r.iter().cloned()).collect())
            .collect()
    }
}

enum Reply {
    Success(Value),
    Failure { code: String, message: String },
    Ignored,
}

pub struct Connection {
    stream: BufReader<TcpStream>,
    address: String,
    timeout: Duration,
    /// (major, minor)
    pub version: (u8, u8),
    pub server_agent: String,
}

impl Connection {
    /// Connects, negotiates a version and authenticates (scheme "none" without credentials).
    pub async fn connect(
        address: &BoltAddress,
        credentials: Option<&Credentials>,
        timeout: Duration,
    ) -> Result<Self, BoltError> {
        let name = address.to_string();
        let ms = timeout.as_millis();
        let within = |step| {
            let name = name.clone();
            move |_| BoltError::Timeout {
                address: name,
                step,
                ms,
            }
        };
        let addrs: Vec<_> = tokio::time::timeout(
            timeout,
            tokio::net::lookup_host((address.host.as_str(), address.port)),
        )
        .await
        .map_err(within("resolving the host"))?
        .map_err(|source| BoltError::Resolve {
            address: name.clone(),
            source,
        })?
        .collect();
        let mut last_error = None;
        let mut stream = None;
        for addr in addrs {
            match tokio::time::timeout(timeout, TcpStream::connect(addr))
                .await
                .map_err(within("connecting"))?
            {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(err) => last_error = Some(err),
            }
        }
        let stream = stream.ok_or_else(|| BoltError::Connect {
            address: name.clone(),
            source: last_error.unwrap_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, "no address for the host")
            }),
        })?;
        let _ = stream.set_nodelay(true);
        let mut conn = Self {
            stream: BufReader::new(stream),
            address: name.clone(),
            timeout,
            version: (0, 0),
            server_agent: String::new(),
        };
        tokio::time::timeout(timeout, conn.handshake())
            .await
            .map_err(within("Bolt handshake"))??;
        tokio::time::timeout(timeout, conn.authenticate(address, credentials))
            .await
            .map_err(within("HELLO"))??;
        Ok(conn)
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    fn io(&self, source: std::io::Error, step: &'static str) -> BoltError {
        if source.kind() == std::io::ErrorKind::UnexpectedEof {
            BoltError::Closed {
                address: self.address.clone(),
                step,
            }
        } else {
            BoltError::Io {
                address: self.address.clone(),
                source,
            }
        }
    }

    fn protocol(&self, message: impl Into<String>) -> BoltError {
        BoltError::Protocol {
            address: self.address.clone(),
            message: message.into(),
        }
    }

    async fn handshake(&mut self) -> Result<(), BoltError> {
        let mut hello = vec![0x60, 0x60, 0xB0, 0x17];
        for p in PROPOSALS {
            hello.extend(p);
        }
        let stream = self.stream.get_mut();
        if let Err(e) = stream.write_all(&hello).await {
            return Err(self.io(e, "sending the handshake"));
        }
        let mut reply = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match self.stream.read(&mut reply[got..]).await {
                Ok(0) if got > 0 && matches!(reply[0], 0x15 | 0x16) => {
                    return Err(BoltError::TlsServer {
                        address: self.address.clone(),
                    })
                }
                Ok(0) => {
                    return Err(self.io(
                        std::io::ErrorKind::UnexpectedEof.into(),
                        "during the Bolt handshake; a TLS-only server or not a Bolt port?",
                    ))
                }
                Ok(n) => got += n,
                Err(e) => return Err(self.io(e, "during the Bolt handshake")),
            }
        }
        // A TLS record (alert 0x15 or handshake 0x16, version 3.x).
        if matches!(reply[0], 0x15 | 0x16) && reply[1] == 0x03 {
            return Err(BoltError::TlsServer {
                address: self.address.clone(),
            });
        }
        let (major, minor) = (reply[3], reply[2]);
        let agreed = match (reply[0], reply[1], major, minor) {
            (0, 0, 0, 0) => {
                return Err(BoltError::NoCommonVersion {
                    address: self.address.clone(),
                })
            }
            (0, 0, 5, 0..=2) | (0, 0, 4, 3..=4) => (major, minor),
            _ => {
                return Err(BoltError::NotBolt {
                    address: self.address.clone(),
                    reply: reply.to_vec(),
                })
            }
        };
        self.version = agreed;
        Ok(())
    }

    fn auth_fields(credentials: Option<&Credentials>) -> Vec<(&'static str, Value)> {
        match credentials {
            Some(c) => vec![
                ("scheme", Value::str("basic")),
                ("principal", Value::str(c.user.clone())),
                ("credentials", Value::str(c.password.clone())),
            ],
            None => vec![("scheme", Value::str("none"))],
        }
    }

    async fn authenticate(
        &mut self,
        address: &BoltAddress,
        credentials: Option<&Credentials>,
    ) -> Result<(), BoltError> {
        let mut hello = vec![
            ("user_agent", Value::str(USER_AGENT)),
            (
                "routing",
                Value::map([("address", Value::str(address.to_string()))]),
            ),
        ];
        let logon = self.version >= (5, 1);
        if !logon {
            hello.extend(Self::auth_fields(credentials));
        }
        self.send(HELLO, vec![Value::map(hello)]).await?;
        let reply = self.reply("HELLO").await?;
        let meta = self.auth_reply(reply)?;
        self.server_agent = meta
            .get("server")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if logon {
            self.send(LOGON, vec![Value::map(Self::auth_fields(credentials))])
                .await?;
            let reply = self.reply("LOGON").await?;
            self.auth_reply(reply)?;
        }
        Ok(())
    }

    fn auth_reply(&self, reply: Reply) -> Result<Value, BoltError> {
        match reply {
            Reply::Success(meta) => Ok(meta),
            Reply::Failure { code, message } => Err(BoltError::Auth {
                address: self.address.clone(),
                message: if code.is_empty() {
                    message
                } else {
                    format!("{code}: {message}")
                },
            }),
            Reply::Ignored => Err(self.protocol("HELLO was IGNORED")),
        }
    }

    /// ROUTE; returns the `rt` map of the reply.
    pub async fn route(&mut self) -> Result<Value, BoltError> {
        let routing = Value::map([("address", Value::str(self.address.clone()))]);
        let fields = if self.version == (4, 3) {
            // 4.3: routing context, bookmarks, database name or null.
            vec![routing, Value::List(vec![]), Value::Null]
        } else {
            // 4.4 and 5.x: routing context, bookmarks, extra map.
            vec![
                routing,
                Value::List(vec![]),
                Value::map(Vec::<(String, Value)>::new()),
            ]
        };
        let timeout = self.timeout;
        let reply = tokio::time::timeout(timeout, async {
            self.send(ROUTE, fields).await?;
            self.reply("ROUTE").await
        })
        .await
        .map_err(|_| self.timed_out("ROUTE"))??;
        match reply {
            Reply::Success(meta) => meta
                .get("rt")
                .cloned()
                .ok_or_else(|| self.protocol("the ROUTE reply has no rt")),
            Reply::Failure { code, message } => {
                self.reset().await?;
                Err(BoltError::NotCoordinator {
                    address: self.address.clone(),
                    request: "ROUTE",
                    message: format!("{code}: {message}"),
                })
            }
            Reply::Ignored => Err(self.protocol("ROUTE was IGNORED")),
        }
    }

    fn timed_out(&self, step: &'static str) -> BoltError {
        BoltError::Timeout {
            address: self.address.clone(),
            step,
            ms: self.timeout.as_millis(),
        }
    }

    /// An auto-commit query: RUN and PULL all. A failure resets the connection, so it
    /// stays usable.
    pub async fn run(&mut self, query: &str) -> Result<QueryResult, BoltError> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.run_inner(query))
            .await
            .map_err(|_| self.timed_out("running a query"))?
    }

    async fn run_inner(&mut self, query: &str) -> Result<QueryResult, BoltError> {
        let empty = || Value::map(Vec::<(String, Value)>::new());
        self.send(RUN, vec![Value::str(query), empty(), empty()])
            .await?;
        self.send(PULL, vec![Value::map([("n", Value::Int(-1))])])
            .await?;
        let fields = match self.reply("RUN").await? {
            Reply::Success(meta) => meta
                .get("fields")
                .and_then(Value::as_list)
                .unwrap_or_default()
                .iter()
                .map(|f| f.as_str().unwrap_or_default().to_string())
                .collect(),
            Reply::Failure { code, message } => {
                // PULL is IGNORED after a FAILURE; then RESET.
                let _ = self.reply("PULL").await?;
                self.reset().await?;
                return Err(BoltError::Query {
                    address: self.address.clone(),
                    query: query.to_string(),
                    code,
                    message,
                });
            }
            Reply::Ignored => return Err(self.protocol("RUN was IGNORED")),
        };
        let mut records = Vec::new();
        loop {
            let (tag, mut body) = self.message("PULL").await?;
            match tag {
                RECORD => match body.pop() {
                    Some(Value::List(values)) => records.push(values),
                    _ => return Err(self.protocol("a RECORD without a list of values")),
                },
                SUCCESS => break,
                FAILURE => {
                    let (code, message) = failure_of(body.pop());
                    self.reset().await?;
                    return Err(BoltError::Query {
                        address: self.address.clone(),
                        query: query.to_string(),
                        code,
                        message,
                    });
                }
                other => {
                    return Err(
                        self.protocol(format!("unexpected message 0x{other:02X} in a result"))
                    )
                }
            }
        }
        Ok(QueryResult { fields, records })
    }

    async fn reset(&mut self) -> Result<(), BoltError> {
        self.send(RESET, vec![]).await?;
        match self.reply("RESET").await? {
            Reply::Success(_) => Ok(()),
            _ => Err(self.protocol("RESET did not succeed")),
        }
    }

    /// Says GOODBYE; errors are irrelevant at this point.
    pub async fn close(mut self) {
        let _ = self.send(GOODBYE, vec![]).await;
        let _ = self.stream.get_mut().shutdown().await;
    }

    async fn send(&mut self, tag: u8, fields: Vec<Value>) -> Result<(), BoltError> {
        let mut body = Vec::new();
        packstream::encode(&Value::Struct { tag, fields }, &mut body).map_err(|source| {
            BoltError::PackStream {
                address: self.address.clone(),
                source,
            }
        })?;
        let mut framed = Vec::with_capacity(body.len() + 4);
        for chunk in body.chunks(0xFFFF) {
            framed.extend((chunk.len() as u16).to_be_bytes());
            framed.extend(chunk);
        }
        framed.extend([0, 0]);
        if let Err(e) = self.stream.get_mut().write_all(&framed).await {
            return Err(self.io(e, "sending a request"));
        }
        Ok(())
    }

    /// One message: its tag and fields. NOOP chunks (keep-alives) are skipped.
    async fn message(&mut self, step: &'static str) -> Result<(u8, Vec<Value>), BoltError> {
        let mut body = Vec::new();
        loop {
            let mut len = [0u8; 2];
            if let Err(e) = self.stream.read_exact(&mut len).await {
                return Err(self.io(e, step));
            }
            let len = u16::from_be_bytes(len) as usize;
            if len == 0 {
                if body.is_empty() {
                    continue;
                }
                break;
            }
            let start = body.len();
            body.resize(start + len, 0);
            if let Err(e) = self.stream.read_exact(&mut body[start..]).await {
                return Err(self.io(e, step));
            }
        }
        match packstream::decode(&body) {
            Ok(Value::Struct { tag, fields }) => Ok((tag, fields)),
            Ok(other) => Err(self.protocol(format!(
                "a message that is not a structure: {}",
                other.display()
            ))),
            Err(source) => Err(BoltError::PackStream {
                address: self.address.clone(),
                source,
            }),
        }
    }

    async fn reply(&mut self, step: &'static str) -> Result<Reply, BoltError> {
        let (tag, mut fields) = self.message(step).await?;
        match tag {
            SUCCESS => Ok(Reply::Success(
                fields.pop().unwrap_or(Value::Map(BTreeMap::new())),
            )),
            FAILURE => {
                let (code, message) = failure_of(fields.pop());
                Ok(Reply::Failure { code, message })
            }
            IGNORED => Ok(Reply::Ignored),
            other => Err(self.protocol(format!(
                "unexpected message 0x{other:02X} in reply to {step}"
            ))),
        }
    }
}

fn failure_of(meta: Option<Value>) -> (String, String) {
    let meta = meta.unwrap_or(Value::Null);
    let text = |key| {
        meta.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    // Bolt 5.7+ servers may send neo4j_code; older ones code.
    let code = match text("code") {
        c if c.is_empty() => text("neo4j_code"),
        c => c,
    };
    (code, text("message"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_read_code_and_message() {
        let meta = Value::map([
            (
                "code",
                Value::str("Memgraph.ClientError.Security.Unauthenticated"),
            ),
            ("message", Value::str("Authentication failure")),
        ]);
        assert_eq!(
            failure_of(Some(meta)),
            (
                "Memgraph.ClientError.Security.Unauthenticated".to_string(),
                "Authentication failure".to_string()
            )
        );
        assert_eq!(failure_of(None), (String::new(), String::new()));
    }
}
