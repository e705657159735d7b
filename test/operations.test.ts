// Running the gateway: /healthz and /readyz, what /metrics counts, usage per tenant and for the admin, log lines
// (request and tenant ids, the access line, secrets redacted), graceful shutdown of the real server process
// (`node --import tsx src/server.ts`), and the build that `npm start` runs.
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import type { TenantInput } from '../src/access/tenants.js';
import { loggerOptions } from '../src/logger.js';
import { KEY_A, KEY_B, MODEL_PATH, call, createPrediction, expectProblem, fromClients, startGateway, startGatewayProcess, stopAllGatewayProcesses, useGateway, useSimulator, waitFor, writeTenants } from './helpers/stack.js';

const s = useSimulator(100);

/** The value of one sample in Prometheus text format, 0 when absent. */
function sample(text: string, name: string, labels: Record<string, string> = {}): number {
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = /^([^{\s]+)(?:\{([^}]*)\})?\s+(\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) return Number(m[3]);
  }
  return 0;
}

describe('health', () => {
  const gw = useGateway(() => ({ sim: s, redis: 'memory' }));

  it('answers /healthz and /readyz', async () => {
    expect((await call(gw.url, 'GET', '/healthz')).status).toBe(200);
    const ready = await call(gw.url, 'GET', '/readyz');
    expect(ready.status).toBe(200);
    expect(ready.body.store).toBe('memory');
  });
});

describe('/metrics', () => {
  const gw = useGateway(() => ({
    sim: s,
    tenants: [
      { id: 'team-a', keys: [KEY_A] },
      { id: 'team-b', keys: [KEY_B], rateLimit: { max: 2, timeWindow: '1 minute' } },
    ],
    env: { METRICS_TOKEN: 'metrics-secret-token' },
  }));
  const metrics = async () => (await call(gw.url, 'GET', '/metrics', { key: 'metrics-secret-token' })).text;

  it('is protected by METRICS_TOKEN', async () => {
    expect((await call(gw.url, 'GET', '/metrics')).status).toBe(401);
    expect((await call(gw.url, 'GET', '/metrics', { key: 'wrong' })).status).toBe(401);
    expect(await metrics()).toContain('# TYPE fgw_requests_total counter');
  });

  it('counts requests by route, status and tenant, upstream latency, cache hits and misses, and rate-limited requests', async () => {
    const id = await createPrediction(gw.url, KEY_A);
    await waitFor(async () => (await call(gw.url, 'GET', `/replicate/v1/predictions/${id}`, { key: KEY_A })).body.status === 'succeeded', 5000, 'done');
    await call(gw.url, 'GET', `/replicate/v1/predictions/${id}`, { key: KEY_A });
    await call(gw.url, 'GET', `/replicate/v1/predictions/${id}`, { key: KEY_A });
    for (let i = 0; i < 3; i++) await call(gw.url, 'GET', '/replicate/v1/predictions', { key: KEY_B });
    const text = await metrics();
    expect(sample(text, 'fgw_requests_total', { route: '/replicate/v1/models/:owner/:name/predictions', status: '201', tenant: 'team-a' })).toBe(1);
    expect(sample(text, 'fgw_requests_total', { route: '/replicate/v1/predictions', status: '200', tenant: 'team-b' })).toBe(2);
    expect(sample(text, 'fgw_requests_total', { route: '/replicate/v1/predictions', status: '429', tenant: 'team-b' })).toBe(1);
    expect(sample(text, 'fgw_rate_limited_total', { tenant: 'team-b', limit: 'all' })).toBe(1);
    expect(sample(text, 'fgw_cache_total', { result: 'hit' })).toBe(2);
    expect(sample(text, 'fgw_cache_total', { result: 'miss' })).toBeGreaterThanOrEqual(1);
    expect(sample(text, 'fgw_upstream_duration_seconds_count', { route: 'create', outcome: 'ok' })).toBe(1);
    expect(sample(text, 'fgw_upstream_duration_seconds_count', { route: 'get', outcome: 'ok' })).toBeGreaterThanOrEqual(1);
  });

  it('counts idempotent replays and coalesced polls', async () => {
    const headers = { 'idempotency-key': 'metrics-idem-1' };
    await call(gw.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: { n: 1 } }, headers });
    await call(gw.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: { n: 1 } }, headers });
    const id = await createPrediction(gw.url, KEY_A, { duration_ms: 60_000 });
    s.sim.injectFault({ kind: 'delay', delayMs: 200 }, { times: 1, match: fromClients });
    await Promise.all(Array.from({ length: 5 }, () => call(gw.url, 'GET', `/replicate/v1/predictions/${id}`, { key: KEY_A })));
    const text = await metrics();
    expect(sample(text, 'fgw_idempotent_replays_total')).toBe(1);
    expect(sample(text, 'fgw_coalesced_total')).toBeGreaterThanOrEqual(4);
  });
});

describe('usage', () => {
  const ADMIN = 'operations-test-admin-key-0123456789';
  const key = (id: string) => `${id}-key-0123456789abcdef`;
  const TENANTS: TenantInput[] = [
    { id: 'usage-a', keys: [key('usage-a')] },
    { id: 'usage-b', keys: [key('usage-b')] },
  ];
  const gw = useGateway(() => ({ sim: s, tenants: TENANTS, env: { ADMIN_API_KEY: ADMIN, POLL_CACHE_MS: '0', LOG_LEVEL: 'warn' } }));
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

  async function finish(k: string, id: string): Promise<any> {
    let p: any;
    await waitFor(async () => {
      p = (await call(gw.url, 'GET', `/replicate/v1/predictions/${id}`, { key: k })).body;
      return ['succeeded', 'failed', 'canceled', 'aborted'].includes(p.status);
    }, 5000, `prediction ${id} to finish`);
    return p;
  }

  it('counts creates, terminal predictions by status and predict_time per tenant; admin sees every tenant', async () => {
    const k = key('usage-a');
    const ok = await createPrediction(gw.url, k, { prompt: 'ok', duration_ms: 300 });
    const failed = await createPrediction(gw.url, k, { prompt: 'this will fail', duration_ms: 300 });
    const canceled = await createPrediction(gw.url, k, { prompt: 'long', duration_ms: 60_000 });
    await createPrediction(gw.url, key('usage-b'));
    await sleep(150);
    const c = await call(gw.url, 'POST', `/replicate/v1/predictions/${canceled}/cancel`, { key: k });
    expect(c.body.status).toBe('canceled');
    const done = [await finish(k, ok), await finish(k, failed), c.body];
    expect(done.map((p) => p.status)).toEqual(['succeeded', 'failed', 'canceled']);
    // Reading a finished prediction again does not count it twice.
    await finish(k, ok);
    const predictTime = done.reduce((sum, p) => sum + (p.metrics?.predict_time ?? 0), 0);
    expect(predictTime).toBeGreaterThan(0);

    const mine = await call(gw.url, 'GET', '/gateway/v1/usage', { key: k });
    expect(mine.status).toBe(200);
    expect(mine.body.tenant).toBe('usage-a');
    expect(mine.body.totals).toMatchObject({ creates: 3, succeeded: 1, failed: 1, canceled: 1 });
    expect(mine.body.totals.predict_time).toBeCloseTo(predictTime, 2);
    const today = new Date().toISOString().slice(0, 10);
    expect(Object.keys(mine.body.days)).toContain(today);

    const admin = await call(gw.url, 'GET', '/gateway/v1/admin/usage', { key: ADMIN });
    expect(admin.status).toBe(200);
    expect(Object.keys(admin.body.tenants).sort()).toEqual(TENANTS.map((t) => t.id).sort());
    expect(admin.body.tenants['usage-a'].totals).toEqual(mine.body.totals);
    expect(admin.body.tenants['usage-b'].totals).toMatchObject({ creates: 1 });
    expect(admin.body.to).toBe(today);
    expectProblem(await call(gw.url, 'GET', '/gateway/v1/usage?from=2026-02-30', { key: k }), 422, /query from must be a date as YYYY-MM-DD/);
    expectProblem(await call(gw.url, 'GET', '/gateway/v1/usage?from=2026-03-02&to=2026-03-01', { key: k }), 422, /from must be on or before to/);

    expectProblem(await call(gw.url, 'GET', '/gateway/v1/admin/usage', { key: k }), 403, /tenant key cannot use the admin API/);
    expect((await call(gw.url, 'GET', '/gateway/v1/admin/usage')).status).toBe(401);
    expect((await call(gw.url, 'GET', '/gateway/v1/admin/usage', { key: 'not-the-admin-key-0000' })).status).toBe(401);
  });
});

describe('logs', () => {
  const gw = useGateway(() => ({ sim: s, redis: 'memory' }));

  it('contain neither the upstream key nor a tenant key, even with Token scheme and errors', async () => {
    const id = await createPrediction(gw.url, KEY_A);
    await call(gw.url, 'GET', `/replicate/v1/predictions/${id}`, { headers: { authorization: `Token ${KEY_B}` } });
    await call(gw.url, 'GET', `/replicate/v1/predictions/${id}`, { key: 'wrong-key-but-secret-123456' });
    s.sim.injectFault({ kind: 'reset' }, { match: fromClients });
    await call(gw.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: {} } });
    const all = gw.logs.join('\n');
    expect(gw.logs.length).toBeGreaterThan(5);
    expect(all).toContain('request completed');
    for (const secret of [s.apiKey, KEY_A, KEY_B, 'wrong-key-but-secret-123456']) expect(all).not.toContain(secret);
  });

  it('carry the request id and tenant id on every line of a request, and the access line has latency and cache outcome', async () => {
    const gw = await startGateway({ sim: s, redis: 'memory' });
    try {
      const r = await call(gw.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: {} }, headers: { 'x-request-id': 'trace-42' } });
      expect(r.status).toBe(201);
      const parsed = () => gw.logs.map((l) => JSON.parse(l));
      const access = parsed().find((l) => l.reqId === 'trace-42' && l.msg === 'request completed');
      expect(access).toMatchObject({ tenant: 'team-a', statusCode: 201, method: 'POST', upstreamMs: expect.any(Number), responseTime: expect.any(Number), prediction: r.body.id });
      // A failing request logs twice (the error, then the access line): both name the request and the tenant.
      expect((await call(gw.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: 'x' }, headers: { 'x-request-id': 'trace-44' } })).status).toBe(422);
      const lines = parsed().filter((l) => l.reqId === 'trace-44');
      expect(lines.length).toBeGreaterThanOrEqual(2);
      for (const l of lines) expect(l.tenant).toBe('team-a');
      await call(gw.url, 'GET', `/replicate/v1/predictions/${r.body.id}`, { key: KEY_A, headers: { 'x-request-id': 'trace-43' } });
      expect(gw.logs.map((l) => JSON.parse(l)).find((l) => l.reqId === 'trace-43' && l.msg === 'request completed')?.cache).toBe('MISS');
    } finally {
      await gw.close();
    }
  });

  it('with ACCESS_LOG=false, writes no line for a served request but still one for a failed one', async () => {
    const gw = await startGateway({ sim: s, redis: 'memory', env: { ACCESS_LOG: 'false' } });
    try {
      expect((await call(gw.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: {} }, headers: { 'x-request-id': 'quiet-1' } })).status).toBe(201);
      expect((await call(gw.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: 'x' }, headers: { 'x-request-id': 'quiet-2' } })).status).toBe(422);
      const parsed = gw.logs.map((l) => JSON.parse(l));
      expect(parsed.filter((l) => l.reqId === 'quiet-1')).toEqual([]);
      const failed = parsed.filter((l) => l.reqId === 'quiet-2');
      expect(failed).toHaveLength(1);
      expect(failed[0]).toMatchObject({ tenant: 'team-a', status: 422 });
      expect(parsed.some((l) => l.msg === 'request completed')).toBe(false);
      // A request for no route at all is a failure too.
      expect((await call(gw.url, 'GET', '/nowhere', { headers: { 'x-request-id': 'quiet-3' } })).status).toBe(404);
      expect(gw.logs.map((l) => JSON.parse(l)).find((l) => l.reqId === 'quiet-3')).toMatchObject({ status: 404, code: 'NOT_FOUND' });
    } finally {
      await gw.close();
    }
  });

  it('redacts authorization, cookies, tokens and keys whatever code logs them', () => {
    const out: string[] = [];
    const log = pino(loggerOptions('info'), new Writable({ write: (c, _e, cb) => (out.push(String(c)), cb()) }));
    log.info({ req: { headers: { authorization: 'Bearer tenant-secret', cookie: 'sid=cookie-secret' } } }, 'incoming');
    log.info({ token: 'jwt-secret', key: 'key-secret', apiKey: 'api-secret', config: { UPSTREAM_API_KEY: 'upstream-secret' } }, 'x');
    const text = out.join('');
    for (const secret of ['tenant-secret', 'cookie-secret', 'jwt-secret', 'key-secret', 'api-secret', 'upstream-secret']) {
      expect(text).not.toContain(secret);
    }
    expect(text).toContain('[redacted]');
  });

  it('writes the lines logged right before the process exits (the batch of the last turn is not lost)', async () => {
    // The gateway's own logger on stdout, lines batched per turn of the event loop; exit in the same turn.
    const script = [
      "const { createLogger } = await import('./src/logger.ts');",
      "const log = createLogger('info');",
      "for (let i = 0; i < 500; i++) log.info({ n: i }, 'line');",
      "log.warn({ authorization: 'Bearer exit-secret' }, 'last words');",
      'process.exit(3);',
    ].join('\n');
    const { code, stdout } = await new Promise<{ code: number | null; stdout: string }>((resolve) => {
      const child = execFile(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: process.cwd() }, () => {});
      let out = '';
      child.stdout!.on('data', (c) => (out += String(c)));
      child.on('close', (c) => resolve({ code: c, stdout: out }));
    });
    expect(code).toBe(3);
    const lines = stdout.trim().split('\n').map((l) => JSON.parse(l));
    expect(lines).toHaveLength(501);
    expect(lines.at(-1)).toMatchObject({ msg: 'last words', authorization: '[redacted]' });
    expect(stdout).not.toContain('exit-secret');
  });
});

describe('graceful shutdown of the server process', () => {
  afterEach(async () => {
    await stopAllGatewayProcesses();
  });

  /** A real server process on the run's Redis, logging at info, with a prefix of its own. */
  async function startServer(env: Record<string, string> = {}) {
    const prefix = `shutdown:${randomUUID()}:`;
    const server = await startGatewayProcess({ sim: s, tenantsFile: writeTenants([{ id: 'team-a', keys: [KEY_A] }]), prefix, env: { LOG_LEVEL: 'info', ...env } });
    return { ...server, prefix };
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

describe('build', () => {
  it('compiles to dist/ so `npm start` runs the built server', async () => {
    const { stdout } = await new Promise<{ stdout: string }>((resolve, reject) =>
      execFile('npx', ['tsc', '-p', 'tsconfig.build.json', '--listEmittedFiles', '--outDir', `/tmp/fgw-build-${process.pid}`], (err, stdout) =>
        err ? reject(err) : resolve({ stdout }),
      ),
    );
    expect(stdout).toMatch(/server\.js/);
  });
});

describe('the benchmarks\' Redis', () => {
  it('goes with a benchmark that crashes before stopping it (no redis-server left loading the machine)', async () => {
    const script = [
      "const { RedisServer } = await import('./test/support/redis.ts');",
      'const r = await RedisServer.start();',
      'process.stdout.write(String(r.port));',
      "throw new Error('the benchmark failed half-way');",
    ].join('\n');
    const port = await new Promise<number>((resolve) => {
      const child = execFile(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: process.cwd() }, () => {});
      let out = '';
      child.stdout!.on('data', (c) => (out += String(c)));
      child.on('close', () => resolve(Number(out)));
    });
    expect(port).toBeGreaterThan(0);
    const { Redis } = await import('ioredis');
    const probe = new Redis({ port, host: '127.0.0.1', lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0 });
    probe.on('error', () => {});
    await waitFor(async () => probe.connect().then(() => (probe.disconnect(), false), () => true), 5000, 'the crashed script\'s redis-server to be gone');
  });
});
