# Images for the node (`--target halyard`) and the operator (`--target operator`):
#   docker build --target halyard -t ghcr.io/halyard-iot/halyard:0.1.0 .
#   docker build --target operator -t ghcr.io/halyard-iot/halyard-operator:0.1.0 .
# Both run as the distroless `nonroot` user (65532) on a read-only root filesystem.

FROM rust:1.95-bookworm AS build
# RocksDB is compiled from source (cmake) and its bindings generated with libclang.
RUN apt-get update \
    && apt-get install -y --no-install-recommends clang libclang-dev cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p halyard-node -p halyard-operator \
    && mkdir -p /out \
    && cp target/release/halyard target/release/halyard-operator /out/

FROM gcr.io/distroless/cc-debian12:nonroot AS halyard
COPY --from=build /out/halyard /usr/local/bin/halyard
USER 65532:65532
# MQTT, MQTT over TLS, the TLS port (MQTT, HTTPS, WebSocket by ALPN), the HTTP API, admin, peers.
EXPOSE 1883 8883 8443 8080 9090 7000/udp
ENTRYPOINT ["/usr/local/bin/halyard"]
CMD ["serve"]

FROM gcr.io/distroless/cc-debian12:nonroot AS operator
COPY --from=build /out/halyard-operator /usr/local/bin/halyard-operator
USER 65532:65532
EXPOSE 8081
ENTRYPOINT ["/usr/local/bin/halyard-operator"]
CMD ["run"]
