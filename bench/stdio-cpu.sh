#!/usr/bin/env bash
# Where the CPU of one stdio-bridge request goes: the proxy (user and kernel time, per
# thread), its child (server-everything) and the load generator (wrk), in microseconds per
# `tools/call` (echo), read from /proc over one wrk run like bench/stdio.sh's (-t2 -c16, one
# session). With ROUNDS > 1 each line is one round. On 2 cores the three share the machine,
# so the sum per request bounds what the bridge can serve.
#
# BENCH_PROXY_ARGS adds flags to the proxy's command line (say `--no-fast-lane`, to set the
# general stack against the fast lane on one build); BENCH_BIN picks the binary (bench/lib.sh).
#
# Usage: [BENCH_PROXY_ARGS=…] [BENCH_BIN=…] bash bench/stdio-cpu.sh [ROUNDS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
ROUNDS=${1:-3}
SECS=${2:-10}
for tool in wrk node curl python3; do command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }; done
stdio_bench_setup
read -r -a extra <<<"${BENCH_PROXY_ARGS:-}"
PORT=$(free_port)
"$BIN" --listen "127.0.0.1:$PORT" --external-url "http://127.0.0.1:$PORT" --data-path "$work/data" \
  --password bench-password "${extra[@]}" -- node "$EVERYTHING" stdio >"$work/proxy.log" 2>&1 &
PID=$!; pids+=("$PID")
wait_port "$PORT"
TOKEN=$(node bench/token.mjs "http://127.0.0.1:$PORT" bench-password)
SID=$(init_session "http://127.0.0.1:$PORT/mcp" "$TOKEN")
load() {
  BENCH_AUTH="Bearer $TOKEN" BENCH_SESSION="$SID" /usr/bin/time -f "%U %S" -o "$work/wrk.time" \
    wrk -t2 -c16 -d"${SECS}s" -s bench/tools-call.lua "http://127.0.0.1:$PORT/mcp" | awk '/Requests\/sec/{print $2}'
}
load >/dev/null # warm: the child's JIT, the token cache
CHILD=$(pgrep -P "$PID" | head -1)
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; } # user, system (clock ticks)
HZ=$(getconf CLK_TCK)
echo "| round | req/s | proxy user / sys µs | child user / sys µs | wrk user / sys µs | sum µs |"
echo "|---|---|---|---|---|---|"
for round in $(seq "$ROUNDS"); do
  read -r pu0 ps0 < <(ticks "$PID"); read -r cu0 cs0 < <(ticks "$CHILD")
  rps=$(load)
  read -r pu1 ps1 < <(ticks "$PID"); read -r cu1 cs1 < <(ticks "$CHILD")
  read -r wu ws < "$work/wrk.time"
  awk -v r="$round" -v rps="$rps" -v s="$SECS" -v hz="$HZ" -v pu=$((pu1 - pu0)) -v ps=$((ps1 - ps0)) \
    -v cu=$((cu1 - cu0)) -v cs=$((cs1 - cs0)) -v wu="$wu" -v ws="$ws" 'BEGIN {
      n = rps * s; t = 1e6 / hz / n; w = 1e6 / n
      printf "| %d | %.0f | %.1f / %.1f | %.1f / %.1f | %.1f / %.1f | %.1f |\n", r, rps,
        pu * t, ps * t, cu * t, cs * t, wu * w, ws * w, (pu + ps + cu + cs) * t + (wu + ws) * w }'
done
