-- wrk script: POST a tools/call with a unique JSON-RPC id on every request.
-- Headers come from the environment: BENCH_AUTH (Authorization), BENCH_SESSION (Mcp-Session-Id).
local threads = {}

function setup(thread)
  thread:set("thread_id", #threads)
  table.insert(threads, thread)
end

function init(args)
  counter = 0
  base = (thread_id or 0) * 1000000000
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Accept"] = "application/json, text/event-stream"
  wrk.headers["MCP-Protocol-Version"] = "2025-06-18"
  local auth = os.getenv("BENCH_AUTH")
  if auth and auth ~= "" then wrk.headers["Authorization"] = auth end
  local session = os.getenv("BENCH_SESSION")
  if session and session ~= "" then wrk.headers["Mcp-Session-Id"] = session end
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"echo","arguments":{"message":"bench"}}}',
    base + counter)
  return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
  if status ~= 200 then
    bad = (bad or 0) + 1
  end
end
