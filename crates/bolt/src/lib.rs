//! A small, bounded Bolt client for Memgraph routing tables: the handshake (5.0–5.2, 4.4,
//! 4.3), HELLO (+ LOGON on 5.1+), ROUTE and auto-commit RUN + PULL, over PackStream.
//! This crate is the only code of memgraph-address-injector that parses bytes a Bolt server
//! sends, so it depends on nothing else of the project and has its own fuzz targets
//! (`fuzz/`, targets `packstream` and `bolt_reply`).
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod client;
pub mod packstream;

pub use client::{
    BoltAddress, BoltError, ConnectOptions, Connection, Credentials, Limits, QueryResult, Transport,
};
/// The rustls this crate speaks TLS with, for building a `Transport::Tls` configuration.
pub use tokio_rustls::rustls;
