//! A fixed workload for profilers: the coordinator review decided 20,000 times against
//! 10,000 Services. `valgrind --tool=callgrind target/release/examples/profile_decision`
//! (build with CARGO_PROFILE_RELEASE_DEBUG=true for symbols).

#[path = "../benches/support/synthetic.rs"]
mod synthetic;

use memgraph_address_injector::cluster::state_from_text;
use memgraph_address_injector::decision::{self, review, Config};

fn main() {
    let state = state_from_text(
        &synthetic::cluster_list(10_000, 100).to_string(),
        "synthetic",
    )
    .expect("state");
    let body = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/reviews/coordinator.json"
    ))
    .expect("review");
    let config = Config::default();
    let mut bytes = 0;
    for _ in 0..20_000 {
        let request = review::parse(&body).expect("review");
        let d = decision::decide(&request, &state, &config);
        bytes += review::encode(&request.uid, &d).len();
    }
    println!("{bytes}");
}
