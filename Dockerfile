# mcp-auth-proxy: a small non-root image with Node (npx) and uv (uvx) for stdio MCP servers.
#
#   docker build -t mcp-auth-proxy .
#   docker run -p 80:80 -p 443:443 -v mcp-data:/data mcp-auth-proxy \
#     --external-url https://mcp.example.com --tls-accept-tos --password-hash '$2b$12$…' \
#     -- npx -y @modelcontextprotocol/server-filesystem /data/files

# --- build: the release binary -----------------------------------------------------------
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked && rm -rf src
COPY src src
COPY templates templates
COPY static static
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && strip target/release/mcp-auth-proxy

# --- uv, for `uvx` stdio servers ----------------------------------------------------------
FROM ghcr.io/astral-sh/uv:0.12.1 AS uv

# --- run -----------------------------------------------------------------------------------
FROM node:22-bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libcap2-bin tini \
    && rm -rf /var/lib/apt/lists/*
COPY --from=uv /uv /uvx /usr/local/bin/
COPY --from=build /src/target/release/mcp-auth-proxy /usr/local/bin/mcp-auth-proxy
COPY docker/entrypoint.sh /usr/local/bin/docker-entrypoint
# Ports 80 and 443 without root: the capability on the binary, not a root process.
RUN setcap cap_net_bind_service=+ep /usr/local/bin/mcp-auth-proxy \
    && useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin mcp \
    && mkdir -p /data && chown mcp:mcp /data
USER 10001:10001
ENV DATA_PATH=/data \
    LISTEN=:80 \
    TLS_LISTEN=:443 \
    HOME=/data \
    npm_config_cache=/data/.npm \
    UV_CACHE_DIR=/data/.cache/uv
VOLUME ["/data"]
EXPOSE 80 443
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD ["node", "-e", "const fs = require('fs'); let l = process.env.LISTEN || ':80'; try { l = fs.readFileSync('/tmp/mcp-auth-proxy.listen', 'utf8').trim() } catch {} fetch('http://127.0.0.1:' + l.split(':').pop() + '/healthz').then(r => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
ENTRYPOINT ["tini", "--", "docker-entrypoint"]
