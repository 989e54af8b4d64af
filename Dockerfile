# syntax=docker/dockerfile:1
# The webhook image: a release build on Debian 12 (bookworm), run on distroless cc-debian12
# as nonroot (uid 65532, as the Deployment's securityContext expects).
#
# For machines with Docker and registry access. scripts/build-image builds the same layout
# without either (podman, FROM scratch, the binary plus the libraries ldd lists for it), and
# tests/image.rs checks that image's user, entrypoint, command and binary path against this
# file's final stage: keep them in step.
#
# The binary is a default *-linux-gnu build: it links glibc (and libgcc_s) dynamically, so
# the runtime is distroless/cc (glibc, libgcc, CA certificates), not distroless/static.
# TLS is rustls + ring: no OpenSSL needed.
#
#   docker build --build-arg MAI_GIT_COMMIT=$(git rev-parse --short HEAD) \
#     -t memgraph-address-injector:0.2.0 .

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
# Cargo.toml declares the bench target, so benches/ must exist for the manifest to parse;
# crates/ holds the workspace members the binary depends on; build.rs stamps the commit into
# --version and build_info; the context has no .git, so the commit comes as a build argument.
ARG MAI_GIT_COMMIT=""
COPY Cargo.toml Cargo.lock build.rs ./
COPY benches ./benches
COPY crates ./crates
COPY src ./src
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p memgraph-address-injector --bin memgraph-address-injector \
 && install -D -m 0755 target/release/memgraph-address-injector /out/memgraph-address-injector

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/memgraph-address-injector /usr/local/bin/memgraph-address-injector
USER 65532:65532
# 8443: HTTPS /mutate; 8080: /livez, /readyz, /metrics.
EXPOSE 8443 8080
ENTRYPOINT ["/usr/local/bin/memgraph-address-injector"]
CMD ["serve"]
