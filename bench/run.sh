#!/usr/bin/env bash
# Benchmark: authenticated tools/call through mcp-auth-proxy vs the same upstream direct vs
# nginx as a plain reverse proxy, on two upstreams:
#   fast: nginx answering a fixed JSON-RPC result (shows the proxy's own cost)
#   everything: @modelcontextprotocol/server-everything (streamable HTTP), a real MCP server
# Method (docs/design.md, "Benchmarks"): same run, interleaved A/B/C, ROUNDS rounds, wrk -t2 -c16, unique
# JSON-RPC ids (tools-call.lua); median and spread reported. Loopback only; bounded runs.
# Each path also reports the CPU time (user and kernel, from /proc) its serving process spent
# per request over the run: the proxy, nginx's front worker, or for "direct" the upstream.
# Both move with the load other tenants put on a shared machine (bench/counts.sh counts
# what does not: system calls and instructions per request).
#
# Usage: bash bench/run.sh [ROUNDS] [DURATION]      (needs: nginx, wrk, node, npm ci in tests/e2e)
#   BENCH_BASELINE=path/to/mcp-auth-proxy adds that binary (say, the release build of an earlier
#   commit) as one more path on the fast upstream, interleaved in the same rounds:
#     git worktree add /tmp/base REV && (cd /tmp/base && cargo build --release --locked)
#     BENCH_BASELINE=/tmp/base/target/release/mcp-auth-proxy bash bench/run.sh 3 10s
#   With Debian's postgresql installed (BENCH_POSTGRES=0 to leave it out), the same proxy on a
#   throwaway PostgreSQL cluster is one more path on the fast upstream, and bench/store.mjs
#   then times the sign-in flow and cold and warm token checks on both stores.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
ROUNDS=${1:-3}
DURATION=${2:-10s}
PASSWORD=bench-password

for tool in nginx wrk node curl; do
  command -v "$tool" >/dev/null || { echo "bench needs $tool (apt-get install -y nginx wrk nodejs curl)" >&2; exit 1; }
done
[ -d tests/e2e/node_modules ] || (cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error)
cargo build --release --locked -q
BIN=target/release/mcp-auth-proxy

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  stop_postgres
  for f in "$work"/upstream.pid "$work"/front.pid; do
    if [ -f "$f" ]; then kill "$(cat "$f")" 2>/dev/null || true; fi
  done
  sleep 0.5
  rm -rf "$work"
}
trap cleanup EXIT


FAST=$(free_port); NGINX_FAST=$(free_port); NGINX_EVERY=$(free_port); EVERY=$(free_port)
PROXY_FAST=$(free_port); PROXY_EVERY=$(free_port); PROXY_GENERAL=$(free_port)
NGINX_LOGGED=$(free_port); PROXY_DEFAULT=$(free_port)
PROXY_POLICY=$(free_port); PROXY_AUDIT=$(free_port)

# --- upstreams and nginx -------------------------------------------------------------
# Two nginx instances, one worker each (nginx_conf, bench/lib.sh): the fast upstream, and
# nginx as the reverse proxy under test. Kept apart so the front pays for its own
# scheduling and socket hops the way mcp-auth-proxy does (one shared worker would serve both
# ends in a single event loop).
fast_upstream upstream "$FAST"
# nginx as a plain reverse proxy (no auth), SSE-friendly.
nginx_conf front "
  upstream fast { server 127.0.0.1:$FAST; keepalive 64; }
  upstream everything { server 127.0.0.1:$EVERY; keepalive 64; }
  server {
    listen 127.0.0.1:$NGINX_FAST;
    location / {
      proxy_pass http://fast; proxy_http_version 1.1; proxy_set_header Connection \"\";
      proxy_buffering off;
    }
  }
  # As installed: an access log line per request, written at once (Debian's default).
  server {
    listen 127.0.0.1:$NGINX_LOGGED;
    access_log $work/front/access.log;
    location / {
      proxy_pass http://fast; proxy_http_version 1.1; proxy_set_header Connection \"\";
      proxy_buffering off;
    }
  }
  server {
    listen 127.0.0.1:$NGINX_EVERY;
    location / {
      proxy_pass http://everything; proxy_http_version 1.1; proxy_set_header Connection \"\";
      proxy_set_header Host 127.0.0.1:$EVERY; proxy_buffering off;
    }
  }"

PORT=$EVERY node tests/e2e/node_modules/@modelcontextprotocol/server-everything/dist/index.js streamableHttp \
  >"$work/everything.log" 2>&1 &
pids+=($!)

# The process serving each port, whose CPU time is read around each run.
declare -A PID_OF
PID_OF[$EVERY]=$!
PID_OF[$FAST]=$(pgrep -P "$(cat "$work/upstream.pid")" | head -1)
for p in $NGINX_FAST $NGINX_LOGGED $NGINX_EVERY; do PID_OF[$p]=$(pgrep -P "$(cat "$work/front.pid")" | head -1); done

# The request log is off (RUST_LOG=warn), as nginx's access_log is; BENCH_RUST_LOG=info
# measures with it.
# Not in a command substitution: its subshell would keep the pid from `pids` (and cleanup).
# DEFAULT_LOG=1 starts it as installed (no RUST_LOG: the request log on).
start_proxy() { # port upstream data [flags…]; sets STARTED (the binary: $PROXY_BIN, else ours)
  local log=(env RUST_LOG="${BENCH_RUST_LOG:-warn}")
  [ "${DEFAULT_LOG:-0}" = 1 ] && log=(env -u RUST_LOG)
  "${log[@]}" "${PROXY_BIN:-$BIN}" --listen "127.0.0.1:$1" --external-url "http://127.0.0.1:$1" --data-path "$3" \
    --password "$PASSWORD" "${@:4}" "$2" >"$3.log" 2>&1 &
  STARTED=$!
  pids+=("$STARTED")
  PID_OF[$1]=$STARTED
}
start_proxy "$PROXY_FAST" "http://127.0.0.1:$FAST/mcp" "$work/data-fast"; PROXY_FAST_PID=$STARTED
start_proxy "$PROXY_EVERY" "http://127.0.0.1:$EVERY/mcp" "$work/data-every"; PROXY_EVERY_PID=$STARTED
# The same proxy as installed: the request log on, written to a file as nginx's access log is.
DEFAULT_LOG=1 start_proxy "$PROXY_DEFAULT" "http://127.0.0.1:$FAST/mcp" "$work/data-default"
# The same proxy without its HTTP/1 fast lane: every request through hyper and the router.
start_proxy "$PROXY_GENERAL" "http://127.0.0.1:$FAST/mcp" "$work/data-general" --no-fast-lane
start_proxy "$PROXY_POLICY" "http://127.0.0.1:$FAST/mcp" "$work/data-policy" --policy-file bench/policy-20.toml
start_proxy "$PROXY_AUDIT" "http://127.0.0.1:$FAST/mcp" "$work/data-audit" --audit-log "$work/audit.jsonl"
BASELINE=${BENCH_BASELINE:-}
if [ -n "$BASELINE" ]; then
  [ -x "$BASELINE" ] || { echo "BENCH_BASELINE=$BASELINE is not an executable" >&2; exit 1; }
  PROXY_BASELINE=$(free_port)
  PROXY_BIN=$BASELINE start_proxy "$PROXY_BASELINE" "http://127.0.0.1:$FAST/mcp" "$work/data-baseline"
fi

# The PostgreSQL store: a throwaway cluster (bench/lib.sh), the same proxy on the fast
# upstream.
if [ "${BENCH_POSTGRES:-1}" = 1 ] && postgres_bin; then
  start_postgres
  PROXY_PG=$(free_port)
  export REPOSITORY_DSN=$PG_DSN
  ENCRYPTION_KEY=$(openssl rand -base64 32)
  export ENCRYPTION_KEY
  start_proxy "$PROXY_PG" "http://127.0.0.1:$FAST/mcp" "$work/data-pg" --repository-backend postgres
  # For bench/store.mjs, which signs in hundreds of times from one machine: a proxy on each
  # store that takes the client's address from X-Forwarded-For (one per sign-in), so the
  # per-client bounds on pending sign-ins and the rate limit do not stop it. (A second
  # process on the same database, too.)
  STORE_SLED=$(free_port); STORE_PG=$(free_port)
  start_proxy "$STORE_SLED" "http://127.0.0.1:$FAST/mcp" "$work/data-store-sled" --trusted-proxies 127.0.0.1
  start_proxy "$STORE_PG" "http://127.0.0.1:$FAST/mcp" "$work/data-store-pg" --trusted-proxies 127.0.0.1 \
    --repository-backend postgres
  unset REPOSITORY_DSN ENCRYPTION_KEY
fi

for p in $FAST $NGINX_FAST $NGINX_LOGGED $NGINX_EVERY $EVERY $PROXY_FAST $PROXY_DEFAULT $PROXY_EVERY $PROXY_GENERAL $PROXY_POLICY $PROXY_AUDIT ${PROXY_BASELINE:-} ${PROXY_PG:-} ${STORE_SLED:-} ${STORE_PG:-}; do wait_port "$p"; done

TOKEN_FAST=$(node bench/token.mjs "http://127.0.0.1:$PROXY_FAST" "$PASSWORD")
TOKEN_EVERY=$(node bench/token.mjs "http://127.0.0.1:$PROXY_EVERY" "$PASSWORD")
TOKEN_GENERAL=$(node bench/token.mjs "http://127.0.0.1:$PROXY_GENERAL" "$PASSWORD")
TOKEN_DEFAULT=$(node bench/token.mjs "http://127.0.0.1:$PROXY_DEFAULT" "$PASSWORD")
TOKEN_POLICY=$(node bench/token.mjs "http://127.0.0.1:$PROXY_POLICY" "$PASSWORD")
TOKEN_AUDIT=$(node bench/token.mjs "http://127.0.0.1:$PROXY_AUDIT" "$PASSWORD")
[ -z "$BASELINE" ] || TOKEN_BASELINE=$(node bench/token.mjs "http://127.0.0.1:$PROXY_BASELINE" "$PASSWORD")
[ -z "${PROXY_PG:-}" ] || TOKEN_PG=$(node bench/token.mjs "http://127.0.0.1:$PROXY_PG" "$PASSWORD")

SID_DIRECT=$(init_session "http://127.0.0.1:$EVERY/mcp")
SID_NGINX=$(init_session "http://127.0.0.1:$NGINX_EVERY/mcp")
SID_PROXY=$(init_session "http://127.0.0.1:$PROXY_EVERY/mcp" "$TOKEN_EVERY")

rss_kb() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }

# One wrk run; prints "req/s p50_ms p99_ms requests errors".
run_wrk() { # url auth session
  local out
  out=$(BENCH_AUTH="$2" BENCH_SESSION="$3" wrk -t2 -c16 -d"$DURATION" --latency -s bench/tools-call.lua "$1")
  local rps p50 p99 n errs
  rps=$(awk '/Requests\/sec/{print $2}' <<<"$out")
  n=$(awk '/requests in/{print $1}' <<<"$out")
  p50=$(awk '$1=="50%"{print $2}' <<<"$out")
  p99=$(awk '$1=="99%"{print $2}' <<<"$out")
  errs=$(awk '/Non-2xx|Socket errors/{print}' <<<"$out" | tr '\n' ' ')
  echo "$rps $(to_ms "$p50") $(to_ms "$p99") $n ${errs:-none}"
}
to_ms() { # wrk prints 1.23ms / 456.00us / 1.20s
  awk -v v="$1" 'BEGIN{ if (v ~ /us$/) {sub(/us$/,"",v); printf "%.3f", v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v); printf "%.3f", v} else if (v ~ /s$/) {sub(/s$/,"",v); printf "%.3f", v*1000} else print v }'
}

declare -A RESULTS CPU
HZ=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # user + system, all threads
targets=(
  "fast:direct|http://127.0.0.1:$FAST/mcp||"
  "fast:nginx|http://127.0.0.1:$NGINX_FAST/mcp||"
  "fast:mcp-auth-proxy|http://127.0.0.1:$PROXY_FAST/mcp|Bearer $TOKEN_FAST|"
  "fast:nginx, access log on|http://127.0.0.1:$NGINX_LOGGED/mcp||"
  "fast:mcp-auth-proxy as installed (request log on)|http://127.0.0.1:$PROXY_DEFAULT/mcp|Bearer $TOKEN_DEFAULT|"
  "fast:mcp-auth-proxy --no-fast-lane|http://127.0.0.1:$PROXY_GENERAL/mcp|Bearer $TOKEN_GENERAL|"
  "fast:mcp-auth-proxy, 20-rule policy|http://127.0.0.1:$PROXY_POLICY/mcp|Bearer $TOKEN_POLICY|"
  "fast:mcp-auth-proxy, audit log on|http://127.0.0.1:$PROXY_AUDIT/mcp|Bearer $TOKEN_AUDIT|"
  "everything:direct|http://127.0.0.1:$EVERY/mcp||$SID_DIRECT"
  "everything:nginx|http://127.0.0.1:$NGINX_EVERY/mcp||$SID_NGINX"
  "everything:mcp-auth-proxy|http://127.0.0.1:$PROXY_EVERY/mcp|Bearer $TOKEN_EVERY|$SID_PROXY"
)
if [ -n "$BASELINE" ]; then
  targets=("${targets[@]:0:3}" "fast:baseline ($BASELINE)|http://127.0.0.1:$PROXY_BASELINE/mcp|Bearer $TOKEN_BASELINE|" "${targets[@]:3}")
fi
if [ -n "${PROXY_PG:-}" ]; then
  targets=("${targets[@]:0:3}" "fast:mcp-auth-proxy on PostgreSQL|http://127.0.0.1:$PROXY_PG/mcp|Bearer $TOKEN_PG|" "${targets[@]:3}")
fi
echo "rounds=$ROUNDS duration=$DURATION wrk -t2 -c16; $(nproc) cores; $(uname -r)" >&2
for round in $(seq "$ROUNDS"); do
  for t in "${targets[@]}"; do
    name=${t%%|*}; rest=${t#*|}; url=${rest%%|*}; rest=${rest#*|}; auth=${rest%%|*}; sid=${rest#*|}
    port=${url#http://127.0.0.1:}; pid=${PID_OF[${port%%/*}]}
    before=$(cpu_ticks "$pid")
    r=$(run_wrk "$url" "$auth" "$sid")
    after=$(cpu_ticks "$pid")
    # The serving process's CPU (user and kernel) per request, in µs.
    read -r _ _ _ n _ <<<"$r"
    cpu=$(awk -v t=$((after - before)) -v hz="$HZ" -v n="$n" 'BEGIN{printf "%.1f", t * 1e6 / hz / n}')
    echo "round $round $name: $r, ${cpu} µs CPU per request" >&2
    RESULTS[$name]+="$r;"
    CPU[$name]+="$cpu "
  done
done

median_spread() { # list of numbers → "median (min–max)"
  tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{a[NR]=$1} END{m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.2f (%.2f–%.2f)", m, a[1], a[NR]}'
}
echo
echo "| upstream | path | req/s | p50 ms | p99 ms | CPU µs per request | errors |"
echo "|---|---|---|---|---|---|---|"
for t in "${targets[@]}"; do
  name=${t%%|*}
  IFS=';' read -ra runs <<<"${RESULTS[$name]}"
  rps=""; p50=""; p99=""; errs=""
  for r in "${runs[@]}"; do
    read -r a b c _ d <<<"$r"; rps+="$a "; p50+="$b "; p99+="$c "; [ "$d" != none ] && errs+="$d "
  done
  echo "| ${name%%:*} | ${name#*:} | $(median_spread "$rps") | $(median_spread "$p50") | $(median_spread "$p99") | $(median_spread "${CPU[$name]}") | ${errs:-none} |"
done
echo
echo "RSS after the runs: mcp-auth-proxy (fast) $(rss_kb "$PROXY_FAST_PID") KiB, mcp-auth-proxy (everything) $(rss_kb "$PROXY_EVERY_PID") KiB, nginx front worker $(rss_kb "$(pgrep -P "$(cat "$work/front.pid")" | head -1)") KiB"
if [ -n "${PROXY_PG:-}" ]; then
  echo
  echo "The store's share (bench/store.mjs, $ROUNDS rounds, interleaved):"
  echo
  PASSWORD=$PASSWORD node bench/store.mjs "$ROUNDS" "sled=http://127.0.0.1:$STORE_SLED" "PostgreSQL=http://127.0.0.1:$STORE_PG"
fi
