// Used by bench/instructions.sh and bench/counts.sh.
// N sequential tools/call echo requests, legacy (with a session, if given) or stateless
// (2026-07-28).
const [url, token, kind, n, session] = process.argv.slice(2);
const legacy = kind === 'legacy';
for (let i = 1; i <= Number(n); i++) {
  const headers = {
    authorization: `Bearer ${token}`,
    'content-type': 'application/json',
    accept: 'application/json, text/event-stream',
  };
  const params = { name: 'echo', arguments: { message: 'bench' } };
  if (legacy) {
    headers['mcp-protocol-version'] = '2025-06-18';
    if (session) headers['mcp-session-id'] = session;
  } else {
    Object.assign(headers, { 'mcp-protocol-version': '2026-07-28', 'mcp-method': 'tools/call', 'mcp-name': 'echo' });
    params._meta = { 'io.modelcontextprotocol/protocolVersion': '2026-07-28', 'io.modelcontextprotocol/clientCapabilities': {} };
  }
  const r = await fetch(url, { method: 'POST', headers, body: JSON.stringify({ jsonrpc: '2.0', id: i, method: 'tools/call', params }) });
  const text = await r.text();
  if (r.status !== 200 || !text.includes('bench')) throw new Error(`${r.status} ${text}`);
}
