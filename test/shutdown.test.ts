// Issue 5: graceful shutdown of the REAL server process (`node --import tsx src/server.ts`). On SIGTERM or SIGINT it
// stops accepting connections, lets in-flight requests finish within SHUTDOWN_GRACE_MS, then exits 0.
import { type ChildProcess, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { freePort } from './helpers/redis.js';
import { KEY_A, MODEL_PATH, type SimHandle, call, startGateway, startSimulator, waitFor, writeTenants } from './helpers/stack.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

let s: SimHandle;
const children = new Set<ChildProcess>();

beforeAll(async () => {
  s = await startSimulator(100);
});
afterEach(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  children.clear();
  s.sim.clearFaults();
  s.sim.clearRequests();
});
afterAll(async () => {
  await s.sim.close();
});

interface Server {
  url: string;
  prefix: string;
  child: ChildProcess;
  output: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

async function startServer(env: Record<string, string> = {}): Promise<Server> {
  const port = await freePort();
  const prefix = `shutdown:${randomUUID()}:`;
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/server.ts'], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: {
      PATH: process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin',
      HOME: process.env.HOME ?? '/tmp',
      UPSTREAM_BASE_URL: s.url,
      UPSTREAM_API_KEY: s.apiKey,
      TENANTS_FILE: writeTenants([{ id: 'team-a', keys: [KEY_A] }]),
      REDIS_URL: inject('redisUrl'),
      REDIS_KEY_PREFIX: prefix,
      PORT: String(port),
      HOST: '127.0.0.1',
      LOG_LEVEL: 'info',
      ...env,
    },
  });
  children.add(child);
  let out = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (out += d));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  const url = `http://127.0.0.1:${port}`;
  await waitFor(
    async () => {
      if (child.exitCode !== null) throw new Error(`server exited before it was ready:\n${out}`);
      return (await fetch(`${url}/readyz`).then((r) => r.status).catch(() => 0)) === 200;
    },
    20_000,
    'the server to be ready',
  );
  return { url, prefix, child, output: () => out, exited };
}

/** Whether a brand-new TCP connection to the server is refused (what a load balancer's next request would get). */
async function refused(url: string): Promise<boolean> {
  try {
    const r = await fetch(`${url}/healthz`, { headers: { connection: 'close' } });
    await r.arrayBuffer();
    return false;
  } catch (err) {
    return (err as { cause?: { code?: string } }).cause?.code === 'ECONNREFUSED';
  }
}

describe('graceful shutdown of the server process', () => {
  it.each(['SIGTERM', 'SIGINT'] as const)('on %s: finishes the in-flight create, refuses new connections, exits 0', async (signal) => {
    const srv = await startServer({ SHUTDOWN_GRACE_MS: '5000' });
    // The upstream takes 1.5 s to answer this create.
    s.sim.injectFault({ kind: 'delay', delayMs: 1500 }, { match: (m) => m === 'POST' });
    let finished = false;
    const inflight = call(srv.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: { prompt: 'shutdown' } } }).finally(() => (finished = true));
    await waitFor(() => s.sim.requests.length === 1, 5000, 'the create to reach the upstream');

    srv.child.kill(signal);
    // While the create is still being served, new connections are already refused.
    await waitFor(() => refused(srv.url), 5000, 'new connections to be refused');
    expect(finished).toBe(false);
    expect(srv.child.exitCode).toBeNull();

    const r = await inflight;
    expect(r.status).toBe(201);
    expect(r.body.urls.get).toBe(`${srv.url}/replicate/v1/predictions/${r.body.id}`);
    expect(await srv.exited).toEqual({ code: 0, signal: null });
    expect(srv.output()).toMatch(new RegExp(`"signal":"${signal}".*shutting down`));

    // Nothing was lost: the prediction it created is recorded for its owner (read through a fresh gateway).
    const next = await startGateway({ sim: s, prefix: srv.prefix });
    try {
      const g = await call(next.url, 'GET', `/replicate/v1/predictions/${r.body.id}`, { key: KEY_A });
      expect(g.status).toBe(200);
      expect(g.body.id).toBe(r.body.id);
    } finally {
      await next.close();
    }
  });

  it('exits 1 after SHUTDOWN_GRACE_MS when a request is still running, and that client sees the connection drop', async () => {
    const srv = await startServer({ SHUTDOWN_GRACE_MS: '300' });
    s.sim.injectFault({ kind: 'delay', delayMs: 5000 }, { match: (m) => m === 'POST' });
    const inflight = call(srv.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: { prompt: 'too slow' } } }).then(
      (r) => r.status,
      (err: Error) => err.message,
    );
    await waitFor(() => s.sim.requests.length === 1, 5000, 'the create to reach the upstream');
    srv.child.kill('SIGTERM');
    expect(await srv.exited).toEqual({ code: 1, signal: null });
    expect(await inflight).toBe('fetch failed');
    expect(srv.output()).toMatch(/killed by timeout/);
  });

  it('exits 0 at once on SIGTERM when idle', async () => {
    const srv = await startServer();
    expect((await call(srv.url, 'GET', '/healthz')).status).toBe(200);
    srv.child.kill('SIGTERM');
    expect(await srv.exited).toEqual({ code: 0, signal: null });
    expect(await refused(srv.url)).toBe(true);
  });
});
