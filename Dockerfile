# partgate: a gRPC gateway that presents a fleet of Viam robot parts as one machine.
#
#   docker build -t partgate .
#   docker run --rm -p 8080:8080 -p 9090:9090 \
#       -v "$PWD/fleet.json:/etc/partgate/partgate.json:ro" partgate
#
# Builds with Docker 23 or later (BuildKit, the default builder, whose built-in Dockerfile
# frontend has RUN --mount). No `# syntax=` line: it would fetch a frontend image from a
# registry on every build, while this file builds offline once its two base images are local.
# Base images are pinned by digest (the tag is for humans). To update both: look up the current
# digests of the tags (`docker buildx imagetools inspect rust:1.98.0-bookworm`, or Docker Hub, or
# docker-library/repo-info's repos/<image>/remote/<tag>.md), keep the rust and debian releases
# on the same Debian snapshot, then run scripts/check-dockerfile.
#
# The project's machines run no Docker engine: scripts/check-dockerfile checks this file without
# one (the builder's cargo command in a copy of exactly the COPYed files, then the runtime
# stage's binary, user, ports, config path and HEALTHCHECK against a running gateway).

# --- builder: the release binary (protos compile with protox in crates/proto: no protoc) ----
FROM rust:1.98.0-bookworm@sha256:82150a52ec202c1b14d7817e14516c392bb7f5cfebd88f1ed531cb37ebd39922 AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
COPY src ./src
COPY benches ./benches
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --locked --release --bin partgate \
    && install -D -m 0755 target/release/partgate /out/partgate

# --- runtime: small, non-root, the binary and a default config ---------------------------
FROM debian:bookworm-20260824-slim@sha256:88200866dfff7ea7f5cbcb6ec7c8a701889efe6fe859fe64d6990e4b07ea4171 AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 partgate \
    && useradd --system --uid 10001 --gid partgate --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin partgate
COPY --from=builder /out/partgate /usr/local/bin/partgate
COPY deploy/config/default.json /etc/partgate/partgate.json
ENV PARTGATE_CONFIG=/etc/partgate/partgate.json \
    PARTGATE_LOG_FORMAT=json \
    PARTGATE_HEALTHCHECK_URL=http://127.0.0.1:8080/healthz
USER 10001:10001
# gRPC, gRPC-Web, /healthz /readyz /statusz /metrics
EXPOSE 8080/tcp
# gateway.admin_address of the default config: /metrics /healthz /readyz /statusz only
EXPOSE 9090/tcp
# WebRTC data channels (ICE over UDP): the default config binds the first free port of this
# range (gateway.webrtc.udp_port_range); publish the same range with -p ...:.../udp.
EXPOSE 40000-40099/udp
# SIGTERM drains in-flight calls for up to gateway.drain_timeout (30 s by default): give
# `docker stop` more than that (-t 40, or stop_grace_period in compose).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/partgate", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/partgate"]
CMD ["run"]
