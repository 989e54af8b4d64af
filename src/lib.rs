//! memgraph-address-injector: a mutating admission webhook that gives each Memgraph HA pod
//! the Bolt address clients outside the cluster can reach. This crate is the shell: the
//! HTTPS server, the watch-fed cluster view, certificates, metrics and the `routing`
//! commands. The decision itself is `memgraph-address-core` (re-exported as `decision`),
//! the Bolt wire protocol `memgraph-bolt`.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub use memgraph_address_core as decision;

pub mod certs;
pub mod cli;
pub mod cluster;
pub mod metrics;
pub mod routing;
pub mod server;
pub mod tls;
