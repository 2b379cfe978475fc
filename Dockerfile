# syntax=docker/dockerfile:1
# Build:  docker build -t vane:dev .
# Run:    docker run -p 8080:8080 -e VANE_CI_TOKEN=... -e VANE_VIEWER_TOKEN=... \
#           -e VANE_PROMETHEUS_URL=http://prometheus:9090 vane:dev

FROM rust:1-bookworm AS build
# etcd-client compiles etcd's protobufs at build time: protoc and the well-known types.
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends protobuf-compiler libprotobuf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin vane \
 && install -D -m 0755 target/release/vane /out/vane \
 && mkdir -p /out/var/lib/vane

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/vane /vane
COPY --from=build --chown=65532:65532 /out/var/lib/vane /var/lib/vane
COPY policies/ /etc/vane/policies/
COPY deploy/base/vane.toml /etc/vane/vane.toml
USER 65532:65532
EXPOSE 8080
VOLUME ["/var/lib/vane"]
ENTRYPOINT ["/vane", "serve", "--config", "/etc/vane/vane.toml"]
