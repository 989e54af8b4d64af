//! memgraph-address-injector: a mutating admission webhook that gives each Memgraph HA pod
//! the Bolt address clients outside the cluster can reach. This crate is the shell: the
//! HTTPS server, the watch-fed cluster view, certificates, metrics and the `routing`
//! commands. The decision itself is `memgraph-address-core` (re-exported as `decision`),
//! the Bolt wire protocol `memgraph-bolt`.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub use memgraph_address_core as decision;

/// The crate version, as in Cargo.toml.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit built (`build.rs`): short hash, `MAI_GIT_COMMIT`, or `unknown`.
pub const COMMIT: &str = env!("MAI_BUILD_COMMIT");
/// What `--version` prints after the program name.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("MAI_BUILD_COMMIT"),
    ")"
);

pub mod certs;
pub mod cli;
pub mod cluster;
pub mod metrics;
pub mod reconcile;
pub mod report;
pub mod routing;
pub mod server;
pub mod single_flight;
pub mod tls;
