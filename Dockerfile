# syntax=docker/dockerfile:1
#
# casola-auth container image: a static-ish Rust binary on distroless (glibc + CA certificates,
# no shell, no package manager), running as the non-root user 65532.
#
#   docker build -t casola-auth:0.1.0 .
#   docker run --rm -p 50051:50051 -p 9090:9090 casola-auth:0.1.0 serve   # in-memory store
#
# The default command expects the config file the Helm chart mounts at
# /etc/casola-auth/config.toml; DATABASE_URL comes from the environment.

ARG RUST_VERSION=1

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# The build needs no protoc (build.rs uses protox) and no libpq (diesel-async + tokio-postgres).
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin casola-auth \
    && install -D -m 0755 target/release/casola-auth /out/casola-auth

# cc-debian12: glibc and libgcc for the Rust binary, ca-certificates for TLS to Postgres.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="casola-auth" \
      org.opencontainers.image.description="API-token issuing and authorization service for the Casola platform" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/casola-auth /usr/local/bin/casola-auth
USER 65532:65532
# Inside a container the service must listen on all interfaces (the binary defaults to loopback).
ENV CASOLA_AUTH_LISTEN=0.0.0.0:50051 \
    CASOLA_AUTH_ADMIN_LISTEN=0.0.0.0:9090
# 50051: gRPC (TokenService, AuthorizationService, envoy ext_authz, health, reflection)
# 9090: admin HTTP (/healthz, /readyz, /metrics)
EXPOSE 50051 9090
ENTRYPOINT ["/usr/local/bin/casola-auth"]
CMD ["serve", "--config", "/etc/casola-auth/config.toml"]
