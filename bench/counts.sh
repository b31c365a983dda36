#!/usr/bin/env bash
# What a proxied `tools/call` costs mcp-auth-proxy's fast lane and nginx, counted rather than
# timed: the serving process's system calls (`strace -c -f` over a wrk run, divided by the
# requests wrk made) and its instructions in user space (valgrind's callgrind over POSTS
# sequential posts). Unlike req/s and CPU time, neither count moves with the load other
# tenants put on the machine. Four fronts of the same fast upstream as bench/run.sh's: our
# proxy as installed (request log on) and with RUST_LOG=warn, nginx with and without its
# access log.
#
# Usage: bash bench/counts.sh [POSTS] [SECONDS]     (needs: nginx, wrk, strace, valgrind, node)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
POSTS=${1:-2000}
SECS=${2:-5}
for tool in nginx wrk strace valgrind callgrind_control node curl python3; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
front_bench_setup

UP=$(free_port)
fast_upstream upstream "$UP"
# nginx as the front: logged is "on" or "off".
nginx_front() { # name port logged
  local log=off
  [ "$3" = on ] && log="$work/$1/access.log"
  nginx_conf "$1" "
  upstream fast { server 127.0.0.1:$UP; keepalive 64; }
  server {
    listen 127.0.0.1:$2;
    access_log $log;
    location / {
      proxy_pass http://fast; proxy_http_version 1.1; proxy_set_header Connection \"\";
      proxy_buffering off;
    }
  }"
}
# Our proxy on the fast upstream, its request log as RUST_LOG says (unset: as installed).
proxy() { # port data [wrapper…]
  local log=(env -u RUST_LOG)
  [ -n "${RUST_LOG_FOR:-}" ] && log=(env RUST_LOG="$RUST_LOG_FOR")
  "${log[@]}" "${@:3}" "$BIN" --listen "127.0.0.1:$1" --external-url "http://127.0.0.1:$1" \
    --data-path "$2" --password bench-password "http://127.0.0.1:$UP/mcp" >"$2.log" 2>&1 &
  pids+=($!)
}
wait_for() { for _ in $(seq 600); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.2; done; exit 1; }

# System calls per request of PID while wrk loads URL (after a warm-up run).
syscalls() { # pid url auth
  BENCH_AUTH="$3" wrk -t2 -c16 -d2s -s bench/tools-call.lua "$2" >/dev/null
  timeout -s INT $((SECS + 2)) strace -c -f -p "$1" -o "$work/strace.txt" 2>/dev/null & local tracer=$!
  sleep 0.5
  local n
  n=$(BENCH_AUTH="$3" wrk -t2 -c16 -d"${SECS}s" -s bench/tools-call.lua "$2" | awk '/requests in/{print $1}')
  wait "$tracer" || true
  # "all (call n, call n, …)", the calls made at least once in twenty requests, most first.
  awk -v n="$n" '$4 ~ /^[0-9]+$/ && $NF != "total" { printf "%s %.2f\n", $NF, $4 / n }' \
    "$work/strace.txt" | sort -k2 -nr | awk '{ all += $2; if ($2 >= 0.05) some = some (some ? ", " : "") $1 " " $2 }
      END { printf "%.2f (%s)", all, some }'
}
# Instructions per request of a front started under callgrind (out file OUT), POSTS posts.
instructions() { # pid out url token
  node bench/calls.mjs "$3" "$4" legacy 200
  callgrind_control -z "$1" >/dev/null 2>&1
  node bench/calls.mjs "$3" "$4" legacy "$POSTS"
  callgrind_control -d counted "$1" >/dev/null 2>&1
  sleep 1
  awk -v n="$POSTS" '/^summary:|^totals:/{printf "%d", $2 / n; exit}' "$2.1"
}
callgrind() { echo valgrind --tool=callgrind --callgrind-out-file="$1" --dump-instr=no; }

row() { echo "| $1 | $2 | $3 |"; }
echo "| front | system calls per request | instructions per request |"
echo "|---|---|---|"
for log in on off; do
  # Ours: one process counted by strace, one under callgrind.
  P=$(free_port); V=$(free_port)
  level=""
  if [ $log = off ]; then level=warn; fi
  RUST_LOG_FOR=$level proxy "$P" "$work/data-$log"
  PID=${pids[-1]}
  # shellcheck disable=SC2046 # the wrapper's words
  RUST_LOG_FOR=$level proxy "$V" "$work/data-cg-$log" $(callgrind "$work/cg-$log")
  VPID=${pids[-1]}
  wait_for "$P"; wait_for "$V"
  TOKEN=$(node bench/token.mjs "http://127.0.0.1:$P" bench-password)
  VTOKEN=$(node bench/token.mjs "http://127.0.0.1:$V" bench-password)
  label="mcp-auth-proxy, request log $log"
  [ $log = on ] && label="mcp-auth-proxy as installed (request log on)"
  row "$label" "$(syscalls "$PID" "http://127.0.0.1:$P/mcp" "Bearer $TOKEN")" \
    "$(instructions "$VPID" "$work/cg-$log" "http://127.0.0.1:$V/mcp" "$VTOKEN")"
  kill "$PID" "$VPID"
  # nginx: one front counted by strace on its worker, one run by valgrind in the foreground
  # process (no master, no daemon).
  P=$(free_port); V=$(free_port)
  nginx_front "front-$log" "$P" "$log"
  WORKER=$(pgrep -P "$(cat "$work/front-$log.pid")" | head -1)
  NGINX_MAIN="daemon off; master_process off;" NGINX_NO_START=1 nginx_front "cg-front-$log" "$V" "$log"
  # shellcheck disable=SC2046
  $(callgrind "$work/cg-nginx-$log") nginx -c "$work/cg-front-$log.conf" >/dev/null 2>&1 &
  pids+=($!); VPID=$!
  wait_for "$P"; wait_for "$V"
  row "nginx, access log $log" "$(syscalls "$WORKER" "http://127.0.0.1:$P/mcp" "")" \
    "$(instructions "$VPID" "$work/cg-nginx-$log" "http://127.0.0.1:$V/mcp" none)"
done
echo
echo "(Our proxy checks bearer tokens with SHA-256, which valgrind runs in software; the CPU's"
echo "SHA extensions do those few thousand instructions in a few hundred.)"
