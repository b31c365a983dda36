#!/usr/bin/env bash
# Instructions the proxy executes per `tools/call` (echo, server-everything over stdio): a
# legacy session's call against a stateless MCP 2026-07-28 call, counted by valgrind's
# callgrind in the proxy alone (the child and the client are not counted). Unlike req/s,
# the counts barely move with the machine's load (within about 1% between runs).
# With BENCH_POLICY set to a policy file (bench/policy-20.toml), the relay judges each call
# against it and reads each answer.
#
# Usage: [BENCH_POLICY=FILE] bash bench/instructions.sh [CALLS]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
N=${1:-1000}
for tool in valgrind callgrind_control node curl python3; do command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }; done
(cd bench/node && npm ci --no-audit --no-fund --loglevel=error)
cargo build --release --locked -q
EVERYTHING="$(pwd)/bench/node/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
work=$(mktemp -d)
PORT=$(free_port)
valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" --dump-instr=no \
  target/release/mcp-auth-proxy --listen "127.0.0.1:$PORT" --external-url "http://127.0.0.1:$PORT" \
  --data-path "$work/data" --password bench-password ${BENCH_POLICY:+--policy-file "$BENCH_POLICY"} \
  -- node "$EVERYTHING" stdio >"$work/proxy.log" 2>&1 &
PID=$!
cleanup() { kill "$PID" 2>/dev/null || true; sleep 1; rm -rf "$work"; }
trap cleanup EXIT
for _ in $(seq 600); do curl -s -o /dev/null "http://127.0.0.1:$PORT/healthz" && break; sleep 0.2; done
URL="http://127.0.0.1:$PORT/mcp"
TOKEN=$(node bench/token.mjs "http://127.0.0.1:$PORT" bench-password)
SID=$(init_session "$URL" "$TOKEN")
# Both paths warm (the user's modern child starts at the first stateless call).
node bench/calls.mjs "$URL" "$TOKEN" legacy 50 "$SID"
node bench/calls.mjs "$URL" "$TOKEN" modern 50
counted() { # label number: dumps what was counted since the last zero (callgrind numbers
  # its dumps from 1); prints its total
  callgrind_control -d "$1" "$PID" >/dev/null
  sleep 1
  awk '/^summary:|^totals:/{print $2; exit}' "$work/cg.out.$2"
}
callgrind_control -z "$PID" >/dev/null
node bench/calls.mjs "$URL" "$TOKEN" legacy "$N" "$SID"
L=$(counted legacy 1)
callgrind_control -z "$PID" >/dev/null
node bench/calls.mjs "$URL" "$TOKEN" modern "$N"
M=$(counted modern 2)
echo "legacy session call:      $((L / N)) instructions per call ($N calls)"
echo "stateless 2026-07-28 call: $((M / N)) instructions per call ($N calls)"
