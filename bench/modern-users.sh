#!/usr/bin/env bash
# The bridge's memory for each user's MCP 2026-07-28 child: see bench/modern-users.mjs.
#
# Usage: bash bench/modern-users.sh [USERS]
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in node cargo; do command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }; done
[ -d tests/e2e/node_modules ] || (cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error)
cargo build --release --locked -q
MCP_AUTH_PROXY_BIN="$(pwd)/target/release/mcp-auth-proxy" node bench/modern-users.mjs "${1:-40}"
