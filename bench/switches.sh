#!/usr/bin/env bash
# Context switches of the serving process per proxied `tools/call`, ours as installed
# (request log on) against nginx with its access log, both in front of bench/run.sh's fast
# upstream: voluntary (the thread waited) and involuntary (the scheduler took the core),
# summed over the process's threads from /proc/<pid>/task/*/status around a 5 s
# `wrk -t2 -c16` run. With OURS_PREFIX=setsid our proxy runs in a session of its own, as
# the daemonized nginx does (on kernels with autogroup scheduling a session is a group).
#
# Usage: bash bench/switches.sh [ROUNDS]     (needs: nginx, wrk, node)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
ROUNDS=${1:-2}
for tool in nginx wrk node curl python3; do command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }; done
front_bench_setup
UP=$(free_port)
fast_upstream upstream "$UP"
P=$(free_port)
# shellcheck disable=SC2086 # the prefix's words
${OURS_PREFIX:-} env -u RUST_LOG "$BIN" --listen "127.0.0.1:$P" --external-url "http://127.0.0.1:$P" \
  --data-path "$work/data" --password bench-password "http://127.0.0.1:$UP/mcp" >"$work/proxy.log" 2>&1 &
pids+=($!)
OURS=$!
N=$(free_port)
nginx_conf front "
  upstream fast { server 127.0.0.1:$UP; keepalive 64; }
  server {
    listen 127.0.0.1:$N;
    access_log $work/access.log;
    location / {
      proxy_pass http://fast; proxy_http_version 1.1; proxy_set_header Connection \"\";
      proxy_buffering off;
    }
  }"
WORKER=$(pgrep -P "$(cat "$work/front.pid")" | head -1)
wait_port "$P"
wait_port "$N"
TOKEN=$(node bench/token.mjs "http://127.0.0.1:$P" bench-password)
switches() { cat /proc/"$1"/task/*/status | awk '/^voluntary_ctxt/{v += $2} /^nonvoluntary_ctxt/{n += $2} END {print v, n}'; }
measure() { # label pid url auth
  BENCH_AUTH="$4" wrk -t2 -c16 -d2s -s bench/tools-call.lua "$3" >/dev/null
  local v0 n0 v1 n1 requests
  read -r v0 n0 < <(switches "$2")
  requests=$(BENCH_AUTH="$4" wrk -t2 -c16 -d5s -s bench/tools-call.lua "$3" | awk '/requests in/{print $1}')
  read -r v1 n1 < <(switches "$2")
  awk -v l="$1" -v r="$requests" -v v=$((v1 - v0)) -v n=$((n1 - n0)) \
    'BEGIN { printf "| %s | %.3f | %.3f |\n", l, v / r, n / r }'
}
echo "autogroups (kernel.sched_autogroup_enabled=$(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null || echo -)):" \
  "ours $(cat /proc/$OURS/autogroup 2>/dev/null), nginx $(cat /proc/"$WORKER"/autogroup 2>/dev/null)," \
  "wrk's $(cat /proc/self/autogroup 2>/dev/null)"
echo "| front | voluntary switches per request | involuntary |"
echo "|---|---|---|"
for _ in $(seq "$ROUNDS"); do
  measure "mcp-auth-proxy as installed" "$OURS" "http://127.0.0.1:$P/mcp" "Bearer $TOKEN"
  measure "nginx, access log on" "$WORKER" "http://127.0.0.1:$N/mcp" ""
done
