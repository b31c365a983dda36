#!/usr/bin/env node
// A stand-in for the user's browser, for clients that "open" the authorization URL through
// $BROWSER (mcp-remote, the MCP Inspector): signs in with the harness's Browser and then
// visits the final redirect, which delivers the code to the client's local callback server.

import { appendFileSync } from 'node:fs';
import { Browser } from './harness.mjs';

const url = process.argv[2];
const log = process.env.E2E_BROWSER_LOG;
try {
  const back = await new Browser().authorize(url, {
    password: process.env.E2E_PASSWORD,
    decision: process.env.E2E_DECISION ?? 'approve',
  });
  if (log) appendFileSync(log, `${url}\n${back}\n`);
  const res = await fetch(back);
  await res.arrayBuffer();
  process.exit(0);
} catch (e) {
  if (log) appendFileSync(log, `error: ${e.stack}\n`);
  process.exit(1);
}
