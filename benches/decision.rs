//! The pure decision, whole path: decode the AdmissionReview, decide, encode the response.
//! A chart-shaped coordinator and data pod as the API server sends them (~5 KB), against
//! 10, 1,000 and 10,000 Services over 100 namespaces and 100 Nodes.

#[path = "support/synthetic.rs"]
mod synthetic;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use memgraph_address_injector::cluster::state_from_text;
use memgraph_address_injector::decision::{self, review, Config};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/reviews/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture")
}

fn bench(c: &mut Criterion) {
    let config = Config::default();
    let mut group = c.benchmark_group("decision");
    for services in [10usize, 1_000, 10_000] {
        let state = state_from_text(
            &synthetic::cluster_list(services, 100).to_string(),
            "synthetic",
        )
        .expect("state");
        for pod in ["coordinator", "data"] {
            let body = fixture(&format!("{pod}.json"));
            // Check once that this really injects, so the bench measures the full path.
            let request = review::parse(&body).expect("review");
            let d = decision::decide(&request, &state, &config);
            assert_eq!(
                d.outcome,
                decision::Outcome::Injected,
                "{pod} with {services} Services"
            );
            group.throughput(Throughput::Elements(1));
            group.bench_with_input(BenchmarkId::new(pod, services), &body, |b, body| {
                b.iter(|| {
                    let request = review::parse(body).expect("review");
                    let d = decision::decide(&request, &state, &config);
                    review::encode(&request.uid, &d)
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
