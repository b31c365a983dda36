#!/usr/bin/env bash
# Soak: SECONDS (default 600) of mixed load on one proxy bridging server-everything (stdio):
# sign-ins with a refresh each, tool calls on sessions that are closed and reopened, SSE
# streams opened and dropped, stateless 2026-07-28 calls (bench/soak.mjs says exactly what).
# Reports every count and error, and the proxy's RSS over time with its slope after warm-up
# (children excluded); then the proxy's RSS once the load has stopped and idle sessions
# have ended.
#
# Usage: bash bench/soak.sh [SECONDS]
# SOAK_PROXY_ARGS adds flags to the proxy's command line: short lifetimes, say, so that
# sign-ins' records expire (and are swept) as fast as they are made and the store stops
# growing (BENCHMARKS.md, "Soak"). SOAK_POSTGRES=1 keeps the store in a throwaway
# PostgreSQL cluster (bench/lib.sh) instead of the embedded one, and reports when the
# proxy's connections to it changed in number, with its RSS then (sampled every 2 s).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
SECONDS_=${1:-600}
PASSWORD=bench-password
for tool in node curl python3; do command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }; done
stdio_bench_setup
PORT=$(free_port)
read -r -a extra <<<"${SOAK_PROXY_ARGS:-}"
# The load's clients each hold one access token for the whole run: past the default
# lifetime (1 h) every call would be a 401. A longer run lengthens it, unless told.
# A lifetime given in SOAK_PROXY_ARGS (`--flag value` or `--flag=value`) or ACCESS_TOKEN_TTL
# is left alone: the proxy takes the last of a flag given twice, and a flag over the variable.
if [ "$SECONDS_" -gt 3000 ] && [ -z "${ACCESS_TOKEN_TTL:-}" ] &&
  [[ " ${extra[*]} " != *" --access-token-ttl "* ]] &&
  [[ " ${extra[*]} " != *" --access-token-ttl="* ]]; then
  extra+=(--access-token-ttl "$((SECONDS_ + 600))s")
  echo "a run of ${SECONDS_} s: --access-token-ttl $((SECONDS_ + 600))s"
fi
if [ "${SOAK_POSTGRES:-0}" = 1 ]; then
  start_postgres
  REPOSITORY_DSN=$PG_DSN ENCRYPTION_KEY=$(openssl rand -base64 32)
  export REPOSITORY_DSN ENCRYPTION_KEY
  extra+=(--repository-backend postgres)
fi
"$BIN" --listen "127.0.0.1:$PORT" --external-url "http://127.0.0.1:$PORT" --data-path "$work/data" \
  --password "$PASSWORD" --rate-limit 0 --trusted-proxies 127.0.0.1 --max-sessions 100 --session-idle-timeout 30s \
  "${extra[@]}" -- node "$EVERYTHING" stdio >"$work/proxy.log" 2>&1 &
PID=$!; pids+=("$PID")
wait_port "$PORT"
if [ "${SOAK_POSTGRES:-0}" = 1 ]; then
  # The proxy's connections to the cluster: its pool grows with the load's concurrency, and
  # each connection is memory the proxy holds (BENCHMARKS.md, "Soak").
  ( started=$(date +%s)
    while kill -0 "$PID" 2>/dev/null; do
      n=$(ss -tnpH state established "dst 127.0.0.1:$PG_PORT" 2>/dev/null | grep -c "pid=$PID,") || true
      echo "$(($(date +%s) - started)) $n $(awk '/VmRSS/{print $2}' "/proc/$PID/status" 2>/dev/null)"
      sleep 2
    done >"$work/connections" ) &
  pids+=("$!")
fi
node bench/soak.mjs "http://127.0.0.1:$PORT" "$PASSWORD" "$PID" "$SECONDS_"
echo "children of the proxy after the load: $(pgrep -P "$PID" | wc -l)"
[ -d "$work/data/store" ] && echo "the store on disk after the load: $(du -sk "$work/data/store" | cut -f1) KiB"
sleep 40
echo "after 40 s idle (sessions idle out after 30 s): proxy RSS $(awk '/VmRSS/{print $2}' "/proc/$PID/status") KiB, $(pgrep -P "$PID" | wc -l) children"
if [ -f "$work/connections" ]; then
  echo "the proxy's connections to PostgreSQL when their number changed (seconds, connections, RSS KiB):"
  awk '$2 != last { print "  " $0; last = $2 }' "$work/connections"
fi
grep -c ' ERROR ' "$work/proxy.log" | sed 's/^/proxy log ERROR lines: /' || true
