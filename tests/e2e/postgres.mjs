// A throwaway PostgreSQL cluster for the end-to-end suite (as tests/it/pg.rs does for the
// Rust tests): Debian's server, `initdb` in a temporary directory (as the `postgres` user
// when the suite runs as root), a free loopback port, trust on loopback only, stopped by
// `stop()`.

import { execFileSync } from 'node:child_process';
import { chownSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { freePort } from './harness.mjs';

function serverBin() {
  const versions = readdirSync('/usr/lib/postgresql').map(Number).filter(Number.isFinite).sort((a, b) => a - b);
  if (versions.length === 0) throw new Error('PostgreSQL is not installed (apt-get install postgresql)');
  return `/usr/lib/postgresql/${versions.at(-1)}/bin`;
}

function postgresIds() {
  const line = execFileSync('getent', ['passwd', 'postgres'], { encoding: 'utf8' }).trim();
  const [, , uid, gid] = line.split(':');
  return [Number(uid), Number(gid)];
}

export async function startPostgres() {
  const bin = serverBin();
  const root = process.getuid() === 0;
  const dir = mkdtempSync(path.join(os.tmpdir(), 'mcp-auth-proxy-pg-'));
  if (root) chownSync(dir, ...postgresIds());
  const run = (program, args) => {
    const [cmd, argv] = root ? ['runuser', ['-u', 'postgres', '--', path.join(bin, program), ...args]] : [path.join(bin, program), args];
    return execFileSync(cmd, argv, { cwd: dir, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  };
  const data = path.join(dir, 'data');
  run('initdb', ['-D', data, '-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--no-sync', '--no-instructions']);
  const port = await freePort();
  const options = `-p ${port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=${dir} -c fsync=off`;
  run('pg_ctl', ['-D', data, '-w', '-l', path.join(dir, 'server.log'), '-o', options, 'start']);
  run('createdb', ['-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', 'e2e']);
  return {
    dsn: `postgres://postgres@127.0.0.1:${port}/e2e`,
    stop() {
      try {
        run('pg_ctl', ['-D', data, '-w', '-m', 'immediate', 'stop']);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}
