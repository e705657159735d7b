// Issue 14: spend control. Budgets per tenant and per token (reserved atomically, settled when a prediction ends),
// the running-job cap, a weighted share of the upstream account's create rate, and what operators see: over real
// HTTP against the simulator and a real Redis, with two gateway processes where exactness across replicas matters.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { afterAll, describe, expect, inject, it } from 'vitest';
import { buildSnapshot, type TenantInput, TenantRegistry } from '../src/access/tenants.js';
import { buildApp } from '../src/app.js';
import { periodOf } from '../src/budget/period.js';
import { checkTenantBudgets } from '../src/budget/plugin.js';
import { readPricesFile } from '../src/budget/prices.js';
import { loadConfig } from '../src/config.js';
import { keys } from '../src/store/keys.js';
import { createRedisClient } from '../src/store/redis-client.js';
import { call, type CallResult, expectProblem, type Gateway, type GatewayProcess, gatewaysPerTest, MODEL_PATH, startGatewayProcess, stopAllGatewayProcesses, upstreamCalls, useSimulator, waitFor, writeTenants } from './helpers/stack.js';

const key = (id: string) => `${id}-key-0123456789abcdef`;
const SECRET = 'budgets-test-signing-secret-0123456789abcdef';
const ADMIN = 'budgets-test-admin-key-0123456789';
const CREATES = /\/predictions$/;
const lots = { max: 100_000, timeWindow: '1 minute' };

function pricesFile(doc: unknown, name = 'prices.json'): string {
  const file = join(mkdtempSync(join(tmpdir(), 'fgw-prices-')), name);
  writeFileSync(file, JSON.stringify(doc));
  return file;
}

const PRICES = {
  currency: 'EUR',
  models: {
    'black-forest-labs/flux-schnell': { perImage: 0.5, expectedSeconds: 2 },
    'acme/per-second': { perSecond: 2, expectedSeconds: 1 },
  },
};

const count = (rs: CallResult[], status: number) => rs.filter((r) => r.status === status).length;
const create = (url: string, k: string, input: Record<string, unknown> = { prompt: 'a cat' }, path = MODEL_PATH) =>
  call(url, 'POST', path, { key: k, body: { input } });
const usage = async (url: string, k: string) => (await call(url, 'GET', '/gateway/v1/usage', { key: k })).body;

/** Polls a prediction through the gateway until it is terminal (which settles its reservation). */
async function untilDone(url: string, k: string, id: string): Promise<CallResult> {
  let r: CallResult | undefined;
  await waitFor(async () => {
    r = await call(url, 'GET', `/replicate/v1/predictions/${id}`, { key: k });
    return ['succeeded', 'failed', 'canceled', 'aborted'].includes(r.body?.status);
  }, 10_000, `prediction ${id} to end`);
  return r!;
}

const s = useSimulator(50);
const start = gatewaysPerTest();
const gateway = (tenants: TenantInput[], env: Record<string, string> = {}, now?: () => number, redis?: 'memory'): Promise<Gateway> =>
  start({
    sim: s,
    tenants,
    redis,
    env: { POLL_CACHE_MS: '0', LOG_LEVEL: 'warn', PRICES_FILE: pricesFile(PRICES), TOKEN_SIGNING_SECRET: SECRET, ADMIN_API_KEY: ADMIN, ...env },
    deps: now ? { now } : undefined,
  });
afterAll(async () => {
  await stopAllGatewayProcesses();
});

describe('configuration errors name the field', () => {
  it('refuses a period that is not day or month, and an unknown budget field', () => {
    const doc = (budget: unknown) => ({ tenants: [{ id: 'a', keys: [key('a')], budget }] });
    expect(() => buildSnapshot(doc({ creates: { max: 10, period: 'week' } }))).toThrow(/^tenants\.0\.budget\.creates\.period: must be "day" or "month"/);
    expect(() => buildSnapshot(doc({ cost: { max: -1, period: 'day' } }))).toThrow(/^tenants\.0\.budget\.cost\.max: must be above 0/);
    expect(() => buildSnapshot(doc({ dollars: { max: 1, period: 'day' } }))).toThrow(/^tenants\.0\.budget: .*dollars/);
    expect(() => buildSnapshot({ tenants: [{ id: 'a', keys: [key('a')], maxRunning: 0 }] })).toThrow(/^tenants\.0\.maxRunning: must be above 0/);
    expect(() => buildSnapshot({ tenants: [{ id: 'a', keys: [key('a')], share: 0 }] })).toThrow(/^tenants\.0\.share: must be above 0/);
  });

  it('refuses bad budget variables, naming them', () => {
    const base = { UPSTREAM_API_KEY: 'k', TENANTS_FILE: '/x' };
    expect(() => loadConfig({ ...base, BUDGET_TIMEZONE: 'Mars/Olympus' })).toThrow(/BUDGET_TIMEZONE must be an IANA time zone/);
    expect(() => loadConfig({ ...base, UPSTREAM_CREATE_LIMIT: '0' })).toThrow(/UPSTREAM_CREATE_LIMIT must be at least 1/);
    expect(() => loadConfig({ ...base, UPSTREAM_CREATE_WINDOW: 'soon' })).toThrow(/UPSTREAM_CREATE_WINDOW must be a duration/);
    expect(() => loadConfig({ ...base, BUDGET_EXPECTED_SECONDS: '-3' })).toThrow(/BUDGET_EXPECTED_SECONDS must be above 0/);
    const c = loadConfig({ ...base, BUDGET_TIMEZONE: 'Europe/Berlin', UPSTREAM_CREATE_LIMIT: '600' });
    expect([c.BUDGET_TIMEZONE, c.UPSTREAM_CREATE_LIMIT, c.UPSTREAM_CREATE_WINDOW, c.BUDGET_EXPECTED_SECONDS]).toEqual(['Europe/Berlin', 600, 60_000, 10]);
  });

  it('refuses a price table entry that is not a model or has no price, naming it', () => {
    expect(() => readPricesFile(pricesFile({ models: { 'not a model': { perImage: 1 } } }), 10)).toThrow(/PRICES_FILE models\.not a model: is not a model/);
    expect(() => readPricesFile(pricesFile({ models: { 'acme/x': { expectedSeconds: 3 } } }), 10)).toThrow(/PRICES_FILE models\.acme\/x: needs perImage or perSecond/);
    expect(() => readPricesFile(pricesFile({ models: { 'acme/x': { perImage: 1, perImgae: 2 } } }), 10)).toThrow(/PRICES_FILE models\.acme\/x: .*perImgae/);
    expect(() => readPricesFile('/nonexistent/prices.json', 10)).toThrow(/PRICES_FILE \/nonexistent\/prices.json cannot be read: ENOENT/);
  });

  it('refuses a price whose estimate overflows, naming the entry, before anything is served', async () => {
    const overflow = { models: { 'acme/ok': { perImage: 1 }, 'acme/huge': { perImage: 1e308, expectedImages: 10 } } };
    expect(() => readPricesFile(pricesFile(overflow), 10)).toThrow(/^invalid configuration: PRICES_FILE models\.acme\/huge: its estimate .* is too large to count$/);
    expect(() => readPricesFile(pricesFile({ default: { perSecond: 1e308, expectedSeconds: 5 }, models: { 'acme/ok': { perImage: 1 } } }), 10)).toThrow(/PRICES_FILE default: its estimate/);
    // The default predict time counts too: 1e308 per second for BUDGET_EXPECTED_SECONDS (10).
    expect(() => readPricesFile(pricesFile({ models: { 'acme/slow': { perSecond: 1e308 } } }), 10)).toThrow(/PRICES_FILE models\.acme\/slow/);
    const config = loadConfig({ UPSTREAM_API_KEY: 'k', LOG_LEVEL: 'silent', TENANTS_FILE: writeTenants([{ id: 'b', keys: [key('b')] }]), PRICES_FILE: pricesFile(overflow) });
    await expect(buildApp(config, { logger: undefined })).rejects.toThrow(/PRICES_FILE models\.acme\/huge/);
  });

  it('refuses a cost budget without a price table, and a listed model the table does not price', async () => {
    const tenants = (models?: string[]) => [...new TenantRegistry('', buildSnapshot({ tenants: [{ id: 'a', keys: [key('a')] }, { id: 'b', keys: [key('b')], models, budget: { cost: { max: 5, period: 'month' } } }] })).all()];
    const prices = readPricesFile(pricesFile(PRICES), 10);
    expect(() => checkTenantBudgets(tenants(), undefined, false)).toThrow(/tenants\.1\.budget\.cost needs PRICES_FILE/);
    expect(() => checkTenantBudgets(tenants(['black-forest-labs/flux-schnell', 'acme/unpriced']), prices, false)).toThrow(/tenants\.1\.models\.1: model acme\/unpriced has no price in PRICES_FILE/);
    // Wildcards fall back to the default or the dearest price; a default prices every model.
    expect(() => checkTenantBudgets(tenants(['acme/*']), prices, false)).not.toThrow();
    expect(() => checkTenantBudgets(tenants(['acme/unpriced']), prices, true)).not.toThrow();
    // At boot, the same check stops buildApp.
    const config = loadConfig({
      UPSTREAM_API_KEY: 'k',
      LOG_LEVEL: 'silent',
      TENANTS_FILE: writeTenants([{ id: 'b', keys: [key('b')], budget: { cost: { max: 5, period: 'month' } } }]),
    });
    await expect(buildApp(config, { logger: undefined })).rejects.toThrow(/tenants\.0\.budget\.cost needs PRICES_FILE/);
  });
});

describe('reloads and YAML', () => {
  it('rejects a reloaded tenants file whose cost budget has no price table, and keeps the old tenants', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'fgw-reload-'));
    const file = writeTenants([{ id: 'a', keys: [key('a')] }], dir);
    const registry = new TenantRegistry(file);
    registry.addCheck((all) => checkTenantBudgets(all, undefined, false));
    writeTenants([{ id: 'a', keys: [key('a')], budget: { cost: { max: 1, period: 'day' } } }], dir);
    expect(registry.reload()).toEqual({ ok: false, error: 'invalid configuration: tenants.0.budget.cost needs PRICES_FILE (a price table) to count money' });
    expect(registry.get('a')?.budget).toBeUndefined();
  });

  it('reads a YAML price table and prices models by name, owner and fallback', () => {
    const file = join(mkdtempSync(join(tmpdir(), 'fgw-prices-')), 'prices.yaml');
    writeFileSync(file, 'currency: USD\nmodels:\n  acme/a: { perImage: 0.01 }\n  acme/*: { perImage: 0.02 }\n  big/b: { perSecond: 0.5, expectedSeconds: 4 }\n');
    const t = readPricesFile(file, 10);
    expect(t.estimate('acme/a')).toEqual({ seconds: 10, cost: 0.01 });
    expect(t.estimate('acme/other')).toEqual({ seconds: 10, cost: 0.02 });
    // Unknown: the dearest entry (big/b: 0.5 × 4 s).
    expect(t.estimate('who/knows')).toEqual({ seconds: 4, cost: 2 });
    expect(t.actual('acme/a', { status: 'succeeded', output: ['x', 'y'], metrics: { predict_time: 3 } })).toEqual({ seconds: 3, cost: 0.02 });
    expect(t.actual('acme/a', { status: 'succeeded', output: ['x'], metrics: { image_count: 4 } })).toEqual({ seconds: 0, cost: 0.04 });
    expect(t.actual('big/b', { status: 'failed', metrics: { predict_time: 3 } })).toEqual({ seconds: 3, cost: 1.5 });
  });
});

describe('periods', () => {
  it('are UTC days and months by default, and follow BUDGET_TIMEZONE when set', () => {
    const t = Date.parse('2026-12-31T23:30:00Z');
    expect(periodOf('month', t)).toEqual({ key: '2026-12', startsAt: Date.parse('2026-12-01T00:00:00Z'), endsAt: Date.parse('2027-01-01T00:00:00Z') });
    expect(periodOf('day', t)).toEqual({ key: '2026-12-31', startsAt: Date.parse('2026-12-31T00:00:00Z'), endsAt: Date.parse('2027-01-01T00:00:00Z') });
    // 00:30 on New Year's Day in Berlin (UTC+1), a new month there already.
    expect(periodOf('month', t, 'Europe/Berlin')).toEqual({ key: '2027-01', startsAt: Date.parse('2026-12-31T23:00:00Z'), endsAt: Date.parse('2027-01-31T23:00:00Z') });
    // A month across a DST change: March in New York starts at UTC-5 and ends at UTC-4.
    expect(periodOf('month', Date.parse('2027-03-15T12:00:00Z'), 'America/New_York')).toEqual({
      key: '2027-03',
      startsAt: Date.parse('2027-03-01T05:00:00Z'),
      endsAt: Date.parse('2027-04-01T04:00:00Z'),
    });
  });
});

describe('exact across replicas', () => {
  it('two gateway processes on one Redis: 50 concurrent creates against a budget of 10 → exactly 10 reach the upstream', async () => {
    const tenantsFile = writeTenants([
      { id: 'burst', keys: [key('burst')], rateLimit: lots, budget: { creates: { max: 10, period: 'month' } } },
      { id: 'money', keys: [key('money')], rateLimit: lots, budget: { cost: { max: 5, period: 'day' } } },
      { id: 'cap', keys: [key('cap')], rateLimit: lots, maxRunning: 5 },
    ]);
    const prefix = `budgets:${randomUUID()}:`;
    const env = { PRICES_FILE: pricesFile(PRICES) };
    let a: GatewayProcess | undefined;
    let b: GatewayProcess | undefined;
    try {
      [a, b] = await Promise.all([startGatewayProcess({ sim: s, tenantsFile, prefix, env }), startGatewayProcess({ sim: s, tenantsFile, prefix, env })]);
      const urls = [a.url, b.url];
      // creates: 10 of 10; money: 5 EUR at 0.50 an image reserved = 10; cap: 5 running at once.
      for (const [who, admitted, type] of [['burst', 10, 'budget-exceeded'], ['money', 10, 'budget-exceeded'], ['cap', 5, 'running-limit']] as const) {
        s.sim.clearRequests();
        const rs = await Promise.all(Array.from({ length: 50 }, (_, i) => create(urls[i % 2]!, key(who), { prompt: `${who} ${i}`, duration_ms: 60_000 })));
        expect(count(rs, 201)).toBe(admitted);
        expect(count(rs, 429)).toBe(50 - admitted);
        expect(upstreamCalls(s.sim, CREATES)).toHaveLength(admitted);
        for (const r of rs.filter((x) => x.status === 429)) {
          expect(r.headers.get('content-type')).toMatch(/^application\/problem\+json/);
          expect(r.body).toMatchObject({ type: `urn:fuhu-gateway:problem:${type}`, status: 429 });
          if (who !== 'cap') expect(r.body).toMatchObject({ title: 'Budget exceeded', budget: who === 'burst' ? 'creates' : 'cost', scope: 'tenant' });
          expect(Number(r.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
        }
      }
      const u = await usage(a.url, key('burst'));
      expect(u.budget.creates).toMatchObject({ max: 10, period: 'month', spent: 10, reserved: 0, remaining: 0 });
      const m = await usage(b.url, key('money'));
      expect(m.budget.cost).toMatchObject({ max: 5, spent: 0, reserved: 5, remaining: 0, currency: 'EUR' });
      expect((await usage(b.url, key('cap'))).running).toEqual({ count: 5, max: 5 });
    } catch (err) {
      throw new Error(`${(err as Error).message}\n--- gateway A ---\n${a?.output() ?? ''}\n--- gateway B ---\n${b?.output() ?? ''}`, { cause: err });
    } finally {
      await Promise.all([a?.stop(), b?.stop()]);
    }
  }, 60_000);
});

describe('exact in one process too', () => {
  it('with the memory store: 50 concurrent creates against a budget of 10 → exactly 10 reach the upstream', async () => {
    const gw = await gateway([{ id: 'solo', keys: [key('solo')], rateLimit: lots, budget: { creates: { max: 10, period: 'day' } } }], {}, undefined, 'memory');
    const rs = await Promise.all(Array.from({ length: 50 }, (_, i) => create(gw.url, key('solo'), { prompt: `solo ${i}` })));
    expect(count(rs, 201)).toBe(10);
    expect(upstreamCalls(s.sim, CREATES)).toHaveLength(10);
    expect((await usage(gw.url, key('solo'))).budget.creates).toMatchObject({ spent: 10, reserved: 0, remaining: 0 });
  });
});

describe('reserve, then settle', () => {
  const tenants: TenantInput[] = [
    { id: 'sec', keys: [key('sec')], rateLimit: lots, budget: { predictTimeSeconds: { max: 100, period: 'month' }, cost: { max: 100, period: 'month' }, creates: { max: 100, period: 'day' } } },
  ];
  const PER_SECOND = '/replicate/v1/models/acme/per-second/predictions';

  it('settles a success to its real predict_time and cost, once, whoever observes the end', async () => {
    const gw = await gateway(tenants);
    const k = key('sec');
    const r = await create(gw.url, k, { prompt: 'x', duration_ms: 400 }, PER_SECOND);
    expect(r.status).toBe(201);
    // Reserved: 1 s expected at 2 EUR a second.
    expect(r.headers.get('x-budget-remaining-cost')).toBe('98');
    expect(r.headers.get('x-budget-remaining-predict-time-seconds')).toBe('99');
    expect(r.headers.get('x-budget-remaining-creates')).toBe('99');
    let u = await usage(gw.url, k);
    expect(u.budget.predictTimeSeconds).toMatchObject({ spent: 0, reserved: 1 });
    expect(u.budget.cost).toMatchObject({ spent: 0, reserved: 2 });
    expect(u.budget.creates).toMatchObject({ spent: 1, reserved: 0 });
    expect(u.running).toEqual({ count: 1, max: null });
    const done = await untilDone(gw.url, k, r.body.id);
    const seconds = done.body.metrics.predict_time as number;
    expect(seconds).toBeGreaterThan(0);
    u = await usage(gw.url, k);
    expect(u.budget.predictTimeSeconds).toMatchObject({ spent: seconds, reserved: 0 });
    expect(u.budget.cost.spent).toBeCloseTo(2 * seconds, 6);
    expect(u.budget.cost.reserved).toBe(0);
    expect(u.running.count).toBe(0);
    // Observed again (the list refreshes nothing terminal; a GET is a cache hit): nothing is settled twice.
    await call(gw.url, 'GET', `/replicate/v1/predictions/${r.body.id}`, { key: k });
    await call(gw.url, 'GET', '/replicate/v1/predictions', { key: k });
    expect((await usage(gw.url, k)).budget.predictTimeSeconds).toMatchObject({ spent: seconds, reserved: 0 });
  });

  it('settles a failed prediction (its seconds are paid, no image is) and a canceled one; releases a create the upstream refused', async () => {
    const gw = await gateway(tenants);
    const k = key('sec');
    // A per-image model that fails: predict time is spent, the cost of no image is 0.
    const failed = await create(gw.url, k, { prompt: 'x', fail: true, duration_ms: 200 });
    const f = await untilDone(gw.url, k, failed.body.id);
    expect(f.body.status).toBe('failed');
    let u = await usage(gw.url, k);
    expect(u.budget.predictTimeSeconds).toMatchObject({ spent: f.body.metrics.predict_time, reserved: 0 });
    expect(u.budget.cost).toMatchObject({ spent: 0, reserved: 0 });
    // Canceled while running, settled by the cancel itself.
    const running = await create(gw.url, k, { prompt: 'x', duration_ms: 60_000 }, PER_SECOND);
    expect((await usage(gw.url, k)).budget.cost.reserved).toBe(2);
    const c = await call(gw.url, 'POST', `/replicate/v1/predictions/${running.body.id}/cancel`, { key: k });
    expect(c.body.status).toBe('canceled');
    u = await usage(gw.url, k);
    expect(u.budget.cost.reserved).toBe(0);
    expect(u.budget.cost.spent).toBeCloseTo(2 * (c.body.metrics.predict_time ?? 0), 6);
    expect(u.running.count).toBe(0);
    // The upstream refuses the create (403 quota): nothing was created, nothing is spent or reserved.
    const before = u.budget.creates.spent;
    const refused = await create(gw.url, k, { prompt: 'x' }, '/replicate/v1/models/sim/quota-exceeded/predictions');
    expect(refused.status).toBe(403);
    u = await usage(gw.url, k);
    expect(u.budget.creates).toMatchObject({ spent: before, reserved: 0 });
    expect(u.budget.cost.reserved).toBe(0);
    expect(u.running.count).toBe(0);
  });

  it('spends the estimate of a create that timed out (it may be running upstream)', async () => {
    const gw = await gateway(tenants, { UPSTREAM_TIMEOUT_MS: '300' });
    const k = key('sec');
    const r = await create(gw.url, k, { prompt: 'x', hold_ms: 2000 }, PER_SECOND);
    expect(r.status).toBe(504);
    const u = await usage(gw.url, k);
    expect(u.budget.creates).toMatchObject({ spent: 1, reserved: 0 });
    expect(u.budget.predictTimeSeconds).toMatchObject({ spent: 1, reserved: 0 });
    expect(u.budget.cost).toMatchObject({ spent: 2, reserved: 0 });
    expect(u.running.count).toBe(0);
  });

  it('settles a create answered terminal (Prefer: wait) in the create\'s own store write, and the watcher settles the others', async () => {
    const gw = await gateway(tenants);
    const k = key('sec');
    const r = await call(gw.url, 'POST', PER_SECOND, { key: k, body: { input: { prompt: 'x', duration_ms: 200 } }, headers: { prefer: 'wait=5' } });
    expect(r.body.status).toBe('succeeded');
    let u = await usage(gw.url, k);
    expect(u.budget.predictTimeSeconds).toMatchObject({ spent: r.body.metrics.predict_time, reserved: 0 });
    // Nobody polls or lists this one: the watcher sees it end.
    const quiet = await create(gw.url, k, { prompt: 'x', duration_ms: 200 }, PER_SECOND);
    await waitFor(async () => (await usage(gw.url, k)).running.count === 0, 10_000, 'the watcher to settle it');
    u = await usage(gw.url, k);
    expect(u.budget.predictTimeSeconds.reserved).toBe(0);
    const list = await call(gw.url, 'GET', '/replicate/v1/predictions', { key: k });
    expect(list.body.results.find((p: { id: string }) => p.id === quiet.body.id).status).toBe('succeeded');
    expect(upstreamCalls(s.sim, new RegExp(`/predictions/${quiet.body.id}$`)).filter((r) => r.method === 'GET')).toHaveLength(1);
  });
});

describe('periods and the clock', () => {
  it('resets at a month boundary: refused on the 31st with retry-after until midnight, admitted on the 1st', async () => {
    let now = Date.parse('2026-01-31T23:59:50Z');
    const gw = await gateway([{ id: 'monthly', keys: [key('monthly')], rateLimit: lots, budget: { creates: { max: 2, period: 'month' } } }], {}, () => now);
    const k = key('monthly');
    expect((await create(gw.url, k)).status).toBe(201);
    const second = await create(gw.url, k);
    expect(second.headers.get('x-budget-remaining-creates')).toBe('0');
    const over = await create(gw.url, k);
    expect(over.status).toBe(429);
    expect(over.body.detail).toMatch(/tenant monthly has used its create budget for the month 2026-01: 2 spent and 0 reserved of 2.*resets at 2026-02-01T00:00:00.000Z/);
    expect(over.body.resets_at).toBe('2026-02-01T00:00:00.000Z');
    expect(over.headers.get('retry-after')).toBe('10');
    now = Date.parse('2026-02-01T00:00:01Z');
    const next = await create(gw.url, k);
    expect(next.status).toBe(201);
    expect(next.headers.get('x-budget-remaining-creates')).toBe('1');
    expect((await usage(gw.url, k)).budget.creates).toMatchObject({ period_key: '2026-02', spent: 1, resets_at: '2026-03-01T00:00:00.000Z' });
  });

  it('releases a reservation nobody could settle a minute after PREDICTION_MAX_OPEN_SECONDS', async () => {
    let now = Date.now();
    const gw = await gateway(
      [{ id: 'ttl', keys: [key('ttl')], rateLimit: lots, maxRunning: 1, budget: { predictTimeSeconds: { max: 100, period: 'month' } } }],
      { PREDICTION_MAX_OPEN_SECONDS: '60' },
      () => now,
    );
    const k = key('ttl');
    expect((await create(gw.url, k, { prompt: 'x', duration_ms: 600_000 })).status).toBe(201);
    expect((await create(gw.url, k)).status).toBe(429);
    now += 121_000;
    // The next create sweeps the expired reservation first, so it fits.
    expect((await create(gw.url, k, { prompt: 'x', duration_ms: 600_000 })).status).toBe(201);
    const u = await usage(gw.url, k);
    expect(u.running.count).toBe(1);
    // flux-schnell's expectedSeconds in the price table.
    expect(u.budget.predictTimeSeconds).toMatchObject({ spent: 0, reserved: 2 });
  });
});

describe('a token\'s budget inside its tenant\'s', () => {
  it('spends both: the token stops at its own, the tenant at its, whichever comes first', async () => {
    const gw = await gateway([{ id: 'app', keys: [key('app')], rateLimit: lots, budget: { creates: { max: 5, period: 'day' } } }]);
    const mint = async (budget: unknown) => (await call(gw.url, 'POST', '/gateway/v1/tokens', { key: key('app'), body: { budget } })).body;
    const t1 = await mint({ creates: 3 });
    expect(t1.budget).toEqual({ creates: 3 });
    const rs1: CallResult[] = [];
    for (let i = 0; i < 4; i++) rs1.push(await create(gw.url, t1.token));
    expect(rs1.map((r) => r.status)).toEqual([201, 201, 201, 429]);
    expect(rs1[0]!.headers.get('x-budget-remaining-creates')).toBe('2');
    expect(rs1[3]!.body).toMatchObject({ type: 'urn:fuhu-gateway:problem:budget-exceeded', scope: 'token', budget: 'creates' });
    expect(rs1[3]!.body.detail).toMatch(/this token has used its create budget for its lifetime: 3 spent .* request a new token/);
    // A second token has room of its own, but the tenant has only 2 left.
    const t2 = await mint({ creates: 3 });
    const rs2 = await Promise.all(Array.from({ length: 3 }, () => create(gw.url, t2.token)));
    expect(count(rs2, 201)).toBe(2);
    expect(rs2.find((r) => r.status === 429)!.body).toMatchObject({ scope: 'tenant', budget: 'creates' });
    expect((await create(gw.url, key('app'))).status).toBe(429);
    // Every authenticated response carries the tighter remaining figure.
    const read = await call(gw.url, 'GET', `/replicate/v1/predictions/${rs1[0]!.body.id}`, { key: key('app') });
    expect(read.headers.get('x-budget-remaining-creates')).toBe('0');
  });

  it('gives every token the tenant\'s tokenBudget unless it asks for less, and refuses more', async () => {
    const gw = await gateway([{ id: 'kiosk', keys: [key('kiosk')], rateLimit: lots, tokenBudget: { creates: 2, cost: 1 } }]);
    const mint = (body: unknown) => call(gw.url, 'POST', '/gateway/v1/tokens', { key: key('kiosk'), body });
    const plain = await mint({});
    expect(plain.body.budget).toEqual({ creates: 2, cost: 1 });
    expect((await mint({ budget: { cost: 0.5 } })).body.budget).toEqual({ creates: 2, cost: 0.5 });
    const greedy = await mint({ budget: { creates: 5 } });
    expect(greedy.status).toBe(403);
    expect(greedy.body.detail).toBe("budget.creates 5 is above tenant kiosk's tokenBudget.creates of 2");
    const rs = await Promise.all(Array.from({ length: 5 }, () => create(gw.url, plain.body.token)));
    expect(count(rs, 201)).toBe(2);
  });
});

describe('an upstream id the gateway cannot serve', () => {
  it('answers the create 502, logs the id escaped, and frees its reservation and its Idempotency-Key', async () => {
    const gw = await gateway([{ id: 'ids', keys: [key('ids')], rateLimit: lots, budget: { creates: { max: 2, period: 'day' } } }], { LOG_LEVEL: 'info' });
    const bad = ['{x}', 'a:b', 'caf\u00e9', '..', 'a/b', 'x'.repeat(5000), '', 'a\n\u202eb'];
    const body = { input: { prompt: 'odd id' } };
    for (const [i, id] of bad.entries()) {
      s.sim.injectFault({ kind: 'status', status: 201, body: { id, status: 'starting', input: body.input, urls: {} } }, { match: (m, p) => m === 'POST' && CREATES.test(p) });
      const r = await call(gw.url, 'POST', MODEL_PATH, { key: key('ids'), body, headers: { 'idempotency-key': `odd-${i}` } });
      expectProblem(r, 502, /prediction id the gateway cannot serve/);
      if (id) expect(r.text).not.toContain(id);
    }
    // The raw id is in the log line of each (as the error's cause), quoted, escaped to printable ASCII, cut short.
    const logged = gw.logs.map((l) => JSON.parse(l)).filter((l) => l.code === 'UPSTREAM_ERROR').map((l) => String(l.err.message));
    expect(logged).toHaveLength(bad.length);
    for (const shown of ['"{x}"', '"a:b"', '"caf\\u00e9"', '".."', '"a/b"', '""', '"a\\n\\u202eb"', `"${'x'.repeat(200)}"... (5000 characters)`]) {
      expect(logged.some((m) => m.endsWith(`upstream prediction id ${shown}`)), shown).toBe(true);
    }
    // Nothing was recorded, and nothing held the budget of 2 or the keys: the same keys start real creates.
    expect((await call(gw.url, 'GET', '/replicate/v1/predictions', { key: key('ids') })).body.results).toEqual([]);
    for (const i of [0, 1]) {
      const r = await call(gw.url, 'POST', MODEL_PATH, { key: key('ids'), body, headers: { 'idempotency-key': `odd-${i}` } });
      expect(r.status).toBe(201);
      expect(r.headers.get('idempotent-replayed')).toBeNull();
    }
    expect((await call(gw.url, 'POST', MODEL_PATH, { key: key('ids'), body })).status).toBe(429);
  });
});

describe('a store command that fails is not an outage', () => {
  it('a reserve script refused by Redis (a budget key of the wrong type) is a 500 of its own, logged with its cause, not 503 "state store unavailable"', async () => {
    const gw = await gateway([{ id: 'odd', keys: [key('odd')], rateLimit: lots, budget: { creates: { max: 5, period: 'day' } } }], { LOG_LEVEL: 'info' });
    const raw = createRedisClient(inject('redisUrl'), gw.config.REDIS_KEY_PREFIX);
    try {
      await waitFor(() => raw.status === 'ready', 5000, 'a Redis client of the test');
      await raw.set(keys.budgetTenant('odd', periodOf('day', Date.now(), gw.config.BUDGET_TIMEZONE).key), 'not a hash', 'EX', 600);
      const r = await create(gw.url, key('odd'));
      expectProblem(r, 500);
      expect(r.body.type).toBe('urn:fuhu-gateway:problem:store-failed');
      expect(r.headers.get('retry-after')).toBeNull();
      expect(upstreamCalls(s.sim, CREATES)).toHaveLength(0);
      const line = gw.logs.map((l) => JSON.parse(l)).find((l) => l.code === 'STORE_FAILED' && l.reqId === r.body.request_id);
      expect(line).toMatchObject({ level: 50, msg: expect.stringMatching(/a state store command failed/) });
      expect(JSON.stringify(line.err)).toMatch(/WRONGTYPE/);
      expect(gw.logs.join('\n')).not.toMatch(/STORE_UNAVAILABLE/);
    } finally {
      await raw.quit();
    }
  });
});

describe('a cost budget is never silently unlimited', () => {
  it('without PRICES_FILE: a token asking for budget.cost gets 422 naming PRICES_FILE, and a tenants file with tokenBudget.cost does not boot', async () => {
    const gw = await gateway([{ id: 'app', keys: [key('app')], rateLimit: lots }], { PRICES_FILE: '' });
    const r = await call(gw.url, 'POST', '/gateway/v1/tokens', { key: key('app'), body: { budget: { cost: 0.001 } } });
    expectProblem(r, 422, /budget\.cost .*PRICES_FILE/);
    // A token without a cost budget is still minted.
    expect((await call(gw.url, 'POST', '/gateway/v1/tokens', { key: key('app'), body: { budget: { creates: 1 } } })).status).toBe(201);
    const config = loadConfig({
      UPSTREAM_API_KEY: 'k',
      LOG_LEVEL: 'silent',
      TENANTS_FILE: writeTenants([{ id: 'b', keys: [key('b')], tokenBudget: { cost: 1 } }]),
    });
    await expect(buildApp(config, { logger: undefined })).rejects.toThrow(/tenants\.0\.tokenBudget\.cost needs PRICES_FILE/);
  });
});

describe('running-job limit', () => {
  it('counts starting and processing predictions; terminal ones free the slot', async () => {
    const gw = await gateway([{ id: 'cap', keys: [key('cap')], rateLimit: lots, maxRunning: 2 }]);
    const k = key('cap');
    const burst = await Promise.all(Array.from({ length: 6 }, () => create(gw.url, k, { prompt: 'x', duration_ms: 60_000 })));
    expect(count(burst, 201)).toBe(2);
    const over = burst.find((r) => r.status === 429)!;
    expect(over.body).toMatchObject({ type: 'urn:fuhu-gateway:problem:running-limit', status: 429 });
    expect(over.body.detail).toBe('tenant cap already has 2 predictions starting or processing (maxRunning 2); retry when one ends');
    expect(upstreamCalls(s.sim, CREATES)).toHaveLength(2);
    expect((await call(gw.url, 'GET', '/metrics')).text).toContain('fgw_rate_limited_total{tenant="cap",limit="running"} 4');
    const first = burst.find((r) => r.status === 201)!;
    await call(gw.url, 'POST', `/replicate/v1/predictions/${first.body.id}/cancel`, { key: k });
    expect((await create(gw.url, k, { prompt: 'x', duration_ms: 60_000 })).status).toBe(201);
    expect((await create(gw.url, k)).status).toBe(429);
    expect((await usage(gw.url, k)).running).toEqual({ count: 2, max: 2 });
  });

  it('frees the slot of a prediction that ended unseen (webhook users seldom poll) without anyone asking', async () => {
    const gw = await gateway([{ id: 'hooks', keys: [key('hooks')], rateLimit: lots, maxRunning: 1, budget: { predictTimeSeconds: { max: 100, period: 'day' } } }]);
    const k = key('hooks');
    const first = await create(gw.url, k, { prompt: 'x', duration_ms: 200 });
    await waitFor(async () => (await usage(gw.url, k)).running.count === 0, 10_000, 'the watcher to free the slot');
    const second = await create(gw.url, k, { prompt: 'x', duration_ms: 60_000 });
    expect(second.status).toBe(201);
    const u = await usage(gw.url, k);
    expect(u.running.count).toBe(1);
    expect(u.budget.predictTimeSeconds).toMatchObject({ spent: 0.1, reserved: 2 });
    expect(upstreamCalls(s.sim, new RegExp(`/predictions/${first.body.id}$`))).toHaveLength(1);
  });
});

describe('a fair share of the upstream account', () => {
  const tenants: TenantInput[] = [
    { id: 'heavy', keys: [key('heavy')], rateLimit: lots },
    { id: 'light', keys: [key('light')], rateLimit: lots },
    { id: 'idle', keys: [key('idle')], rateLimit: lots, share: 2 },
  ];

  it('lets a tenant under its share through while a heavy one is held to its own, and lends idle shares', async () => {
    // 20 a minute, weights 1:1:2 → shares 5, 5 and 10.
    const gw = await gateway(tenants, { UPSTREAM_CREATE_LIMIT: '20' });
    expect((await create(gw.url, key('light'))).status).toBe(201);
    // heavy: its 5, plus what is not held for light (4 more of its share) or anyone else active: idle has been
    // idle, so its 10 are lent: 20 - 1 (light) - 4 (held for light) = 15.
    const heavy = await Promise.all(Array.from({ length: 30 }, () => create(gw.url, key('heavy'))));
    expect(count(heavy, 201)).toBe(15);
    const refused = heavy.find((r) => r.status === 429)!;
    expect(refused.body).toMatchObject({ type: 'urn:fuhu-gateway:problem:share-exceeded', status: 429 });
    expect(refused.body.detail).toMatch(/tenant heavy has made 15 creates in this window, past its share of 5 of the upstream account's 20 creates per 60 s/);
    expect(Number(refused.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    // light is under its share: it always gets through, all 4 of the rest.
    const light = await Promise.all(Array.from({ length: 4 }, () => create(gw.url, key('light'))));
    expect(count(light, 201)).toBe(4);
    // Now the account's 20 are used: everyone waits for the next window.
    const full = await create(gw.url, key('idle'));
    expect(full.status).toBe(429);
    expect(full.body.detail).toMatch(/the shared upstream account's create limit \(20 creates per 60 s\) is used up/);
    expect(upstreamCalls(s.sim, CREATES)).toHaveLength(20);
  });

  it('holds an active tenant\'s unused share back from the others', async () => {
    let now = Date.parse('2026-06-01T12:00:05Z');
    const gw = await gateway(tenants, { UPSTREAM_CREATE_LIMIT: '20' }, () => now);
    // idle creates once in this window, so it counts as active in the next one too.
    expect((await create(gw.url, key('idle'))).status).toBe(201);
    now += 60_000;
    const heavy = await Promise.all(Array.from({ length: 30 }, () => create(gw.url, key('heavy'))));
    // heavy: its 5, then 20 - 5 (light has been idle, so only idle's 10 are held) = 10 in all.
    expect(count(heavy, 201)).toBe(10);
    const idle = await Promise.all(Array.from({ length: 12 }, () => create(gw.url, key('idle'))));
    expect(count(idle, 201)).toBe(10);
  });
});

describe('what operators see', () => {
  it('admin usage shows every tenant\'s budget, reserved and spent; /metrics has the gauges', async () => {
    const gw = await gateway([
      { id: 'ops-a', keys: [key('ops-a')], rateLimit: lots, maxRunning: 3, budget: { cost: { max: 10, period: 'month' } } },
      { id: 'ops-b', keys: [key('ops-b')], rateLimit: lots },
    ]);
    expect((await create(gw.url, key('ops-a'), { prompt: 'x', duration_ms: 60_000 })).status).toBe(201);
    const admin = await call(gw.url, 'GET', '/gateway/v1/admin/usage', { key: ADMIN });
    expect(admin.body.tenants['ops-a']).toMatchObject({ budget: { cost: { max: 10, spent: 0, reserved: 0.5, remaining: 9.5, currency: 'EUR' } }, running: { count: 1, max: 3 } });
    expect(admin.body.tenants['ops-b'].budget).toBeUndefined();
    const metrics = (await call(gw.url, 'GET', '/metrics')).text;
    expect(metrics).toContain('fgw_budget_reserved{tenant="ops-a",budget="cost"} 0.5');
    expect(metrics).toContain('fgw_budget_spent{tenant="ops-a",budget="cost"} 0');
    expect(metrics).toContain('fgw_budget_max{tenant="ops-a",budget="cost"} 10');
    expect(metrics).toContain('fgw_running_predictions{tenant="ops-a"} 1');
    // A tenant without budgets gets no budget headers; one with them gets them on every authenticated response.
    expect((await call(gw.url, 'GET', '/replicate/v1/predictions', { key: key('ops-b') })).headers.get('x-budget-remaining-cost')).toBeNull();
    expect((await call(gw.url, 'GET', '/replicate/v1/account', { key: key('ops-a') })).headers.get('x-budget-remaining-cost')).toBe('9.5');
  });
});
