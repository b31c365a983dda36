#!/usr/bin/env bash
# Scale, on this machine, with the limits raised here (ulimit -n, --max-sessions,
# --max-sessions-per-user, --max-connections):
#   1. SESSIONS concurrent MCP sessions on the stdio bridge, each with its own child (the
#      tiny shell server bench/tiny-server.sh: 1 000 Node children would not fit in memory),
#      each initialized and called once, then left idle: the proxy's memory per idle
#      session (children excluded), and the children's.
#   2. STREAMS idle SSE streams (GET /mcp) through the HTTP path to an upstream that holds
#      them open, over HTTP/1 (the fast lane; as many as the open-files limit allows) and
#      over HTTP/2 (the general stack): the proxy's memory per idle stream.
#   3. The time from initialize to the first tools/call answer of a new session on
#      server-everything, with and without --stdio-warm-spare (sessions 1.5 s apart, so the
#      spare has been replaced when the next one comes).
# Goals (issue 22): at most 64 KB per idle session and 16 KB per idle stream.
#
# Usage: bash bench/scale.sh [SESSIONS] [STREAMS]       (defaults 1000 and 10000)
#        SCALE_ONLY=sessions|streams|first-call bash bench/scale.sh …   (one part only)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
SESSIONS=${1:-1000}
STREAMS=${2:-10000}
PASSWORD=bench-password
for tool in node curl python3 sh; do command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }; done
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
# Each HTTP/1 stream holds two descriptors in the proxy (the client's connection and the
# upstream's), each HTTP/2 stream about one (the upstream's; a client connection carries
# 100): fewer streams than asked when the limit says so, and the run says it.
H1_STREAMS=$STREAMS
H2_STREAMS=$STREAMS
if [ $((STREAMS * 2 + 500)) -gt "$(ulimit -n)" ]; then
  H1_STREAMS=$(( ($(ulimit -n) - 500) / 2 ))
  echo "open files are limited to $(ulimit -n) here: $H1_STREAMS streams over HTTP/1 instead of $STREAMS" >&2
fi
if [ $((STREAMS + STREAMS / 100 + 500)) -gt "$(ulimit -n)" ]; then
  H2_STREAMS=$(( ($(ulimit -n) - 500) * 100 / 101 ))
  echo "open files are limited to $(ulimit -n) here: $H2_STREAMS streams over HTTP/2 instead of $STREAMS" >&2
fi
echo "open files allowed: $(ulimit -n)" >&2
stdio_bench_setup
rss() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
children_rss() { ps -o rss= --ppid "$1" | awk '{s+=$1} END{print s+0}'; }
# Starts the proxy on a free port with the given arguments; sets PORT and PID.
start() { # name args...
  local name=$1; shift
  PORT=$(free_port)
  "$BIN" --listen "127.0.0.1:$PORT" --external-url "http://127.0.0.1:$PORT" --data-path "$work/$name" \
    --password "$PASSWORD" --rate-limit 0 "$@" >"$work/$name.log" 2>&1 &
  PID=$!; pids+=("$PID")
  wait_port "$PORT"
}

# Whether part $1 runs (all of them unless SCALE_ONLY names one).
part() { [ -z "${SCALE_ONLY:-}" ] || [ "$SCALE_ONLY" = "$1" ]; }

# --- 1. sessions on the stdio bridge ----------------------------------------------------
if part sessions; then
  start sessions --max-sessions $((SESSIONS + 100)) --max-sessions-per-user $((SESSIONS + 100)) \
    --max-connections $((SESSIONS * 4 + 1000)) -- sh "$(pwd)/bench/tiny-server.sh"
  TOKEN=$(node bench/token.mjs "http://127.0.0.1:$PORT" "$PASSWORD")
  node bench/scale.mjs sessions "http://127.0.0.1:$PORT/mcp" "$TOKEN" 50 >/dev/null   # warm-up
  sleep 2
  before=$(rss "$PID")
  started=$(date +%s.%N)
  result=$(node bench/scale.mjs sessions "http://127.0.0.1:$PORT/mcp" "$TOKEN" "$SESSIONS")
  took=$(python3 -c "import time; print(f'{time.time() - $started:.1f}')")
  sleep 3
  after=$(rss "$PID")
  kids=$(pgrep -P "$PID" | wc -l)
  kids_rss=$(children_rss "$PID")
  per=$(awk -v a="$after" -v b="$before" -v n="$SESSIONS" 'BEGIN{printf "%.1f", (a - b) / n}')
  echo "sessions: $result in ${took}s; proxy RSS $before -> $after KiB: $per KiB per idle session; $kids children, $(( kids_rss / 1024 )) MiB together"
fi

# --- 2. idle SSE streams through the HTTP path ------------------------------------------
# Opens $2 idle streams with the driver mode $1 (streams: HTTP/1, a connection each;
# h2-streams: HTTP/2, 100 a connection) through a proxy of its own, and reports the
# proxy's memory per stream.
idle_streams() { # driver-mode count
  local name=$1 count=$2 up before after per
  up=$(free_port)
  node bench/scale.mjs upstream "$up" &
  pids+=($!)
  wait_port "$up"
  start "$name" --max-connections $((count + 2000)) "http://127.0.0.1:$up/mcp"
  TOKEN=$(node bench/token.mjs "http://127.0.0.1:$PORT" "$PASSWORD")
  SID=$(init_session "http://127.0.0.1:$PORT/mcp" "$TOKEN")
  # Warm-up streams, held open by their own driver.
  node bench/scale.mjs "$name" "http://127.0.0.1:$PORT/mcp" "$TOKEN" "$SID" 200 >"$work/$name-warm.out" &
  pids+=($!)
  until grep -q '^open' "$work/$name-warm.out"; do sleep 0.2; done
  sleep 2
  before=$(rss "$PID")
  node bench/scale.mjs "$name" "http://127.0.0.1:$PORT/mcp" "$TOKEN" "$SID" "$count" >"$work/$name.out" &
  pids+=($!)
  until grep -q '^open' "$work/$name.out"; do sleep 0.5; done
  sleep 3
  after=$(rss "$PID")
  per=$(awk -v a="$after" -v b="$before" -v n="$count" 'BEGIN{printf "%.2f", (a - b) / n}')
  echo "$name: $(cat "$work/$name.out"); proxy RSS $before -> $after KiB: $per KiB per idle stream"
  # Let go of this part's descriptors before the next: the drivers, the upstream, the proxy.
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
}
if part streams; then
  idle_streams streams "$H1_STREAMS"
  # Over HTTP/2 a client connection carries many streams, so the proxy holds about one
  # descriptor a stream (the upstream's) and the whole count fits where HTTP/1's does not.
  idle_streams h2-streams "$H2_STREAMS"
fi

# --- 3. time to the first tool call, with and without a warm spare ----------------------
if part first-call; then
  for spare in false true; do
    start "spare-$spare" "--stdio-warm-spare=$spare" --max-sessions 100 -- node "$EVERYTHING" stdio
    TOKEN=$(node bench/token.mjs "http://127.0.0.1:$PORT" "$PASSWORD")
    echo "first tool call, --stdio-warm-spare=$spare: $(node bench/scale.mjs first-call "http://127.0.0.1:$PORT/mcp" "$TOKEN" 15 1500)"
  done
fi
