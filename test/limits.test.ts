// Issue 4: rate limits (per tenant, per create, per client IP, across replicas), the failed-auth limit, model
// allowlists, origins, short-lived tokens and usage — all over real HTTP against the simulator and a real Redis.
import { randomUUID } from 'node:crypto';
import { SignJWT } from 'jose';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { type GatewayProcess, startGatewayProcess, stopAllGatewayProcesses } from './helpers/processes.js';
import { type CallResult, type Gateway, MODEL_PATH, type SimHandle, call, createPrediction, startGateway, startSimulator, upstreamCalls, waitFor, writeTenants } from './helpers/stack.js';
import type { TenantInput } from '../src/access/tenants.js';

const SECRET = 'limits-test-signing-secret-0123456789abcdef';
const ADMIN = 'limits-test-admin-key-0123456789';
const key = (id: string) => `${id}-key-0123456789abcdef`;
const lots = { max: 10_000, timeWindow: '1 minute' };

const TENANTS: TenantInput[] = [
  { id: 'rl-basic', keys: [key('rl-basic')], rateLimit: { max: 5, timeWindow: '1 minute' } },
  { id: 'rl-window', keys: [key('rl-window')], rateLimit: { max: 1, timeWindow: '3 s' } },
  { id: 'rl-create', keys: [key('rl-create')], rateLimit: lots, createRateLimit: { max: 2, timeWindow: '1 minute' } },
  { id: 'rl-burst', keys: [key('rl-burst')], rateLimit: lots, createRateLimit: { max: 10, timeWindow: '1 minute' } },
  { id: 'rl-ip', keys: [key('rl-ip')], rateLimit: { ...lots, perIp: { max: 3, timeWindow: '1 minute' } } },
  {
    id: 'allow',
    keys: [key('allow')],
    rateLimit: lots,
    models: ['black-forest-labs/*', 'acme/upscaler'],
    versions: ['acme/upscaler:abc123'],
  },
  { id: 'open', keys: [key('open')], rateLimit: lots },
  { id: 'web', keys: [key('web')], rateLimit: lots, allowedOrigins: ['https://app.example.com'] },
  { id: 'tok', keys: [key('tok')], rateLimit: lots, models: ['black-forest-labs/*'] },
  { id: 'usage-a', keys: [key('usage-a')], rateLimit: lots },
  { id: 'usage-b', keys: [key('usage-b')], rateLimit: lots },
];

const CREATES = /\/predictions$/;

let s: SimHandle;
let gw: Gateway;

beforeAll(async () => {
  s = await startSimulator(100);
  gw = await startGateway({
    sim: s,
    tenants: TENANTS,
    env: { TRUST_PROXY: 'true', TOKEN_SIGNING_SECRET: SECRET, ADMIN_API_KEY: ADMIN, POLL_CACHE_MS: '0', LOG_LEVEL: 'warn' },
  });
});
afterAll(async () => {
  await stopAllGatewayProcesses();
  await gw?.close();
  await s?.sim.close();
});
beforeEach(() => {
  s.sim.clearRequests();
  s.sim.clearFaults();
});

const create = (k: string, headers?: Record<string, string>, path = MODEL_PATH, body: unknown = { input: { prompt: 'a cat' } }) =>
  call(gw.url, 'POST', path, { key: k, body, headers });
const statuses = (rs: CallResult[]) => rs.map((r) => r.status);
const count = (rs: CallResult[], status: number) => rs.filter((r) => r.status === status).length;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function expectProblem(r: CallResult, status: number, detail: RegExp) {
  expect(r.status).toBe(status);
  expect(r.headers.get('content-type')).toMatch(/^application\/problem\+json/);
  expect(r.body).toMatchObject({ status });
  expect(r.body.detail).toMatch(detail);
}

describe('tenant rate limit', () => {
  it('counts every request, reports it in x-ratelimit-* headers, and answers 429 without reaching upstream', async () => {
    const k = key('rl-basic');
    const seen: CallResult[] = [
      await create(k),
      await call(gw.url, 'GET', '/replicate/v1/predictions', { key: k }),
      await call(gw.url, 'GET', '/replicate/v1/predictions/doesnotexist', { key: k }), // a 404 still counts
      await call(gw.url, 'GET', '/gateway/v1/usage', { key: k }),
      await create(k),
    ];
    expect(statuses(seen)).toEqual([201, 200, 404, 200, 201]);
    for (const [i, r] of seen.entries()) {
      expect(r.headers.get('x-ratelimit-limit')).toBe('5');
      expect(r.headers.get('x-ratelimit-remaining')).toBe(String(4 - i));
      const reset = Number(r.headers.get('x-ratelimit-reset'));
      expect(reset).toBeGreaterThanOrEqual(1);
      expect(reset).toBeLessThanOrEqual(60);
    }
    expect(upstreamCalls(s.sim, CREATES)).toHaveLength(2);

    s.sim.clearRequests();
    const limited = await create(k);
    expectProblem(limited, 429, /request rate limit of 5 exceeded for tenant rl-basic/);
    expect(limited.headers.get('x-ratelimit-limit')).toBe('5');
    expect(limited.headers.get('x-ratelimit-remaining')).toBe('0');
    const retryAfter = Number(limited.headers.get('retry-after'));
    expect(retryAfter).toBeGreaterThanOrEqual(1);
    expect(retryAfter).toBeLessThanOrEqual(60);
    expect(limited.headers.get('x-ratelimit-reset')).toBe(String(retryAfter));
    // Reads are limited too, and nothing of either went upstream.
    expect((await call(gw.url, 'GET', '/replicate/v1/predictions', { key: k })).status).toBe(429);
    expect(upstreamCalls(s.sim)).toHaveLength(0);
    // Other tenants are not affected.
    expect((await create(key('open'))).status).toBe(201);
  });

  it('retry-after is what is left of the window, not the whole window, and the window really reopens then', async () => {
    const k = key('rl-window');
    const first = await call(gw.url, 'GET', '/replicate/v1/predictions', { key: k });
    expect(first.status).toBe(200);
    expect(first.headers.get('x-ratelimit-reset')).toBe('3');
    await sleep(1300);
    const limited = await call(gw.url, 'GET', '/replicate/v1/predictions', { key: k });
    expect(limited.status).toBe(429);
    const retryAfter = Number(limited.headers.get('retry-after'));
    expect(retryAfter).toBeGreaterThanOrEqual(1);
    expect(retryAfter).toBeLessThan(3);
    expect(limited.body.detail).toContain(`retry in ${retryAfter} s`);
    // Obeying retry-after is enough.
    await sleep(retryAfter * 1000 + 100);
    expect((await call(gw.url, 'GET', '/replicate/v1/predictions', { key: k })).status).toBe(200);
  });

  it('createRateLimit counts creates only; reads go on while creates are limited', async () => {
    const k = key('rl-create');
    const id = (await create(k)).body.id as string;
    expect((await create(k)).status).toBe(201);
    const limited = await create(k);
    expectProblem(limited, 429, /create rate limit of 2 exceeded for tenant rl-create/);
    expect(Number(limited.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    // By-version creates share the same create budget.
    expect((await create(k, undefined, '/replicate/v1/predictions', { version: 'acme/x:1', input: {} })).status).toBe(429);
    for (let i = 0; i < 5; i++) expect((await call(gw.url, 'GET', `/replicate/v1/predictions/${id}`, { key: k })).status).toBe(200);
    expect(upstreamCalls(s.sim, CREATES)).toHaveLength(2);
  });

  it('admits atomically: 50 concurrent creates against a create limit of 10 → exactly 10 reach upstream', async () => {
    const k = key('rl-burst');
    const rs = await Promise.all(Array.from({ length: 50 }, (_, i) => create(k, undefined, MODEL_PATH, { input: { prompt: `burst ${i}` } })));
    expect(count(rs, 201)).toBe(10);
    expect(count(rs, 429)).toBe(40);
    expect(upstreamCalls(s.sim, CREATES)).toHaveLength(10);
  });

  it('two gateway processes on one Redis count a tenant once: 40 requests alternating, max 25 → 25 pass, 15 get 429', async () => {
    const tenantsFile = writeTenants([{ id: 'replicas', keys: [key('replicas')], rateLimit: { max: 25, timeWindow: '1 minute' } }]);
    const prefix = `replicas:${randomUUID()}:`;
    const env = { TOKEN_SIGNING_SECRET: SECRET };
    let a: GatewayProcess | undefined;
    let b: GatewayProcess | undefined;
    try {
      [a, b] = await Promise.all([startGatewayProcess({ sim: s, tenantsFile, prefix, env }), startGatewayProcess({ sim: s, tenantsFile, prefix, env })]);
      expect(a.pid).not.toBe(b.pid);
      s.sim.clearRequests();
      const urls = [a.url, b.url];
      const rs = await Promise.all(
        Array.from({ length: 40 }, (_, i) =>
          call(urls[i % 2]!, 'POST', MODEL_PATH, { key: key('replicas'), body: { input: { prompt: `replica ${i}` } } }),
        ),
      );
      expect(count(rs, 201)).toBe(25);
      expect(count(rs, 429)).toBe(15);
      // Both processes admitted some, and the successes saw one shared countdown 24..0.
      expect(count(rs.filter((_, i) => i % 2 === 0), 201)).toBeGreaterThan(0);
      expect(count(rs.filter((_, i) => i % 2 === 1), 201)).toBeGreaterThan(0);
      const remaining = rs.filter((r) => r.status === 201).map((r) => Number(r.headers.get('x-ratelimit-remaining')));
      expect(remaining.sort((x, y) => x - y)).toEqual(Array.from({ length: 25 }, (_, i) => i));
      for (const r of rs.filter((r) => r.status === 429)) {
        expect(r.body.detail).toMatch(/request rate limit of 25 exceeded/);
        expect(Number(r.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
      }
      expect(upstreamCalls(s.sim, CREATES)).toHaveLength(25);
    } catch (err) {
      // The processes' own output is the first thing to read when this fails.
      throw new Error(`${(err as Error).message}\n--- gateway A ---\n${a?.output() ?? ''}\n--- gateway B ---\n${b?.output() ?? ''}`, { cause: err });
    } finally {
      await Promise.all([a?.stop(), b?.stop()]);
    }
  });

  it('with permits leased in batches, two processes together pass exactly a limit of 300, and so does one process', async () => {
    const tenantsFile = writeTenants([
      { id: 'lease-two', keys: [key('lease-two')], rateLimit: { max: 300, timeWindow: '1 minute' } },
      { id: 'lease-one', keys: [key('lease-one')], rateLimit: { max: 300, timeWindow: '1 minute' } },
    ]);
    const prefix = `lease:${randomUUID()}:`;
    let a: GatewayProcess | undefined;
    let b: GatewayProcess | undefined;
    try {
      [a, b] = await Promise.all([startGatewayProcess({ sim: s, tenantsFile, prefix }), startGatewayProcess({ sim: s, tenantsFile, prefix })]);
      const list = (url: string, who: string) => call(url, 'GET', '/replicate/v1/predictions', { key: key(who) });
      const rs: CallResult[] = [];
      // 450 requests in waves of 30, alternating between the processes.
      for (let wave = 0; wave < 15; wave++) {
        rs.push(...(await Promise.all(Array.from({ length: 30 }, (_, i) => list(i % 2 ? b!.url : a!.url, 'lease-two')))));
      }
      // Both processes keep getting requests after Redis runs dry, so each uses up the permits it leased: exactly
      // the limit passes, never more.
      expect(count(rs, 200)).toBe(300);
      expect(count(rs, 429)).toBe(150);
      expect(count(rs.filter((_, i) => i % 2 === 0), 200)).toBeGreaterThan(100);
      expect(count(rs.filter((_, i) => i % 2 === 1), 200)).toBeGreaterThan(100);

      // One process: exact, with a countdown that never repeats or skips.
      const one: CallResult[] = [];
      for (let wave = 0; wave < 11; wave++) one.push(...(await Promise.all(Array.from({ length: 30 }, () => list(a!.url, 'lease-one')))));
      expect(count(one, 200)).toBe(300);
      expect(count(one, 429)).toBe(30);
      const remaining = one.filter((r) => r.status === 200).map((r) => Number(r.headers.get('x-ratelimit-remaining')));
      expect(remaining.sort((x, y) => x - y)).toEqual(Array.from({ length: 300 }, (_, i) => i));
      expect(one.filter((r) => r.status === 429).every((r) => /request rate limit of 300 exceeded/.test(r.body.detail))).toBe(true);
    } catch (err) {
      throw new Error(`${(err as Error).message}\n--- gateway A ---\n${a?.output() ?? ''}\n--- gateway B ---\n${b?.output() ?? ''}`, { cause: err });
    } finally {
      await Promise.all([a?.stop(), b?.stop()]);
    }
  });

  it('rateLimit.perIp limits each client address separately, within the tenant limit', async () => {
    const k = key('rl-ip');
    const from = (ip: string) => call(gw.url, 'GET', '/replicate/v1/predictions', { key: k, headers: { 'x-forwarded-for': ip } });
    const first = [await from('203.0.113.5'), await from('203.0.113.5'), await from('203.0.113.5')];
    expect(statuses(first)).toEqual([200, 200, 200]);
    const limited = await from('203.0.113.5');
    expectProblem(limited, 429, /per-client rate limit of 3 exceeded/);
    expect(Number(limited.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    // Another browser of the same tenant is still served, and so is the tenant's server (no proxy header).
    expect((await from('203.0.113.9')).status).toBe(200);
    expect((await call(gw.url, 'GET', '/replicate/v1/predictions', { key: k })).status).toBe(200);
    // An IPv6 client is one /64: rotating addresses inside it does not buy more requests.
    for (let i = 1; i <= 3; i++) expect((await from(`2001:db8:1:2::${i}`)).status).toBe(200);
    expect((await from('2001:db8:1:2:ffff::9')).status).toBe(429);
    expect((await from('2001:db8:1:3::1')).status).toBe(200);
  });
});

describe('defaults and the in-memory store', () => {
  it('without REDIS_URL the limits still hold, and a tenant without rateLimit gets DEFAULT_RATE_LIMIT_MAX per DEFAULT_RATE_LIMIT_WINDOW', async () => {
    const tenants: TenantInput[] = [
      { id: 'plain', keys: [key('plain')] },
      { id: 'tiny', keys: [key('tiny')], rateLimit: { max: 2, timeWindow: '1 minute' } },
      { id: 'big', keys: [key('big')], rateLimit: { max: 100, timeWindow: '1 minute' } },
    ];
    const mem = await startGateway({ sim: s, tenants, redis: 'memory', env: { LOG_LEVEL: 'warn' } });
    const custom = await startGateway({ sim: s, tenants, redis: 'memory', env: { LOG_LEVEL: 'warn', DEFAULT_RATE_LIMIT_MAX: '3', DEFAULT_RATE_LIMIT_WINDOW: '10 s' } });
    try {
      const plain = await call(mem.url, 'GET', '/replicate/v1/predictions', { key: key('plain') });
      expect(plain.headers.get('x-ratelimit-limit')).toBe('600');
      expect(plain.headers.get('x-ratelimit-remaining')).toBe('599');
      expect(plain.headers.get('x-ratelimit-reset')).toBe('60');

      const tiny = [];
      for (let i = 0; i < 3; i++) tiny.push(await call(mem.url, 'GET', '/replicate/v1/predictions', { key: key('tiny') }));
      expect(statuses(tiny)).toEqual([200, 200, 429]);

      const rs = [];
      for (let i = 0; i < 4; i++) rs.push(await call(custom.url, 'GET', '/replicate/v1/predictions', { key: key('plain') }));
      expect(statuses(rs)).toEqual([200, 200, 200, 429]);
      expect(rs[0]!.headers.get('x-ratelimit-limit')).toBe('3');
      expect(rs[0]!.headers.get('x-ratelimit-reset')).toBe('10');
      expect(Number(rs[3]!.headers.get('retry-after'))).toBeLessThanOrEqual(10);

      // A tenant's own rateLimit replaces the default for every request, creates included (no createRateLimit set).
      const creates = [];
      for (let i = 0; i < 5; i++) creates.push(await call(custom.url, 'POST', MODEL_PATH, { key: key('big'), body: { input: {} } }));
      expect(statuses(creates)).toEqual([201, 201, 201, 201, 201]);
      expect(creates[4]!.headers.get('x-ratelimit-limit')).toBe('100');
    } finally {
      await mem.close();
      await custom.close();
    }
  });
});

describe('failed authentication', () => {
  it('answers 429 after AUTH_FAILURE_LIMIT (20) bad keys a minute from one address; other addresses and valid keys are unaffected', async () => {
    const bad = (ip: string) => call(gw.url, 'GET', '/replicate/v1/predictions', { key: `wrong-key-${randomUUID()}`, headers: { 'x-forwarded-for': ip } });
    const rs = [];
    for (let i = 0; i < 20; i++) rs.push(await bad('198.51.100.7'));
    expect(statuses(rs)).toEqual(Array(20).fill(401));
    await sleep(1100);
    const limited = await bad('198.51.100.7');
    expectProblem(limited, 429, /too many failed authentication attempts/);
    // The window opened with the first failure: what is left of it, not a whole minute.
    const retryAfter = Number(limited.headers.get('retry-after'));
    expect(retryAfter).toBeGreaterThanOrEqual(1);
    expect(retryAfter).toBeLessThan(60);
    // A bad token counts as a failure too.
    expect((await call(gw.url, 'GET', '/replicate/v1/predictions', { key: 'aaa.bbb.ccc', headers: { 'x-forwarded-for': '198.51.100.7' } })).status).toBe(429);
    expect((await bad('198.51.100.8')).status).toBe(401);
    const good = await call(gw.url, 'GET', '/replicate/v1/predictions', { key: key('open'), headers: { 'x-forwarded-for': '198.51.100.7' } });
    expect(good.status).toBe(200);
  });
});

describe('model allowlist', () => {
  it('refuses a model outside the tenant allowlist with 403 naming it, before any upstream call', async () => {
    const k = key('allow');
    expect((await create(k)).status).toBe(201); // black-forest-labs/flux-schnell via black-forest-labs/*
    expect((await create(k, undefined, '/replicate/v1/models/acme/upscaler/predictions')).status).toBe(201);
    s.sim.clearRequests();
    const denied = await create(k, undefined, '/replicate/v1/models/acme/other-model/predictions');
    expectProblem(denied, 403, /model acme\/other-model is not allowed for tenant allow/);
    // A prefix that only looks alike is not the owner.
    expectProblem(await create(k, undefined, '/replicate/v1/models/black-forest-labs-fake/flux/predictions'), 403, /black-forest-labs-fake\/flux/);
    expect(upstreamCalls(s.sim)).toHaveLength(0);
  });

  it('allows a create by version only when versions lists it, or when the tenant has no allowlist', async () => {
    const byVersion = (k: string, version: string) => create(k, undefined, '/replicate/v1/predictions', { version, input: { prompt: 'x' } });
    expect((await byVersion(key('allow'), 'acme/upscaler:abc123')).status).toBe(201);
    s.sim.clearRequests();
    expectProblem(await byVersion(key('allow'), 'acme/upscaler:zzz999'), 403, /version acme\/upscaler:zzz999 is not in the allowed versions of tenant allow/);
    // A tenant with a models allowlist but no versions list cannot create by version at all.
    expectProblem(await byVersion(key('tok'), 'black-forest-labs/flux-schnell:abc'), 403, /not in the allowed versions/);
    expect(upstreamCalls(s.sim)).toHaveLength(0);
    expect((await byVersion(key('open'), 'anyone/anything:123')).status).toBe(201);
  });
});

describe('browser origins', () => {
  const ORIGIN = 'https://app.example.com';

  it('answers a preflight for an origin some tenant allows, with the headers a browser client needs', async () => {
    const res = await fetch(`${gw.url}${MODEL_PATH}`, {
      method: 'OPTIONS',
      headers: { origin: ORIGIN, 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization,content-type,prefer,idempotency-key' },
    });
    expect(res.status).toBe(204);
    expect(res.headers.get('access-control-allow-origin')).toBe(ORIGIN);
    const allowed = (res.headers.get('access-control-allow-headers') ?? '').toLowerCase().split(/\s*,\s*/);
    expect(allowed).toEqual(expect.arrayContaining(['authorization', 'content-type', 'prefer', 'idempotency-key']));
    expect(res.headers.get('access-control-allow-methods')).toMatch(/POST/);

    const unknown = await fetch(`${gw.url}${MODEL_PATH}`, { method: 'OPTIONS', headers: { origin: 'https://evil.example', 'access-control-request-method': 'POST' } });
    expect(unknown.headers.get('access-control-allow-origin')).toBeNull();
  });

  it('serves an allowed origin with exposed x-ratelimit-*, retry-after, x-cache and x-request-id', async () => {
    const r = await create(key('web'), { origin: ORIGIN });
    expect(r.status).toBe(201);
    expect(r.headers.get('access-control-allow-origin')).toBe(ORIGIN);
    const exposed = (r.headers.get('access-control-expose-headers') ?? '').toLowerCase().split(/\s*,\s*/);
    expect(exposed).toEqual(expect.arrayContaining(['x-ratelimit-limit', 'x-ratelimit-remaining', 'x-ratelimit-reset', 'retry-after', 'x-cache', 'x-request-id']));
  });

  it('refuses with 403 an Origin the tenant does not allow (even one another tenant allows); servers send none and pass', async () => {
    expectProblem(await create(key('web'), { origin: 'https://other.example.com' }), 403, /origin https:\/\/other\.example\.com is not allowed for this tenant/);
    expectProblem(await create(key('open'), { origin: ORIGIN }), 403, /origin https:\/\/app\.example\.com is not allowed/);
    expect(upstreamCalls(s.sim)).toHaveLength(0);
    expect((await create(key('web'))).status).toBe(201);
  });
});

describe('short-lived tokens', () => {
  const mint = (k: string, body?: unknown, headers?: Record<string, string>) => call(gw.url, 'POST', '/gateway/v1/tokens', { key: k, body, headers });

  it('issues a 15-minute token for an empty body (with or without Content-Type: application/json), at most 1 h', async () => {
    const before = Date.now();
    for (const r of [await mint(key('tok')), await mint(key('tok'), undefined, { 'content-type': 'application/json' }), await mint(key('tok'), {})]) {
      expect(r.status).toBe(201);
      expect(r.headers.get('cache-control')).toBe('no-store');
      expect(r.body.token).toMatch(/^[\w-]+\.[\w-]+\.[\w-]+$/);
      const ttl = (Date.parse(r.body.expires_at) - before) / 1000;
      expect(ttl).toBeGreaterThan(890);
      expect(ttl).toBeLessThanOrEqual(901);
    }
    const hour = await mint(key('tok'), { ttl_seconds: 3600 });
    expect(hour.status).toBe(201);
    expectProblem(await mint(key('tok'), { ttl_seconds: 3601 }), 422, /ttl_seconds/);
    expectProblem(await mint(key('tok'), { ttl_seconds: 5 }), 422, /ttl_seconds/);
    expectProblem(await mint(key('tok'), { models: ['not a model'] }), 422, /models/);
    expectProblem(await mint(key('tok'), { ttl: 3600 }), 422, /"ttl"/);
  });

  it('works as a Bearer key; its predictions belong to its tenant', async () => {
    const { token } = (await mint(key('tok'))).body;
    const created = await create(token);
    expect(created.status).toBe(201);
    const id = created.body.id as string;
    expect((await call(gw.url, 'GET', `/replicate/v1/predictions/${id}`, { key: token })).status).toBe(200);
    expect((await call(gw.url, 'GET', `/replicate/v1/predictions/${id}`, { key: key('tok') })).status).toBe(200);
    expect((await call(gw.url, 'GET', `/replicate/v1/predictions/${id}`, { key: key('open') })).status).toBe(404);
    const list = await call(gw.url, 'GET', '/replicate/v1/predictions', { key: key('tok') });
    expect(list.body.results.map((p: { id: string }) => p.id)).toContain(id);
    // The tenant's own allowlist still applies to its tokens.
    expectProblem(await create(token, undefined, '/replicate/v1/models/acme/other/predictions'), 403, /acme\/other is not allowed for tenant tok/);
    // A token cannot mint more tokens, nor read the tenant's usage.
    expectProblem(await mint(token), 403, /token cannot be used here/);
    expectProblem(await call(gw.url, 'GET', '/gateway/v1/usage', { key: token }), 403, /token cannot be used here/);
    // Nor list the tenant's predictions: those of other end users of the same app are among them.
    expectProblem(await call(gw.url, 'GET', '/replicate/v1/predictions', { key: token }), 403, /token cannot be used here/);
  });

  it('narrows to fewer models, and never beyond the tenant allowlist', async () => {
    const narrow = await mint(key('tok'), { models: ['black-forest-labs/flux-schnell'] });
    expect(narrow.body.models).toEqual(['black-forest-labs/flux-schnell']);
    const t = narrow.body.token as string;
    expect((await create(t)).status).toBe(201);
    s.sim.clearRequests();
    expectProblem(await create(t, undefined, '/replicate/v1/models/black-forest-labs/flux-dev/predictions'), 403, /model black-forest-labs\/flux-dev is not allowed for this token/);
    expect(upstreamCalls(s.sim)).toHaveLength(0);
    expectProblem(await mint(key('tok'), { models: ['acme/*'] }), 403, /model acme\/\* is not allowed for tenant tok/);
  });

  it('spends max_creates once each, then answers 429 with a clear detail; the tenant key is not limited by it', async () => {
    const { token } = (await mint(key('tok'), { max_creates: 2 })).body;
    const first = await create(token);
    expect(first.status).toBe(201);
    expect((await create(token)).status).toBe(201);
    s.sim.clearRequests();
    const over = await create(token);
    expectProblem(over, 429, /create budget of 2 is used up; request a new token/);
    expect(Number(over.headers.get('retry-after'))).toBeGreaterThan(0);
    expect(upstreamCalls(s.sim)).toHaveLength(0);
    // Reads with the token still work, and a key of the same tenant creates as usual.
    expect((await call(gw.url, 'GET', `/replicate/v1/predictions/${first.body.id}`, { key: token })).status).toBe(200);
    expect((await create(key('tok'))).status).toBe(201);

    // The budget is spent atomically: a burst of 10 concurrent creates on a budget of 3 starts exactly 3.
    const burst = (await mint(key('tok'), { max_creates: 3 })).body.token as string;
    s.sim.clearRequests();
    const rs = await Promise.all(Array.from({ length: 10 }, (_, i) => create(burst, undefined, MODEL_PATH, { input: { prompt: `budget ${i}` } })));
    expect(count(rs, 201)).toBe(3);
    expect(count(rs, 429)).toBe(7);
    expect(upstreamCalls(s.sim, CREATES)).toHaveLength(3);
  });

  it('refuses expired, tampered and foreign tokens with 401 naming the problem', async () => {
    const sign = (secret: string, claims: { sub?: string; exp?: number } = {}) =>
      new SignJWT({})
        .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
        .setSubject(claims.sub ?? 'tok')
        .setIssuer('fuhu-gateway')
        .setAudience('fuhu-gateway')
        .setJti(randomUUID())
        .setIssuedAt(Math.floor(Date.now() / 1000) - 3600)
        .setExpirationTime(claims.exp ?? Math.floor(Date.now() / 1000) + 600)
        .sign(new TextEncoder().encode(secret));

    // Our own signature proves the claims are right: only the expiry is wrong.
    expect((await create(await sign(SECRET))).status).toBe(201);
    expectProblem(await create(await sign(SECRET, { exp: Math.floor(Date.now() / 1000) - 60 })), 401, /token has expired; request a new one/);

    const { token } = (await mint(key('tok'))).body as { token: string };
    const [h, p, sig] = token.split('.') as [string, string, string];
    const claims = JSON.parse(Buffer.from(p, 'base64url').toString());
    const widened = Buffer.from(JSON.stringify({ ...claims, sub: 'open' })).toString('base64url');
    expectProblem(await create(`${h}.${widened}.${sig}`), 401, /token is invalid/);
    expectProblem(await create(`${h}.${p}.${sig.slice(0, -4)}AAAA`), 401, /token is invalid/);
    expectProblem(await create(await sign('some-other-secret-0123456789abcdef-xyz')), 401, /token is invalid/);
    expectProblem(await create(await sign(SECRET, { sub: 'no-such-tenant' })), 401, /tenant that no longer exists/);
  });
});

describe('usage', () => {
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
