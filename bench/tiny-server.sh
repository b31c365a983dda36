#!/bin/sh
# A tiny stdio MCP server for the scale bench: a POSIX shell loop (about 1 MB per process,
# where a Node server takes 40 MB or more, so a thousand of them fit in memory). It answers
# initialize, ping, tools/list (one tool, "echo") and tools/call with "ok"; notifications get
# no answer. Good enough for the proxy's JSON-RPC as the bridge sends it (the id is the value
# after the first "id":), not a general JSON reader.
while IFS= read -r line; do
  case "$line" in
    *'"method":"notifications/'*) continue ;;
  esac
  id=${line#*\"id\":}
  id=${id%%[,\}]*}
  case "$line" in
    *'"method":"initialize"'*)
      printf '{"jsonrpc":"2.0","id":%s,"result":{"protocolVersion":"2025-06-18","capabilities":{"tools":{}},"serverInfo":{"name":"tiny","version":"1"}}}\n' "$id" ;;
    *'"method":"tools/list"'*)
      printf '{"jsonrpc":"2.0","id":%s,"result":{"tools":[{"name":"echo","inputSchema":{"type":"object"}}]}}\n' "$id" ;;
    *'"method":"tools/call"'*)
      printf '{"jsonrpc":"2.0","id":%s,"result":{"content":[{"type":"text","text":"ok"}]}}\n' "$id" ;;
    *)
      printf '{"jsonrpc":"2.0","id":%s,"result":{}}\n' "$id" ;;
  esac
done
