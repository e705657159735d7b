// Issue 22: the gateway follows every prediction it starts to its end. The clients here fire and forget: nobody
// polls, lists or cancels, yet budgets, running slots, usage, lists and the read budget settle, across two real
// gateway processes on one Redis, after one of them is killed, and on the in-memory store in one process.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TenantInput } from '../src/access/tenants.js';
import { byWatcher, call, type CallResult, type Gateway, type GatewayProcess, gatewaysPerTest, MODEL_PATH, type SimHandle, startGatewayProcess, stopAllGatewayProcesses, upstreamCalls, useSimulator, waitFor, writeTenants } from './helpers/stack.js';

const key = (id: string) => `${id}-key-0123456789abcdef`;
const lots = { max: 100_000, timeWindow: '1 minute' };
const TERMINAL = ['succeeded', 'failed', 'canceled', 'aborted'];

function pricesFile(): string {
  const file = join(mkdtempSync(join(tmpdir(), 'fgw-prices-')), 'prices.json');
  // The case: a 30 s monthly predict-time budget, 10 s reserved per create.
  writeFileSync(file, JSON.stringify({ currency: 'EUR', models: { 'black-forest-labs/flux-schnell': { perSecond: 0.01, expectedSeconds: 10 } } }));
  return file;
}

/** A quick watcher: a look 100 ms after the create, then at most every 300 ms. */
const FAST = { WATCH_MIN_MS: '100', WATCH_MAX_MS: '300', LOG_LEVEL: 'warn' };

const create = (url: string, k: string, input: Record<string, unknown> = { prompt: 'a cat', duration_ms: 50 }, headers?: Record<string, string>) =>
  call(url, 'POST', MODEL_PATH, { key: k, body: { input }, headers });
const usage = async (url: string, k: string) => (await call(url, 'GET', '/gateway/v1/usage', { key: k })).body;
/** Upstream reads the watcher made (it names its requests), of one prediction or of all. */
const watcherReads = (sim: SimHandle, id?: string) =>
  upstreamCalls(sim.sim).filter((r) => r.method === 'GET' && byWatcher(r) && (!id || r.url.endsWith(`/predictions/${id}`)));
/** Upstream reads anything else made: a client's GET, a list refresh, a cancel. */
const clientReads = (sim: SimHandle) => upstreamCalls(sim.sim).filter((r) => r.method === 'GET' && !byWatcher(r));

const s = useSimulator(50);
const start = gatewaysPerTest();
const gateway = (tenants: TenantInput[], env: Record<string, string> = {}, redis?: 'memory'): Promise<Gateway> =>
  start({ sim: s, tenants, redis, env: { POLL_CACHE_MS: '0', ...FAST, ...env } });
afterAll(async () => {
  await stopAllGatewayProcesses();
});

describe('two gateway processes on one Redis, clients that fire and forget', () => {
  const tenants: TenantInput[] = [
    { id: 'forget', keys: [key('forget')], rateLimit: lots, maxRunning: 3, budget: { predictTimeSeconds: { max: 30, period: 'month' } } },
    { id: 'crash', keys: [key('crash')], rateLimit: lots, maxRunning: 5, budget: { predictTimeSeconds: { max: 1000, period: 'month' } } },
  ];
  let a: GatewayProcess;
  let b: GatewayProcess;
  const k = key('forget');

  beforeAll(async () => {
    const tenantsFile = writeTenants(tenants);
    const prefix = `life:${randomUUID()}:`;
    const env = { ...FAST, PRICES_FILE: pricesFile() };
    [a, b] = await Promise.all([startGatewayProcess({ sim: s, tenantsFile, prefix, env }), startGatewayProcess({ sim: s, tenantsFile, prefix, env })]);
  });

  it('settles budgets, slots, usage and the list of predictions nobody ever asks about', async () => {
    // Three 50 ms predictions, never polled: each reserves 10 s of the 30 s budget and one of the 3 slots.
    const ids: string[] = [];
    for (const gw of [a, b, a]) {
      const r = await create(gw.url, k);
      expect(r.status).toBe(201);
      ids.push(r.body.id);
    }
    // Without the lifecycle the 4th create is refused until the 1st of next month ("0 s spent and 30 s reserved").
    await waitFor(async () => (await usage(b.url, k)).running.count === 0, 10_000, 'the watchers to settle them');
    const u = await usage(a.url, k);
    expect(u.budget.predictTimeSeconds.reserved).toBe(0);
    expect(u.budget.predictTimeSeconds.spent).toBeGreaterThan(0);
    expect(u.budget.predictTimeSeconds.spent).toBeLessThan(1);
    expect(u.totals).toMatchObject({ creates: 3, succeeded: 3 });
    const fourth = await create(b.url, k);
    expect(fourth.status).toBe(201);
    // Each was read once by one replica's watcher; nothing else asked the upstream.
    for (const id of ids) expect(watcherReads(s, id)).toHaveLength(1);
    expect(clientReads(s)).toHaveLength(0);
    const list = await call(a.url, 'GET', '/replicate/v1/predictions', { key: k });
    for (const id of ids) expect(list.body.results.find((p: { id: string }) => p.id === id).status).toBe('succeeded');
  });

  it('settles everything a replica started after it is killed (SIGKILL) right after its creates', async () => {
    const c = key('crash');
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) ids.push((await create(a.url, c, { prompt: 'x', duration_ms: 1500 })).body.id);
    expect((await usage(b.url, c)).running.count).toBe(3);
    a.child.kill('SIGKILL');
    await a.exited;
    // b takes over every open prediction (those a had leased, once their lease ends).
    await waitFor(async () => (await usage(b.url, c)).running.count === 0, 20_000, 'the surviving replica to settle them');
    const u = await usage(b.url, c);
    expect(u.budget.predictTimeSeconds.reserved).toBe(0);
    expect(u.totals).toMatchObject({ creates: 3, succeeded: 3 });
    const list = await call(b.url, 'GET', '/replicate/v1/predictions', { key: c });
    for (const id of ids) expect(list.body.results.find((p: { id: string }) => p.id === id).status).toBe('succeeded');
    expect(clientReads(s)).toHaveLength(0);
  });
});

describe('the watcher\'s upstream reads, counted across replicas', () => {
  it('never reads more than UPSTREAM_WATCH_READS_PER_MINUTE across two processes, and the looks stretch out instead', async () => {
    const tenantsFile = writeTenants([{ id: 'many', keys: [key('many')], rateLimit: lots }]);
    const prefix = `life:${randomUUID()}:`;
    // 60 a minute is one a second for both replicas together; unbudgeted, 10 predictions every 50 ms would be 200 a second.
    const env = { WATCH_MIN_MS: '50', WATCH_MAX_MS: '50', UPSTREAM_WATCH_READS_PER_MINUTE: '60', LOG_LEVEL: 'warn' };
    const [a, b] = await Promise.all([startGatewayProcess({ sim: s, tenantsFile, prefix, env }), startGatewayProcess({ sim: s, tenantsFile, prefix, env })]);
    const ids = await Promise.all(Array.from({ length: 10 }, (_, i) => create(i % 2 ? a.url : b.url, key('many'), { prompt: 'long', duration_ms: 60_000 }).then((r) => r.body.id)));
    await new Promise((r) => setTimeout(r, 1000));
    s.sim.clearRequests();
    const t0 = Date.now();
    await new Promise((r) => setTimeout(r, 4000));
    const reads = watcherReads(s).length;
    const seconds = (Date.now() - t0) / 1000;
    // One per one-second window: the windows the interval touches, at most.
    await stopAllGatewayProcesses();
    expect(reads).toBeLessThanOrEqual(Math.ceil(seconds) + 1);
    expect(reads).toBeGreaterThanOrEqual(Math.floor(seconds) - 1);
    // Oldest due first: the reads went round the predictions rather than to a few of them.
    expect(new Set(watcherReads(s).map((r) => r.url)).size).toBeGreaterThanOrEqual(Math.min(ids.length, reads) - 1);
  });
});

describe('creates that went wrong leave nothing held', () => {
  const tenants: TenantInput[] = [{ id: 'wrong', keys: [key('wrong')], rateLimit: lots, maxRunning: 2 }];

  it('a 2xx create answer that is not a prediction gets 502 and gives back its running slot and its Idempotency-Key', async () => {
    const gw = await gateway(tenants);
    s.sim.injectFault({ kind: 'status', status: 201, body: { hello: 'not a prediction' } }, { match: (m) => m === 'POST', times: 1 });
    const bad = await create(gw.url, key('wrong'), { prompt: 'x' }, { 'idempotency-key': 'retry-me' });
    expect(bad.status).toBe(502);
    expect((await usage(gw.url, key('wrong'))).running.count).toBe(0);
    // The retry is a new attempt, not a 409 for the lease time.
    const retry = await create(gw.url, key('wrong'), { prompt: 'x' }, { 'idempotency-key': 'retry-me' });
    expect(retry.status).toBe(201);
  });

  it('an upstream that answers a create with an id the tenant has already holds one slot for it, not two', async () => {
    const gw = await gateway(tenants);
    const k = key('wrong');
    const first = await create(gw.url, k, { prompt: 'long', duration_ms: 60_000 });
    expect((await usage(gw.url, k)).running.count).toBe(1);
    // A deduplicating reseller: the second create starts nothing and names the first prediction.
    s.sim.injectFault({ kind: 'replaceId', id: first.body.id }, { match: (m) => m === 'POST', times: 1 });
    const dup = await create(gw.url, k, { prompt: 'long', duration_ms: 60_000 });
    expect(dup.status).toBe(201);
    expect(dup.body.id).toBe(first.body.id);
    expect((await usage(gw.url, k)).running.count).toBe(1);
    await call(gw.url, 'POST', `/replicate/v1/predictions/${first.body.id}/cancel`, { key: k });
    expect((await usage(gw.url, k)).running.count).toBe(0);
    // Both slots are free again.
    const more = await Promise.all([create(gw.url, k, { prompt: 'x', duration_ms: 60_000 }), create(gw.url, k, { prompt: 'y', duration_ms: 60_000 })]);
    expect(more.map((r) => r.status)).toEqual([201, 201]);
  });
});

describe.each([['redis'], ['memory']] as const)('orphan control (%s store)', (store) => {
  const redis = store === 'memory' ? 'memory' : undefined;

  it('cancels, upstream included, a prediction running past its tenant\'s maxRunSeconds, and frees its slot', async () => {
    const gw = await gateway([{ id: 'capped', keys: [key('capped')], rateLimit: lots, maxRunning: 1, maxRunSeconds: 1 }], {}, redis);
    const k = key('capped');
    const r = await create(gw.url, k, { prompt: 'forever', duration_ms: 600_000 });
    expect(r.status).toBe(201);
    await waitFor(() => s.sim.predictions.get(r.body.id)!.status === 'canceled', 10_000, 'the gateway to cancel it upstream');
    await waitFor(async () => (await usage(gw.url, k)).running.count === 0, 5000, 'the slot to be freed');
    expect((await usage(gw.url, k)).totals).toMatchObject({ canceled: 1 });
    expect(clientReads(s)).toHaveLength(0);
  });

  it('settles a prediction still open after PREDICTION_MAX_OPEN_SECONDS as expired, spending its estimate, when even the cancel fails', async () => {
    const gw = await gateway(
      [{ id: 'stuck', keys: [key('stuck')], rateLimit: lots, maxRunning: 1, budget: { predictTimeSeconds: { max: 100, period: 'day' } } }],
      { PREDICTION_MAX_OPEN_SECONDS: '1', PRICES_FILE: pricesFile() },
      redis,
    );
    const k = key('stuck');
    const r = await create(gw.url, k, { prompt: 'forever', duration_ms: 600_000 });
    s.sim.injectFault({ kind: 'status', status: 500 }, { match: (m, p) => m === 'POST' && p.endsWith('/cancel'), times: Infinity });
    await waitFor(async () => (await usage(gw.url, k)).running.count === 0, 10_000, 'the watcher to give up on it');
    const u = await usage(gw.url, k);
    expect(u.totals).toMatchObject({ expired: 1 });
    // The estimate (10 s) is spent: the job may still run and bill upstream.
    expect(u.budget.predictTimeSeconds).toMatchObject({ spent: 10, reserved: 0 });
    expect(upstreamCalls(s.sim, new RegExp(`/predictions/${r.body.id}/cancel$`)).length).toBeGreaterThanOrEqual(1);
    const metrics = await (await fetch(`${gw.url}/metrics`)).text();
    expect(metrics).toMatch(/fgw_predictions_expired_total\{reason="max-open"\} 1/);
  });

  it('settles a prediction the upstream keeps answering 404 for as expired, with a log line and a counter', async () => {
    const gw = await gateway([{ id: 'lost', keys: [key('lost')], rateLimit: lots, maxRunning: 1 }], {}, redis);
    const k = key('lost');
    const r = await create(gw.url, k, { prompt: 'x', duration_ms: 600_000 });
    s.sim.predictions.delete(r.body.id);
    await waitFor(async () => (await usage(gw.url, k)).running.count === 0, 10_000, 'the watcher to give up on it');
    expect((await usage(gw.url, k)).totals).toMatchObject({ expired: 1 });
    expect(watcherReads(s, r.body.id)).toHaveLength(3);
    expect(gw.logs.join('\n')).toMatch(/the upstream no longer knows an open prediction/);
    const metrics = await (await fetch(`${gw.url}/metrics`)).text();
    expect(metrics).toMatch(/fgw_predictions_expired_total\{reason="gone"\} 1/);
    expect(metrics).toMatch(/fgw_open_predictions \d+/);
  });
});

describe('an upstream that hangs on the watcher', () => {
  it('gives up a look within its deadline and settles the prediction at a later look', async () => {
    const gw = await gateway([{ id: 'hung', keys: [key('hung')], rateLimit: lots, maxRunning: 1 }]);
    const k = key('hung');
    const r = await create(gw.url, k, { prompt: 'x', duration_ms: 50 });
    // The first look hangs (the upstream never answers it); a look that never ended would hold the prediction open.
    s.sim.injectFault({ kind: 'hang' }, { match: (m, p, req) => m === 'GET' && p.endsWith(r.body.id) && byWatcher(req), times: 1 });
    await waitFor(async () => (await usage(gw.url, k)).running.count === 0, 15_000, 'the prediction to settle after the hung look');
    expect(watcherReads(s, r.body.id).length).toBeGreaterThanOrEqual(2);
    expect((await usage(gw.url, k)).totals).toMatchObject({ succeeded: 1 });
    expect(clientReads(s)).toHaveLength(0);
  });
});

describe('what /metrics shows of the open set', () => {
  it('counts open predictions and the settlement lag', async () => {
    const gw = await gateway([{ id: 'seen', keys: [key('seen')], rateLimit: lots }], { METRICS_TOKEN: 'metrics-token-0123456789' });
    const auth = { authorization: 'Bearer metrics-token-0123456789' };
    const r: CallResult = await create(gw.url, key('seen'), { prompt: 'long', duration_ms: 60_000 });
    const open = async () => Number(/fgw_open_predictions (\d+)/.exec(await (await fetch(`${gw.url}/metrics`, { headers: auth })).text())?.[1]);
    expect(await open()).toBe(1);
    await create(gw.url, key('seen'), { prompt: 'quick', duration_ms: 50 });
    await waitFor(async () => /fgw_settlement_lag_seconds_count 1/.test(await (await fetch(`${gw.url}/metrics`, { headers: auth })).text()), 10_000, 'one settled');
    expect(await open()).toBe(1);
    await call(gw.url, 'POST', `/replicate/v1/predictions/${r.body.id}/cancel`, { key: key('seen') });
    expect(await open()).toBe(0);
  });
});
