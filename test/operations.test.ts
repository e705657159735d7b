// Issue 6: /metrics counts the right things, logs carry request and tenant ids with secrets redacted, and the
// tenants file reloads without a restart.
import { execFile, spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { loggerOptions } from '../src/logger.js';
import { freePort } from './helpers/redis.js';
import { KEY_A, KEY_B, MODEL_PATH, type Gateway, type SimHandle, call, createPrediction, startGateway, startSimulator, waitFor, writeTenants } from './helpers/stack.js';

let s: SimHandle;
beforeAll(async () => {
  s = await startSimulator(100);
});
afterAll(async () => {
  await s.sim.close();
});

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

describe('/metrics', () => {
  let gw: Gateway;
  beforeAll(async () => {
    gw = await startGateway({
      sim: s,
      tenants: [
        { id: 'team-a', keys: [KEY_A] },
        { id: 'team-b', keys: [KEY_B], rateLimit: { max: 2, timeWindow: '1 minute' } },
      ],
      env: { METRICS_TOKEN: 'metrics-secret-token' },
    });
  });
  afterAll(async () => {
    await gw.close();
  });
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
    s.sim.injectFault({ kind: 'delay', delayMs: 200 }, { times: 1 });
    await Promise.all(Array.from({ length: 5 }, () => call(gw.url, 'GET', `/replicate/v1/predictions/${id}`, { key: KEY_A })));
    const text = await metrics();
    expect(sample(text, 'fgw_idempotent_replays_total')).toBe(1);
    expect(sample(text, 'fgw_coalesced_total')).toBeGreaterThanOrEqual(4);
  });
});

describe('logs', () => {
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
});

describe('tenants hot reload', () => {
  const NEW_KEY = 'team-c-new-key-0123456789';

  it('takes a changed file without a restart, and keeps the old tenants when the new file is bad', async () => {
    const file = writeTenants([{ id: 'team-a', keys: [KEY_A] }]);
    const gw = await startGateway({ sim: s, redis: 'memory', tenantsFile: file, deps: { watchTenants: true } });
    try {
      expect((await call(gw.url, 'GET', '/replicate/v1/predictions', { key: NEW_KEY })).status).toBe(401);
      writeFileSync(file, JSON.stringify({ tenants: [{ id: 'team-a', keys: [KEY_A] }, { id: 'team-c', keys: [NEW_KEY] }] }));
      await waitFor(async () => (await call(gw.url, 'GET', '/replicate/v1/predictions', { key: NEW_KEY })).status === 200, 5000, 'the reload');
      writeFileSync(file, '{"tenants": [ {"id": "team-a", "keys": ["short"]} ]}');
      await waitFor(() => gw.logs.some((l) => l.includes('tenants file rejected')), 5000, 'the rejection to be logged');
      expect((await call(gw.url, 'GET', '/replicate/v1/predictions', { key: NEW_KEY })).status).toBe(200);
      expect(gw.logs.join('\n')).toMatch(/keys\.0/);
    } finally {
      await gw.close();
    }
  });

  it('reloads on SIGHUP in the real server process', async () => {
    const file = writeTenants([{ id: 'team-a', keys: [KEY_A] }]);
    const port = await freePort();
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/server.ts'], {
      env: {
        PATH: process.env.PATH,
        UPSTREAM_BASE_URL: s.url,
        UPSTREAM_API_KEY: s.apiKey,
        TENANTS_FILE: file,
        REDIS_URL: inject('redisUrl'),
        REDIS_KEY_PREFIX: `sighup:${port}:`,
        PORT: String(port),
        HOST: '127.0.0.1',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (d) => (output += d));
    child.stderr.on('data', (d) => (output += d));
    const url = `http://127.0.0.1:${port}`;
    try {
      await waitFor(async () => (await call(url, 'GET', '/readyz').catch(() => ({ status: 0 }))).status === 200, 15_000, 'the server to start');
      expect((await call(url, 'GET', '/replicate/v1/predictions', { key: NEW_KEY })).status).toBe(401);
      // Write in place without a watcher-visible rename race: SIGHUP is the operator's explicit reload.
      writeFileSync(file, JSON.stringify({ tenants: [{ id: 'team-c', keys: [NEW_KEY] }] }));
      child.kill('SIGHUP');
      await waitFor(async () => (await call(url, 'GET', '/replicate/v1/predictions', { key: NEW_KEY })).status === 200, 5000, 'the SIGHUP reload');
      expect(output).toMatch(/tenants file reloaded/);
      expect((await call(url, 'GET', '/replicate/v1/predictions', { key: KEY_A })).status).toBe(401);
    } finally {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    }
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
