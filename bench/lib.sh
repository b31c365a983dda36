# shellcheck shell=bash
# Shared helpers of the benchmark scripts (sourced).

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

wait_port() { for _ in $(seq 150); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.1; done; echo "port $1 never answered" >&2; exit 1; }

# Opens an MCP session (initialize + initialized) at URL, with an optional bearer token;
# prints its Mcp-Session-Id.
init_session() { # url [token]
  local hdr=(-H 'content-type: application/json' -H 'accept: application/json, text/event-stream')
  [ -n "${2:-}" ] && hdr+=(-H "authorization: Bearer $2")
  local sid
  sid=$(curl -s -D - -o /dev/null "${hdr[@]}" "$1" \
    -d '{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}' \
    | tr -d '\r' | awk -F': ' 'tolower($1)=="mcp-session-id"{print $2}')
  curl -s -o /dev/null "${hdr[@]}" -H "mcp-session-id: $sid" -H 'mcp-protocol-version: 2025-06-18' "$1" \
    -d '{"jsonrpc":"2.0","method":"notifications/initialized"}'
  echo "$sid"
}
