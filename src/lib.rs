//! memgraph-address-injector: a mutating admission webhook that gives each Memgraph HA pod
//! the Bolt address clients outside the cluster can reach.

pub mod certs;
pub mod cli;
pub mod cluster;
pub mod decision;
pub mod metrics;
pub mod routing;
pub mod server;
pub mod tls;
