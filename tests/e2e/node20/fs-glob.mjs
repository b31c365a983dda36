// `fs` as Node 22 has it, for tools that need `fs.globSync` on Node 20: everything of
// node:fs, plus a small globSync (`*`, `**`, `?` and `{a,b}`; `cwd` option; sorted paths).
import fs from 'node:fs';
import path from 'node:path';

export * from 'node:fs';
export default { ...fs, globSync };

function toRegExp(pattern) {
  let re = '';
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i];
    if (c === '*' && pattern[i + 1] === '*') {
      re += pattern[i + 2] === '/' ? '(?:.*/)?' : '.*';
      i += pattern[i + 2] === '/' ? 2 : 1;
    } else if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else if (c === '{') {
      const end = pattern.indexOf('}', i);
      re += `(?:${pattern.slice(i + 1, end).split(',').map((s) => s.replace(/[.+^$()|[\]\\]/g, '\\$&')).join('|')})`;
      i = end;
    } else re += c.replace(/[.+^$()|[\]\\]/g, '\\$&');
  }
  return new RegExp(`^${re}$`);
}

function walk(dir, prefix, out) {
  let entries;
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true });
  } catch {
    return;
  }
  for (const e of entries) {
    const rel = prefix ? `${prefix}/${e.name}` : e.name;
    out.push(rel);
    if (e.isDirectory()) walk(path.join(dir, e.name), rel, out);
  }
}

export function globSync(patterns, options = {}) {
  const cwd = options.cwd ? String(options.cwd) : process.cwd();
  const out = new Set();
  for (const pattern of [patterns].flat()) {
    const absolute = path.isAbsolute(pattern);
    const base = absolute ? '/' : cwd;
    const rel = absolute ? pattern.slice(1) : pattern.replace(/^\.\//, '');
    const re = toRegExp(rel);
    const all = [];
    walk(base, '', all);
    for (const p of all) if (re.test(p)) out.add(absolute ? `/${p}` : p);
  }
  return [...out].sort();
}
