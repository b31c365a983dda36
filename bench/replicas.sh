#!/usr/bin/env bash
# Benchmark: one replica against two replicas behind the same nginx, on a throwaway
# PostgreSQL cluster, fast upstream (nginx answering a fixed JSON-RPC result); then the time
# a revocation at one replica takes to reach the other (bench/propagation.mjs).
# Same run, interleaved, ROUNDS rounds, wrk -t2 -c16 with tools-call.lua.
#
# Usage: bash bench/replicas.sh [ROUNDS] [DURATION] [REVOCATIONS]   (needs Debian's
#   postgresql, nginx, wrk, node, openssl, and npm ci in tests/e2e)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
ROUNDS=${1:-3}
DURATION=${2:-10s}
REVOCATIONS=${3:-100}
PASSWORD=bench-password
cargo build --release --locked -q
BIN=target/release/mcp-auth-proxy

work=$(mktemp -d); pids=()
cleanup() {
  [ -f "$work/error.log" ] && tail -5 "$work/error.log" >&2
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -f "$work/nginx.pid" ]; then kill "$(cat "$work/nginx.pid")" 2>/dev/null || true; fi
  stop_postgres
  sleep 0.5; rm -rf "$work"
}
trap cleanup EXIT

FAST=$(free_port); FRONT_ONE=$(free_port); FRONT_TWO=$(free_port)
A=$(free_port); B=$(free_port)
start_postgres

# nginx: the fast upstream, and the two fronts (one replica; both replicas, round robin).
cat > "$work/nginx.conf" <<NGINX
worker_processes 2;
pid $work/nginx.pid;
error_log $work/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/body; proxy_temp_path $work/proxy; fastcgi_temp_path $work/fastcgi;
  uwsgi_temp_path $work/uwsgi; scgi_temp_path $work/scgi;
  upstream one { server 127.0.0.1:$A; keepalive 64; }
  upstream two { server 127.0.0.1:$A; server 127.0.0.1:$B; keepalive 64; }
  server {
    listen 127.0.0.1:$FAST;
    location / { default_type application/json;
      return 200 '{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"Echo: bench"}]}}'; }
  }
  server { listen 127.0.0.1:$FRONT_ONE;
    location / { proxy_pass http://one; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host \$http_host; proxy_set_header X-Forwarded-For \$http_x_forwarded_for; proxy_buffering off; } }
  server { listen 127.0.0.1:$FRONT_TWO;
    location / { proxy_pass http://two; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host \$http_host; proxy_set_header X-Forwarded-For \$http_x_forwarded_for; proxy_buffering off; } }
}
NGINX
nginx -c "$work/nginx.conf"

# Both replicas serve the public URL of the two-replica front; the one-replica front is
# asked with that Host too.
ORIGIN="http://127.0.0.1:$FRONT_TWO"
key=$(openssl rand -base64 32)
for port in $A $B; do
  REPOSITORY_DSN=$PG_DSN ENCRYPTION_KEY=$key RUST_LOG=warn \
    "$BIN" --listen "127.0.0.1:$port" --external-url "$ORIGIN" --data-path "$work/data-$port" \
    --password "$PASSWORD" --repository-backend postgres --replica-id "r$port" --trusted-proxies 127.0.0.1 \
    "http://127.0.0.1:$FAST/mcp" >"$work/proxy-$port.log" 2>&1 &
  pids+=($!)
done
# The replicas first: nginx would mark one that refused a connection down for 10 s.
for p in $A $B $FAST $FRONT_ONE $FRONT_TWO; do wait_port "$p"; done
TOKEN=$(node bench/token.mjs "$ORIGIN" "$PASSWORD")

run_wrk() { # url
  local out
  out=$(BENCH_AUTH="Bearer $TOKEN" BENCH_SESSION="" \
    wrk -t2 -c16 -d"$DURATION" --latency -s bench/tools-call.lua -H "Host: 127.0.0.1:$FRONT_TWO" "$1")
  echo "$(awk '/Requests\/sec/{print $2}' <<<"$out") $(awk '/Non-2xx|Socket errors/{print}' <<<"$out" | tr '\n' ' ')"
}
echo "rounds=$ROUNDS duration=$DURATION wrk -t2 -c16; $(nproc) cores" >&2
one=""; two=""
for round in $(seq "$ROUNDS"); do
  r1=$(run_wrk "http://127.0.0.1:$FRONT_ONE/mcp"); echo "round $round one replica: $r1" >&2
  r2=$(run_wrk "http://127.0.0.1:$FRONT_TWO/mcp"); echo "round $round two replicas: $r2" >&2
  one+="${r1%% *} "; two+="${r2%% *} "
done
median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
echo "one replica behind nginx: $(median "$one") req/s (rounds: $one)"
echo "two replicas behind nginx: $(median "$two") req/s (rounds: $two)"
PASSWORD=$PASSWORD node bench/propagation.mjs "$REVOCATIONS" "$ORIGIN" "http://127.0.0.1:$A" "http://127.0.0.1:$B"
