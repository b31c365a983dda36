// For benchmarks that sign in hundreds of times from one machine: every request made with
// fetch carries an X-Forwarded-For address, a new one after each nextClient(), so the
// proxy (started with --trusted-proxies 127.0.0.1) counts each sign-in as another client
// and its per-client bounds (pending sign-ins, rate limits) do not stop the benchmark.
const direct = globalThis.fetch;
let client = 0;

export const forwardedFor = () => `10.0.${(client >> 8) & 255}.${client & 255}`;

globalThis.fetch = (url, init = {}) =>
  direct(url, { ...init, headers: { ...(init.headers ?? {}), 'x-forwarded-for': forwardedFor() } });

/** The next address; with `pool`, addresses repeat after that many (people come back). */
export function nextClient(pool) {
  client = pool ? (client + 1) % pool : client + 1;
}
