-- wrk script: POST a tools/call (echo) with a unique JSON-RPC id on every request.
-- From the environment: BENCH_AUTH (Authorization), BENCH_SESSION (Mcp-Session-Id), and
-- BENCH_PROTOCOL: a 2025 revision (the default, 2025-06-18), or 2026-07-28 for a stateless
-- call (no session; the version, client and capabilities in _meta, mirrored in headers).
local threads = {}

function setup(thread)
  thread:set("thread_id", #threads)
  table.insert(threads, thread)
end

function init(args)
  counter = 0
  base = (thread_id or 0) * 1000000000
  protocol = os.getenv("BENCH_PROTOCOL")
  if not protocol or protocol == "" then protocol = "2025-06-18" end
  stateless = protocol == "2026-07-28"
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Accept"] = "application/json, text/event-stream"
  wrk.headers["MCP-Protocol-Version"] = protocol
  if stateless then
    wrk.headers["Mcp-Method"] = "tools/call"
    wrk.headers["Mcp-Name"] = "echo"
  end
  local auth = os.getenv("BENCH_AUTH")
  if auth and auth ~= "" then wrk.headers["Authorization"] = auth end
  local session = os.getenv("BENCH_SESSION")
  if session and session ~= "" then wrk.headers["Mcp-Session-Id"] = session end
end

function request()
  counter = counter + 1
  local meta = ""
  if stateless then
    meta = ',"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28",'
      .. '"io.modelcontextprotocol/clientInfo":{"name":"wrk","version":"1"},'
      .. '"io.modelcontextprotocol/clientCapabilities":{}}'
  end
  local body = string.format(
    '{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"echo","arguments":{"message":"bench"}%s}}',
    base + counter, meta)
  return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
  if status ~= 200 then
    bad = (bad or 0) + 1
  end
end
