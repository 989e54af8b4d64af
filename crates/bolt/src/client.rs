//! A small Bolt client: handshake (5.0–5.2, 4.4, 4.3), HELLO (+ LOGON on 5.1+), ROUTE, and
//! auto-commit RUN + PULL. Just enough for `routing check` and `routing sync`; the wire
//! format lives in `packstream`, the decisions in `table` and `plan`.
//! Message layouts: docs/design.md, "Bolt ROUTE, for tests".

use std::collections::BTreeMap;
use std::fmt;
use std::io::ErrorKind;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

use crate::packstream::{self, PackStreamError, Value};

pub const DEFAULT_PORT: u16 = 7687;
/// Default cap on one reassembled Bolt message (all its chunks).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Default cap on the records of one result.
pub const DEFAULT_MAX_RECORDS: usize = 100_000;
/// Default cap on the bytes of all the records of one result together.
pub const DEFAULT_MAX_RESULT_BYTES: usize = 64 * 1024 * 1024;
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
    #[error("cannot resolve {address}: {cause}")]
    Resolve {
        address: String,
        cause: std::io::Error,
    },
    #[error("cannot connect to {address}: {cause} (is it reachable from here, and is it the Bolt port?)")]
    Connect {
        address: String,
        cause: std::io::Error,
    },
    #[error("{address} did not answer within {ms} ms ({step})")]
    Timeout {
        address: String,
        step: &'static str,
        ms: u128,
    },
    #[error("{address} answered with TLS to a plain Bolt handshake: it is a TLS Bolt port (Memgraph with --bolt-cert-file); connect with bolt+s:// (or bolt+ssc:// to skip verifying its certificate)")]
    TlsServer { address: String },
    #[error("{address} is not a valid TLS server name; connect to a DNS name or an IP address")]
    TlsName { address: String },
    #[error("{address}'s TLS certificate failed verification: {reason}; pass the CA that signed it with --bolt-ca (or use bolt+ssc:// to skip verification)")]
    TlsVerify {
        address: String,
        reason: rustls::Error,
    },
    #[error("{address} did not answer the TLS handshake with TLS ({why}): is it a plain Bolt port? connect with bolt:// instead")]
    NotTls { address: String, why: String },
    #[error("TLS handshake with {address} failed: {cause}")]
    TlsHandshake {
        address: String,
        cause: std::io::Error,
    },
    #[error("{address} sent a Bolt message larger than the cap of {limit} bytes (max_message_bytes); a broken or hostile server?")]
    MessageTooLarge { address: String, limit: usize },
    #[error("{address} sent more than the cap of {limit} records in one result (max_records); a broken or hostile server?")]
    TooManyRecords { address: String, limit: usize },
    #[error("{address} sent more than the cap of {limit} bytes of records in one result (max_result_bytes); a broken or hostile server?")]
    ResultTooLarge { address: String, limit: usize },
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
    #[error("{address}: {cause}")]
    Io {
        address: String,
        cause: std::io::Error,
    },
    #[error("{address}: {cause}")]
    PackStream {
        address: String,
        cause: PackStreamError,
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

#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

/// Never the password: these options end up in logs and panic messages.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A query's result: column names and rows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueryResult {
    pub fields: Vec<String>,
    pub records: Vec<Vec<Value>>,
}

impl QueryResult {
    /// Rows as maps from column name to value, borrowed: a large result is not copied again.
    pub fn rows(&self) -> impl Iterator<Item = BTreeMap<&str, &Value>> + '_ {
        self.records
            .iter()
            .map(|r| self.fields.iter().map(String::as_str).zip(r).collect())
    }
}

/// A message from the server, as `decode_message` reads it.
#[derive(Clone, Debug, PartialEq)]
pub enum ServerMessage {
    /// SUCCESS and its metadata (an empty map when the server sent none).
    Success(Value),
    /// RECORD: one row's values.
    Record(Vec<Value>),
    /// FAILURE: its code (`code`, or `neo4j_code` of Bolt 5.7+) and message.
    Failure {
        code: String,
        message: String,
    },
    Ignored,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MessageError {
    #[error(transparent)]
    PackStream(#[from] PackStreamError),
    #[error("a message that is not a structure: {0}")]
    NotAStructure(String),
    #[error("a RECORD without a list of values")]
    RecordWithoutList,
    #[error("unexpected message 0x{0:02X} (not SUCCESS, RECORD, FAILURE or IGNORED)")]
    UnknownTag(u8),
}

/// Decodes one server message from its bytes (the chunks already joined). Pure, so that the
/// fuzz target (`fuzz/`, target `bolt_reply`) reaches everything a server's reply goes through.
pub fn decode_message(body: &[u8]) -> Result<ServerMessage, MessageError> {
    let (tag, mut fields) = match packstream::decode(body)? {
        Value::Struct { tag, fields } => (tag, fields),
        other => return Err(MessageError::NotAStructure(other.display())),
    };
    Ok(match tag {
        SUCCESS => ServerMessage::Success(fields.pop().unwrap_or(Value::Map(BTreeMap::new()))),
        RECORD => match fields.pop() {
            Some(Value::List(values)) => ServerMessage::Record(values),
            _ => return Err(MessageError::RecordWithoutList),
        },
        FAILURE => {
            let (code, message) = failure_of(fields.pop());
            ServerMessage::Failure { code, message }
        }
        IGNORED => ServerMessage::Ignored,
        other => return Err(MessageError::UnknownTag(other)),
    })
}

/// How to reach the server: plain TCP, or TLS with a client configuration the caller built
/// (trusted roots, or a verifier that accepts any certificate for `+ssc`). The crate picks no
/// crypto provider: the configuration carries it.
#[derive(Clone, Default)]
pub enum Transport {
    #[default]
    Plain,
    Tls(Arc<rustls::ClientConfig>),
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Plain => "Plain",
            Transport::Tls(_) => "Tls",
        })
    }
}

/// Bounds on what a server may make this client hold, so that a broken or hostile server
/// gets an error naming the cap instead of exhausting memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// One message, its chunks reassembled.
    pub max_message_bytes: usize,
    /// Records of one result.
    pub max_records: usize,
    /// All the records of one result together, in bytes on the wire.
    pub max_result_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_records: DEFAULT_MAX_RECORDS,
            max_result_bytes: DEFAULT_MAX_RESULT_BYTES,
        }
    }
}

/// Everything `Connection::connect` needs besides the address.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Scheme "none" when absent.
    pub credentials: Option<Credentials>,
    /// Budget of each network step (connect, TLS, handshake, each request).
    pub timeout: Duration,
    pub transport: Transport,
    pub limits: Limits,
    /// The name the server's certificate must carry, when it is not the host connected to
    /// (a reconciler dials a pod IP; the certificate names the pod's DNS name).
    pub tls_server_name: Option<String>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            credentials: None,
            timeout: Duration::from_secs(5),
            transport: Transport::Plain,
            limits: Limits::default(),
            tls_server_name: None,
        }
    }
}

/// A byte stream a connection can run over: TCP, TLS over TCP, or anything else (tests use
/// in-memory pipes).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A reply to a request: SUCCESS, FAILURE or IGNORED (a RECORD is not one).
enum Reply {
    Success(Value),
    Failure { code: String, message: String },
    Ignored,
}

pub struct Connection {
    stream: BufReader<Box<dyn Stream>>,
    address: String,
    timeout: Duration,
    limits: Limits,
    /// Over TLS (for the hints in errors).
    tls: bool,
    /// (major, minor)
    pub version: (u8, u8),
    pub server_agent: String,
}

/// The error for a tokio timeout on `step` (for `map_err`).
fn timed_out(
    address: &str,
    timeout: Duration,
    step: &'static str,
) -> impl FnOnce(tokio::time::error::Elapsed) -> BoltError {
    let address = address.to_string();
    move |_| BoltError::Timeout {
        address,
        step,
        ms: timeout.as_millis(),
    }
}

impl Connection {
    /// Connects (TCP, then TLS for `Transport::Tls`), negotiates a version and authenticates.
    pub async fn connect(
        address: &BoltAddress,
        options: &ConnectOptions,
    ) -> Result<Self, BoltError> {
        let name = address.to_string();
        let timeout = options.timeout;
        let within = |step| timed_out(&name, timeout, step);
        // The TLS name first: a bad one needs no network.
        let server_name = match &options.transport {
            Transport::Plain => None,
            Transport::Tls(_) => {
                let host = match &options.tls_server_name {
                    Some(name) => name.as_str(),
                    None => address.host.trim_start_matches('[').trim_end_matches(']'),
                };
                Some(
                    rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|_| {
                        BoltError::TlsName {
                            address: name.clone(),
                        }
                    })?,
                )
            }
        };
        let addrs: Vec<_> = tokio::time::timeout(
            timeout,
            tokio::net::lookup_host((address.host.as_str(), address.port)),
        )
        .await
        .map_err(within("resolving the host"))?
        .map_err(|cause| BoltError::Resolve {
            address: name.clone(),
            cause,
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
            cause: last_error.unwrap_or_else(|| {
                std::io::Error::new(ErrorKind::NotFound, "no address for the host")
            }),
        })?;
        let _ = stream.set_nodelay(true);
        let stream: Box<dyn Stream> = match (&options.transport, server_name) {
            (Transport::Tls(config), Some(server_name)) => {
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                let tls = tokio::time::timeout(timeout, connector.connect(server_name, stream))
                    .await
                    .map_err(within("TLS handshake"))?
                    .map_err(|source| tls_error(name.clone(), source))?;
                Box::new(tls)
            }
            _ => Box::new(stream),
        };
        Self::over(stream, address, options).await
    }

    /// Runs the Bolt handshake and authentication over an established stream (TCP, TLS, or
    /// an in-memory pipe in tests).
    pub async fn over(
        stream: impl Stream + 'static,
        address: &BoltAddress,
        options: &ConnectOptions,
    ) -> Result<Self, BoltError> {
        let name = address.to_string();
        let timeout = options.timeout;
        let within = |step| timed_out(&name, timeout, step);
        let stream: Box<dyn Stream> = Box::new(stream);
        let mut conn = Self {
            stream: BufReader::new(stream),
            address: name.clone(),
            timeout,
            limits: options.limits,
            tls: matches!(options.transport, Transport::Tls(_)),
            version: (0, 0),
            server_agent: String::new(),
        };
        tokio::time::timeout(timeout, conn.handshake())
            .await
            .map_err(within("Bolt handshake"))??;
        tokio::time::timeout(
            timeout,
            conn.authenticate(address, options.credentials.as_ref()),
        )
        .await
        .map_err(within("HELLO"))??;
        Ok(conn)
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    fn io(&self, source: std::io::Error, step: &'static str) -> BoltError {
        // A peer that closes with our bytes unread resets instead: the same for a user.
        if matches!(
            source.kind(),
            ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
        ) {
            BoltError::Closed {
                address: self.address.clone(),
                step,
            }
        } else {
            BoltError::Io {
                address: self.address.clone(),
                cause: source,
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
        let step = if self.tls {
            "during the Bolt handshake (not a Bolt port?)"
        } else {
            "during the Bolt handshake: a TLS Bolt port (use bolt+s://) or not a Bolt port?"
        };
        let mut reply = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match self.stream.read(&mut reply[got..]).await {
                Ok(0) if got > 0 && matches!(reply[0], 0x15 | 0x16) => {
                    return Err(BoltError::TlsServer {
                        address: self.address.clone(),
                    })
                }
                Ok(0) => return Err(self.io(ErrorKind::UnexpectedEof.into(), step)),
                Ok(n) => got += n,
                Err(e) => return Err(self.io(e, step)),
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
                // Bounded like every other step: a server that never answers RESET.
                tokio::time::timeout(timeout, self.reset())
                    .await
                    .map_err(|_| self.timed_out("RESET"))??;
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
        let mut result_bytes = 0usize;
        loop {
            match self.message("PULL").await? {
                (ServerMessage::Record(_), _) if records.len() >= self.limits.max_records => {
                    return Err(BoltError::TooManyRecords {
                        address: self.address.clone(),
                        limit: self.limits.max_records,
                    })
                }
                (ServerMessage::Record(values), size) => {
                    result_bytes += size;
                    if result_bytes > self.limits.max_result_bytes {
                        return Err(BoltError::ResultTooLarge {
                            address: self.address.clone(),
                            limit: self.limits.max_result_bytes,
                        });
                    }
                    records.push(values)
                }
                (ServerMessage::Success(_), _) => break,
                (ServerMessage::Failure { code, message }, _) => {
                    self.reset().await?;
                    return Err(BoltError::Query {
                        address: self.address.clone(),
                        query: query.to_string(),
                        code,
                        message,
                    });
                }
                (ServerMessage::Ignored, _) => {
                    return Err(
                        self.protocol(format!("unexpected message 0x{IGNORED:02X} in a result"))
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
        // Bounded: a peer that stops reading must not hold the process.
        let _ = tokio::time::timeout(self.timeout, async {
            let _ = self.send(GOODBYE, vec![]).await;
            let _ = self.stream.get_mut().shutdown().await;
        })
        .await;
    }

    async fn send(&mut self, tag: u8, fields: Vec<Value>) -> Result<(), BoltError> {
        let mut body = Vec::new();
        packstream::encode(&Value::Struct { tag, fields }, &mut body).map_err(|cause| {
            BoltError::PackStream {
                address: self.address.clone(),
                cause,
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

    /// One message and its size. NOOP chunks (keep-alives) are skipped; the chunks are
    /// reassembled up to `limits.max_message_bytes`.
    async fn message(&mut self, step: &'static str) -> Result<(ServerMessage, usize), BoltError> {
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
            if start + len > self.limits.max_message_bytes {
                return Err(BoltError::MessageTooLarge {
                    address: self.address.clone(),
                    limit: self.limits.max_message_bytes,
                });
            }
            body.resize(start + len, 0);
            if let Err(e) = self.stream.read_exact(&mut body[start..]).await {
                return Err(self.io(e, step));
            }
        }
        match decode_message(&body) {
            Ok(message) => Ok((message, body.len())),
            Err(MessageError::PackStream(cause)) => Err(BoltError::PackStream {
                address: self.address.clone(),
                cause,
            }),
            Err(other) => Err(self.protocol(other.to_string())),
        }
    }

    async fn reply(&mut self, step: &'static str) -> Result<Reply, BoltError> {
        match self.message(step).await?.0 {
            ServerMessage::Success(meta) => Ok(Reply::Success(meta)),
            ServerMessage::Failure { code, message } => Ok(Reply::Failure { code, message }),
            ServerMessage::Ignored => Ok(Reply::Ignored),
            ServerMessage::Record(_) => Err(self.protocol(format!(
                "unexpected message 0x{RECORD:02X} in reply to {step}"
            ))),
        }
    }
}

/// The error of a failed TLS handshake, by what went wrong: the certificate (wrong CA, wrong
/// name, expired), a peer that does not speak TLS, or anything else.
fn tls_error(address: String, source: std::io::Error) -> BoltError {
    let rustls_error = source
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(
            reason @ (rustls::Error::InvalidCertificate(_)
            | rustls::Error::NoCertificatesPresented
            | rustls::Error::UnsupportedNameType),
        ) => BoltError::TlsVerify {
            address,
            reason: reason.clone(),
        },
        // Bytes that are not a TLS record: a plain Bolt server answering (or refusing) the
        // ClientHello.
        Some(reason @ rustls::Error::InvalidMessage(_)) => BoltError::NotTls {
            address,
            why: reason.to_string(),
        },
        Some(_) => BoltError::TlsHandshake {
            address,
            cause: source,
        },
        // A plain Bolt server reads the ClientHello, finds no Bolt preamble and hangs up.
        None if matches!(
            source.kind(),
            ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
        ) =>
        {
            BoltError::NotTls {
                address,
                why: "it closed the connection".into(),
            }
        }
        None => BoltError::TlsHandshake {
            address,
            cause: source,
        },
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

    /// Options and credentials reach logs and panic messages through Debug.
    #[test]
    fn debug_output_never_holds_the_password() {
        let options = ConnectOptions {
            credentials: Some(Credentials {
                user: "memgraph".into(),
                password: "s3cr3t-hunter2".into(),
            }),
            ..ConnectOptions::default()
        };
        let printed = format!("{options:?} {:#?}", options.credentials);
        assert!(!printed.contains("s3cr3t-hunter2"), "{printed}");
        assert!(printed.contains("memgraph"), "{printed}");
    }

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

    fn message_bytes(tag: u8, fields: Vec<Value>) -> Vec<u8> {
        let mut out = Vec::new();
        packstream::encode(&Value::Struct { tag, fields }, &mut out).unwrap();
        out
    }

    #[test]
    fn server_messages_decode_by_tag() {
        let meta = Value::map([("rt", Value::map([("ttl", Value::Int(300))]))]);
        assert_eq!(
            decode_message(&message_bytes(SUCCESS, vec![meta.clone()])),
            Ok(ServerMessage::Success(meta))
        );
        assert_eq!(
            decode_message(&message_bytes(SUCCESS, vec![])),
            Ok(ServerMessage::Success(Value::Map(BTreeMap::new())))
        );
        let row = vec![Value::str("coordinator_1"), Value::Int(1)];
        assert_eq!(
            decode_message(&message_bytes(RECORD, vec![Value::List(row.clone())])),
            Ok(ServerMessage::Record(row))
        );
        let failure = Value::map([
            ("neo4j_code", Value::str("Memgraph.ClientError.X")),
            ("message", Value::str("no")),
        ]);
        assert_eq!(
            decode_message(&message_bytes(FAILURE, vec![failure])),
            Ok(ServerMessage::Failure {
                code: "Memgraph.ClientError.X".into(),
                message: "no".into()
            })
        );
        assert_eq!(
            decode_message(&message_bytes(IGNORED, vec![])),
            Ok(ServerMessage::Ignored)
        );
    }

    #[test]
    fn malformed_server_messages_are_errors() {
        assert_eq!(
            decode_message(&message_bytes(RECORD, vec![Value::Int(1)])),
            Err(MessageError::RecordWithoutList)
        );
        assert_eq!(
            decode_message(&message_bytes(RECORD, vec![])),
            Err(MessageError::RecordWithoutList)
        );
        assert_eq!(
            decode_message(&message_bytes(HELLO, vec![])),
            Err(MessageError::UnknownTag(HELLO))
        );
        assert_eq!(
            decode_message(&[0x01]),
            Err(MessageError::NotAStructure("1".into()))
        );
        assert_eq!(
            decode_message(&[0xB1, SUCCESS]),
            Err(MessageError::PackStream(PackStreamError::Truncated))
        );
    }
}
