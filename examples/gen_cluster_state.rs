//! Prints a synthetic cluster state (Services and Nodes) for `serve --cluster-state`, as used
//! by scripts/bench: `cargo run --release --example gen_cluster_state -- 10000 100`.

#[path = "../benches/support/synthetic.rs"]
mod synthetic;

fn main() {
    let mut args = std::env::args().skip(1);
    let services = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let nodes = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    println!("{}", synthetic::cluster_list(services, nodes));
}
