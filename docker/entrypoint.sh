#!/bin/sh
# The image's entrypoint: checks that the data directory is usable, then becomes
# mcp-auth-proxy with the container's arguments (flags, then the backend or `-- command`).
set -eu

bin="${MCP_AUTH_PROXY:-mcp-auth-proxy}"
data="${DATA_PATH:-/data}"

case "${1:-}" in
  hash-password|--help|-h|--version|-V) exec "$bin" "$@" ;;
esac

# "$data/files" is what the examples (Dockerfile header, README, docker-compose.yml) serve.
if ! mkdir -p "$data/files" 2>/dev/null || ! [ -w "$data" ]; then
  echo "mcp-auth-proxy: the data directory $data is not writable by uid $(id -u)." >&2
  echo "  With a bind mount, give it to that user: chown -R $(id -u):$(id -g) <host directory>" >&2
  exit 1
fi

# The address the proxy will listen on (--listen wins over LISTEN, as in the proxy), for the
# image's healthcheck, which runs apart from this process and sees only the environment.
listen="${LISTEN:-:80}"
prev=""
for a in "$@"; do
  [ "$a" = "--" ] && break
  case "$a" in
    --listen=*) listen="${a#--listen=}" ;;
  esac
  [ "$prev" = "--listen" ] && listen="$a"
  prev="$a"
done
printf '%s\n' "$listen" > "${TMPDIR:-/tmp}/mcp-auth-proxy.listen" 2>/dev/null || true

exec "$bin" "$@"
