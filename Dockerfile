# cfm and its built-in plugins in a small, non-root runtime image.
#
#   docker build -t cfm .
#   docker run --rm -p 8080:8080 cfm serve --listen 0.0.0.0:8080
#
# The plugins are built for wasm32-wasip2 in the builder; their digests are pinned in
# /opt/cfm/plugins/plugins.toml, which deploy/kubernetes/ takes as its ConfigMap.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN scripts/build-plugins.sh \
    && cargo build --release --locked -p cfm \
    # The configuration names each component by its absolute path in the image, so a
    # copy mounted elsewhere (a ConfigMap) still finds them.
    && sed -i 's#^path = "#path = "/opt/cfm/plugins/#' target/plugins/plugins.toml

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/cfm --create-home cfm
# cfm finds its built-in plugins at ../plugins/plugins.toml from its own folder.
COPY --from=build /src/target/release/cfm /opt/cfm/bin/cfm
COPY --from=build /src/target/plugins/ /opt/cfm/plugins/
USER 10001
WORKDIR /var/lib/cfm
ENV CFM_DATA_DIR=/var/lib/cfm CFM_LOG_FORMAT=json
EXPOSE 8080 9464
ENTRYPOINT ["/opt/cfm/bin/cfm"]
CMD ["serve", "--listen", "0.0.0.0:8080"]
