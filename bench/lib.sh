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

# The build the benchmarks run, as BIN: this tree's release build, made here, or BENCH_BIN
# when it names another (an A/B against an earlier build).
# shellcheck disable=SC2034 # BIN is for the scripts that source this file.
release_bin() {
  if [ -n "${BENCH_BIN:-}" ]; then
    [ -x "$BENCH_BIN" ] || { echo "BENCH_BIN=$BENCH_BIN is not an executable" >&2; exit 1; }
    BIN=$BENCH_BIN
  else
    cargo build --release --locked -q
    BIN=target/release/mcp-auth-proxy
  fi
}

# A temporary directory, `work`, and `pids`: the processes the exit trap stops, with every
# nginx whose pid file is in $work.
bench_workspace() {
  work=$(mktemp -d)
  pids=()
  trap bench_cleanup EXIT
}

bench_cleanup() {
  local p f
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  # A pid file may go between the look and the read (its nginx was in pids).
  for f in "$work"/*.pid; do [ -f "$f" ] && { kill "$(cat "$f" 2>/dev/null)" 2>/dev/null || true; }; done
  stop_postgres
  sleep 1
  rm -rf "$work"
}

# Debian's PostgreSQL server programs, as PG_BIN; fails when the package is not installed.
postgres_bin() {
  PG_BIN=$(find /usr/lib/postgresql -maxdepth 2 -name bin 2>/dev/null | sort -V | tail -1)
  [ -n "$PG_BIN" ]
}

# A throwaway PostgreSQL cluster (initdb as the postgres user when root; fsync left on, as in
# production) with a database `bench` on a free port: its address as PG_DSN. stop_postgres
# (which bench_cleanup runs) stops it and removes it.
start_postgres() {
  postgres_bin || { echo "needs Debian's postgresql (apt-get install -y postgresql)" >&2; exit 1; }
  pgdir=$(mktemp -d); as_pg=()
  if [ "$(id -u)" = 0 ]; then chown postgres "$pgdir"; as_pg=(runuser -u postgres --); fi
  PG_PORT=$(free_port)
  "${as_pg[@]}" "$PG_BIN/initdb" -D "$pgdir/data" -U postgres --auth=trust -E UTF8 --no-instructions >/dev/null
  "${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$pgdir/data" -w -l "$pgdir/log" \
    -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$pgdir" start >/dev/null
  "${as_pg[@]}" "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres bench
  PG_DSN="postgres://postgres@127.0.0.1:$PG_PORT/bench"
}

stop_postgres() {
  [ -n "${pgdir:-}" ] || return 0
  "${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$pgdir/data" -w -m fast stop >/dev/null 2>&1 || true
  rm -rf "$pgdir"
  pgdir=
}

# The stdio benchmarks' start: the peers (bench/node) and the e2e harness installed, BIN
# (release_bin), EVERYTHING (server-everything's entry point) and the workspace.
# shellcheck disable=SC2034 # EVERYTHING is for the scripts that source this file.
stdio_bench_setup() {
  (cd bench/node && npm ci --no-audit --no-fund --loglevel=error)
  [ -d tests/e2e/node_modules ] || (cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error)
  release_bin
  EVERYTHING="$(pwd)/bench/node/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
  bench_workspace
}

# The start of the benchmarks that put nginx in front (bench/counts.sh, bench/switches.sh):
# BIN (release_bin) and the workspace.
front_bench_setup() {
  release_bin
  bench_workspace
}

# Writes $work/NAME.conf, an nginx of one worker serving HTTP-BLOCK (its pid file
# $work/NAME.pid, its logs and temporary files under $work/NAME), and starts it unless
# NGINX_NO_START=1 (for a caller that runs it itself, say under valgrind with
# NGINX_MAIN="daemon off; master_process off;").
nginx_conf() { # name http-block
  mkdir -p "$work/$1"
  cat > "$work/$1.conf" <<NGINX
${NGINX_MAIN:-}
worker_processes 1;
pid $work/$1.pid;
error_log $work/$1/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/$1/body;
  proxy_temp_path $work/$1/proxy;
  fastcgi_temp_path $work/$1/fastcgi;
  uwsgi_temp_path $work/$1/uwsgi;
  scgi_temp_path $work/$1/scgi;
$2
}
NGINX
  [ "${NGINX_NO_START:-0}" = 1 ] || nginx -c "$work/$1.conf"
}

# The fast upstream of the benchmarks: nginx answering every request with a fixed
# JSON-RPC result, on PORT.
fast_upstream() { # name port
  nginx_conf "$1" "
  server {
    listen 127.0.0.1:$2;
    location / {
      default_type application/json;
      return 200 '{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"Echo: bench\"}]}}';
    }
  }"
}
