// The end-to-end harness: starts our binary in front of real MCP servers, and drives the
// sign-in pages like a browser (cookies kept, forms posted). Later suites reuse both.

import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';

const require = createRequire(import.meta.url);

export const ROOT = path.resolve(import.meta.dirname, '../..');
export const BIN = process.env.MCP_AUTH_PROXY_BIN ?? path.join(ROOT, 'target/debug/mcp-auth-proxy');
export const PASSWORD = 'e2e correct horse battery';

/** A port that was free a moment ago (see `freePorts`). */
export async function freePort() {
  return (await freePorts(1))[0];
}

/** The kernel's ephemeral range (outgoing connections take their local ports from it). */
function ephemeralRange() {
  try {
    const [low, high] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
    if (low > 0 && high >= low) return [low, high];
  } catch {
    // Not Linux: the IANA range.
  }
  return [49152, 65535];
}

/**
 * `n` different ports that were free a moment ago, for a process to bind later. Chosen
 * below the ephemeral range, so no outgoing connection (ours or another process's) can take
 * one meanwhile, and all held until every one is chosen.
 */
export async function freePorts(n) {
  const [low] = ephemeralRange();
  const floor = Math.max(1024, low - 12000);
  const held = [];
  for (let tries = 0; held.length < n && tries < 1000; tries++) {
    const port = floor + Math.floor(Math.random() * (low - floor));
    const srv = await new Promise((resolve) => {
      const s = net.createServer();
      s.once('error', () => resolve(null));
      s.listen(port, '127.0.0.1', () => resolve(s));
    });
    if (srv) held.push(srv);
  }
  if (held.length < n) throw new Error(`no ${n} free ports below ${low}`);
  const ports = held.map((srv) => srv.address().port);
  await Promise.all(held.map((srv) => new Promise((resolve) => srv.close(resolve))));
  return ports;
}

/** Spawns a process and resolves once a line of its stderr or stdout matches `ready`. */
function spawnUntil(command, args, { env = {}, ready, timeoutMs = 30_000, name }) {
  const child = spawn(command, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const lines = [];
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${name} did not become ready in ${timeoutMs} ms:\n${lines.join('\n')}`));
    }, timeoutMs);
    let done = false;
    const onLine = (line) => {
      lines.push(line);
      if (!done) {
        const m = line.match(ready);
        if (m) {
          done = true;
          clearTimeout(timer);
          resolve({ child, match: m, lines });
        }
      }
    };
    readline.createInterface({ input: child.stderr }).on('line', onLine);
    readline.createInterface({ input: child.stdout }).on('line', onLine);
    child.once('exit', (code, signal) => {
      if (!done) {
        clearTimeout(timer);
        reject(new Error(`${name} exited (${code ?? signal}) before it was ready:\n${lines.join('\n')}`));
      }
    });
  });
}

/** Stops a child: SIGTERM, then SIGKILL after a grace period. */
export async function stopChild(child, graceMs = 5000) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

/** The command line of `@modelcontextprotocol/server-everything` over stdio, run with node. */
export function everythingStdio() {
  return [process.execPath, require.resolve('@modelcontextprotocol/server-everything/dist/index.js'), 'stdio'];
}

/** `@modelcontextprotocol/server-everything` in its Streamable HTTP mode, run with node. */
export async function startEverything() {
  const port = await freePort();
  const entry = require.resolve('@modelcontextprotocol/server-everything/dist/index.js');
  const { child } = await spawnUntil(process.execPath, [entry, 'streamableHttp'], {
    env: { PORT: String(port) },
    ready: /listening on port/i,
    name: 'server-everything',
  });
  return { url: `http://127.0.0.1:${port}/mcp`, port, child, stop: () => stopChild(child) };
}

/**
 * A 2026-07-28 `tools/call` of tool `name`, posted to `url` with `token` as a stateless
 * request: the `_meta` envelope (with the client's `capabilities`) and the headers the
 * revision requires, besides `headers`; `params` adds to the call's parameters (a retry's
 * `requestState` and `inputResponses`). Resolves to the status and the JSON body.
 */
export async function statelessToolCall(url, token, { id, name, args = {}, capabilities = {}, params = {}, headers = {} }) {
  const r = await fetch(url, {
    method: 'POST',
    headers: {
      authorization: `Bearer ${token}`,
      'content-type': 'application/json',
      accept: 'application/json',
      'mcp-protocol-version': '2026-07-28',
      'mcp-method': 'tools/call',
      'mcp-name': name,
      ...headers,
    },
    body: JSON.stringify({
      jsonrpc: '2.0',
      id,
      method: 'tools/call',
      params: {
        name,
        arguments: args,
        ...params,
        _meta: {
          'io.modelcontextprotocol/protocolVersion': '2026-07-28',
          'io.modelcontextprotocol/clientCapabilities': capabilities,
        },
      },
    }),
  });
  return { status: r.status, body: await r.json() };
}

/**
 * Our binary. `backend` is an upstream URL (or nothing); `args` are extra flags. The
 * external URL is the loopback address it listens on, so every URL it advertises works here.
 */
export async function startProxy({ backend, command, args = [], env = {}, password = PASSWORD, port, externalUrl } = {}) {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'mcp-auth-proxy-e2e-'));
  port ??= await freePort();
  const origin = `http://127.0.0.1:${port}`;
  const argv = [
    '--listen', `127.0.0.1:${port}`,
    '--external-url', externalUrl ?? origin,
    '--data-path', dataDir,
    ...(password === null ? [] : ['--password', password]),
    ...args,
    ...(backend ? [backend] : []),
    ...(command ? ['--', ...command] : []),
  ];
  const { child, lines } = await spawnUntil(BIN, argv, {
    env: { RUST_LOG: 'info', ...env },
    ready: /listening on (http:\/\/[^\s"]+)/,
    name: 'mcp-auth-proxy',
  });
  return {
    origin,
    base: origin,
    resource: `${origin}/mcp`,
    child,
    logs: lines,
    url: (p) => `${origin}${p}`,
    stop: async () => {
      await stopChild(child);
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/**
 * A browser without JavaScript: keeps cookies per origin, follows our 303s, fills our login
 * and consent forms. `authorize()` returns the URL the browser is finally sent to (the
 * client's redirect URI with `code` or `error`).
 */
export class Browser {
  constructor() {
    this.cookies = new Map();
  }

  cookieHeader(url) {
    const jar = this.cookies.get(new URL(url).origin);
    return jar ? [...jar].map(([k, v]) => `${k}=${v}`).join('; ') : '';
  }

  keepCookies(url, res) {
    const origin = new URL(url).origin;
    const jar = this.cookies.get(origin) ?? new Map();
    for (const c of res.headers.getSetCookie()) {
      const [pair, ...attrs] = c.split(';');
      const eq = pair.indexOf('=');
      const name = pair.slice(0, eq).trim();
      const value = pair.slice(eq + 1).trim();
      if (attrs.some((a) => a.trim().toLowerCase() === 'max-age=0')) jar.delete(name);
      else jar.set(name, value);
    }
    this.cookies.set(origin, jar);
  }

  async fetch(url, init = {}) {
    const headers = { ...(init.headers ?? {}) };
    const cookie = this.cookieHeader(url);
    if (cookie) headers.cookie = cookie;
    const res = await fetch(url, { ...init, headers, redirect: 'manual' });
    this.keepCookies(url, res);
    return res;
  }

  async postForm(url, html, fields) {
    const form = new URLSearchParams();
    for (const name of ['csrf', 'req']) {
      const v = hiddenField(html, name);
      if (v !== undefined) form.set(name, v);
    }
    for (const [k, v] of Object.entries(fields)) form.set(k, v);
    return this.fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: form.toString(),
    });
  }

  /**
   * With `idp: { origin, login }`, signs in at that OpenID provider (any form it shows is
   * filled: `login` and a password, or just submitted, as its consent is) instead of with our
   * password. A 403 "not allowed" page of ours is left through its link back to the client.
   */
  async authorize(authUrl, { password = PASSWORD, decision = 'approve', idp } = {}) {
    let url = authUrl;
    const ours = new URL(authUrl).origin;
    for (let hop = 0; hop < 20; hop++) {
      let res = await this.fetch(url);
      const here = new URL(url).origin;
      if (idp && here === idp.origin && res.status === 200) {
        res = await this.submitFirstForm(url, await res.text(), { login: idp.login, password: 'any' });
      } else if (res.status === 403) {
        const html = await res.text();
        const back = html.match(/<a class="button" href="([^"]*)" data-return>/);
        if (!back) throw new Error(`refused at ${url}:\n${html}`);
        return back[1].replaceAll('&amp;', '&');
      } else if (res.status === 200) {
        const html = await res.text();
        const button = idp && html.match(/href="(\/\.auth\/oidc\/login[^"]*)"/);
        if (button) {
          url = new URL(button[1].replaceAll('&amp;', '&'), ours).href;
          continue;
        }
        if (html.includes('name="password"')) {
          res = await this.postForm(new URL('/.auth/login', ours).href, html, { password });
        } else if (html.includes('name="decision"')) {
          res = await this.postForm(new URL('/.auth/consent', ours).href, html, { decision });
        } else {
          throw new Error(`unexpected page at ${url}:\n${html}`);
        }
      }
      if (res.status !== 303 && res.status !== 302) {
        throw new Error(`unexpected ${res.status} at ${url}: ${await res.text()}`);
      }
      const next = new URL(res.headers.get('location'), url);
      if (next.origin !== ours && next.origin !== idp?.origin) return next.href;
      url = next.href;
    }
    throw new Error('the sign-in flow did not end');
  }

  /** Posts the first form of a page with its inputs' values, overridden by `fields`. */
  async submitFirstForm(url, html, fields) {
    const form = html.match(/<form[^>]*action="([^"]*)"[^>]*>([\s\S]*?)<\/form>/);
    if (!form) throw new Error(`no form at ${url}:\n${html}`);
    const body = new URLSearchParams();
    for (const input of form[2].matchAll(/<input[^>]*>/g)) {
      const name = input[0].match(/name="([^"]*)"/)?.[1];
      if (!name) continue;
      body.set(name, fields[name] ?? input[0].match(/value="([^"]*)"/)?.[1] ?? '');
    }
    return this.fetch(new URL(form[1].replaceAll('&amp;', '&'), url).href, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: body.toString(),
    });
  }
}

/** The value of a hidden input in our pages. */
export function hiddenField(html, name) {
  const m = html.match(new RegExp(`name="${name}" value="([^"]*)"`));
  return m ? m[1].replaceAll('&#43;', '+').replaceAll('&amp;', '&') : undefined;
}

/** Sorts object keys recursively, so two JSON documents compare by content. */
export function canonical(v) {
  if (Array.isArray(v)) return v.map(canonical);
  if (v && typeof v === 'object') return Object.fromEntries(Object.keys(v).sort().map((k) => [k, canonical(v[k])]));
  return v;
}

/** Pids of a process's children (from /proc). */
export function childrenOf(pid) {
  const out = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid) out.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

/** Whether `cond()` holds within `ms`, asked every 100 ms (a process's log line, say, which
 * arrives on its own pipe after the answer it belongs to). */
export async function waitFor(cond, ms = 5000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (cond()) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  return cond();
}
