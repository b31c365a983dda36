#!/usr/bin/env bash
# Benchmark of the stdio bridge: tools/call (echo) on server-everything (stdio),
# 16 connections sharing one MCP session (wrk -t2 -c16, unique JSON-RPC ids), through
# mcp-auth-proxy vs through supergateway --stateful (streamable HTTP), vs the same server
# driven straight over stdio with 16 requests in flight (the ceiling); and the same call as
# a stateless MCP 2026-07-28 request (no session, 16 connections) through the proxy.
# Interleaved rounds; median and spread. Then the proxy's memory per idle session (children
# excluded) and the children the proxy runs.
#
# Usage: bash bench/stdio.sh [ROUNDS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
ROUNDS=${1:-3}
SECS=${2:-10}
PASSWORD=bench-password
for tool in wrk node curl python3; do command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }; done
stdio_bench_setup

OURS=$(free_port); SHARED=$(free_port); SGW=$(free_port)
"$BIN" --listen "127.0.0.1:$OURS" --external-url "http://127.0.0.1:$OURS" --data-path "$work/data" \
  --password "$PASSWORD" --max-sessions 1000 -- node "$EVERYTHING" stdio >"$work/proxy.log" 2>&1 &
OURS_PID=$!; pids+=("$OURS_PID")
"$BIN" --listen "127.0.0.1:$SHARED" --external-url "http://127.0.0.1:$SHARED" --data-path "$work/data-shared" \
  --password "$PASSWORD" --max-sessions 1000 --stdio-mode shared -- node "$EVERYTHING" stdio >"$work/shared.log" 2>&1 &
SHARED_PID=$!; pids+=("$SHARED_PID")
node bench/node/node_modules/supergateway/dist/index.js --stdio "node $EVERYTHING stdio" \
  --outputTransport streamableHttp --stateful --port "$SGW" --streamableHttpPath /mcp --logLevel none \
  >"$work/sgw.log" 2>&1 &
pids+=($!)
wait_port "$OURS"; wait_port "$SHARED"; wait_port "$SGW"
TOKEN=$(node bench/token.mjs "http://127.0.0.1:$OURS" "$PASSWORD")
TOKEN_SHARED=$(node bench/token.mjs "http://127.0.0.1:$SHARED" "$PASSWORD")

SID_OURS=$(init_session "http://127.0.0.1:$OURS/mcp" "$TOKEN")
SID_SHARED=$(init_session "http://127.0.0.1:$SHARED/mcp" "$TOKEN_SHARED")
SID_SGW=$(init_session "http://127.0.0.1:$SGW/mcp")
# The user's child for stateless requests starts (and is initialized) at their first one:
# made here, as the sessions above are, so no round measures a child's start.
curl -sf -o /dev/null "http://127.0.0.1:$OURS/mcp" -H "Authorization: Bearer $TOKEN" \
  -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \
  -H 'MCP-Protocol-Version: 2026-07-28' -H 'Mcp-Method: tools/call' -H 'Mcp-Name: echo' \
  -d '{"jsonrpc":"2.0","id":0,"method":"tools/call","params":{"name":"echo","arguments":{"message":"warm"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}'

wrk_rps() { # url auth session [protocol]
  BENCH_AUTH="$2" BENCH_SESSION="$3" BENCH_PROTOCOL="${4:-}" wrk -t2 -c16 -d"${SECS}s" --latency -s bench/tools-call.lua "$1" \
    | awk '/Requests\/sec/{rps=$2} /Non-2xx/{bad=$NF} $1=="50%"{p50=$2} $1=="99%"{p99=$2} END{print rps, p50, p99, (bad?bad" non-2xx":"ok")}'
}
declare -A R
for round in $(seq "$ROUNDS"); do
  r=$(node bench/node/stdio-ceiling.mjs "$SECS" 16); echo "round $round straight-stdio: $r" >&2; R[stdio]+="$r "
  r=$(wrk_rps "http://127.0.0.1:$OURS/mcp" "Bearer $TOKEN" "$SID_OURS"); echo "round $round mcp-auth-proxy: $r" >&2; R[ours]+="${r%% *} "; R[ours_lat]+="${r#* };"
  r=$(wrk_rps "http://127.0.0.1:$OURS/mcp" "Bearer $TOKEN" "" 2026-07-28); echo "round $round mcp-auth-proxy-2026: $r" >&2; R[modern]+="${r%% *} "; R[modern_lat]+="${r#* };"
  r=$(wrk_rps "http://127.0.0.1:$SHARED/mcp" "Bearer $TOKEN_SHARED" "$SID_SHARED"); echo "round $round mcp-auth-proxy-shared: $r" >&2; R[shared]+="${r%% *} "; R[shared_lat]+="${r#* };"
  r=$(wrk_rps "http://127.0.0.1:$SGW/mcp" "" "$SID_SGW"); echo "round $round supergateway: $r" >&2; R[sgw]+="${r%% *} "; R[sgw_lat]+="${r#* };"
done
median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{a[NR]=$1} END{m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.1f (%.1f–%.1f)", m, a[1], a[NR]}'; }
echo
echo "| path | req/s (median, min–max) | p50 / p99 per round |"
echo "|---|---|---|"
echo "| straight stdio (ceiling) | $(median "${R[stdio]}") | — |"
echo "| mcp-auth-proxy | $(median "${R[ours]}") | ${R[ours_lat]} |"
echo "| mcp-auth-proxy, 2026-07-28 stateless | $(median "${R[modern]}") | ${R[modern_lat]} |"
echo "| mcp-auth-proxy --stdio-mode shared | $(median "${R[shared]}") | ${R[shared_lat]} |"
echo "| supergateway --stateful | $(median "${R[sgw]}") | ${R[sgw_lat]} |"

# Each path against the ceiling of its own round (the goal: at least 0.5x in every round).
ratios() { paste -d' ' <(tr ' ' '\n' <<<"$1" | grep -v '^$') <(tr ' ' '\n' <<<"${R[stdio]}" | grep -v '^$') \
  | awk '{printf "%s%.3fx", (NR > 1 ? ", " : ""), $1 / $2}'; }
echo
echo "against the ceiling, per round: session $(ratios "${R[ours]}"); stateless $(ratios "${R[modern]}"); shared $(ratios "${R[shared]}")"

# The children the proxy runs after all that: one for the legacy session, one for the user's
# stateless requests (every one of them), however many requests were made.
echo
echo "children of the proxy: $(pgrep -P "$OURS_PID" | wc -l) (one legacy session, one user's 2026-07-28 requests)"

# Memory per idle session: RSS growth of the proxy for N more sessions (children excluded).
N=50
sleep 1
before=$(awk '/VmRSS/{print $2}' "/proc/$OURS_PID/status")
for _ in $(seq $N); do init_session "http://127.0.0.1:$OURS/mcp" "$TOKEN" >/dev/null; done
sleep 2
after=$(awk '/VmRSS/{print $2}' "/proc/$OURS_PID/status")
echo
echo "proxy RSS: $before KiB before, $after KiB after $N more idle sessions: $(( (after - before) / N )) KiB per session"
before=$(awk '/VmRSS/{print $2}' "/proc/$SHARED_PID/status")
for _ in $(seq $N); do init_session "http://127.0.0.1:$SHARED/mcp" "$TOKEN_SHARED" >/dev/null; done
sleep 2
after=$(awk '/VmRSS/{print $2}' "/proc/$SHARED_PID/status")
echo "shared mode: proxy RSS $before KiB before, $after KiB after $N more idle sessions (one child in all): $(( (after - before) / N )) KiB per session"
