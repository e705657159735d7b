// Limits: rate limits (per tenant, per create, per client IP, across replicas and processes, with leased permits),
// the defaults, the failed-authentication limit, and the bounds on a request's size, depth and time. Over real HTTP
// against the simulator and a real Redis.
import { randomUUID } from 'node:crypto';
import { connect } from 'node:net';
import { afterAll, describe, expect, it } from 'vitest';
import type { TenantInput } from '../src/access/tenants.js';
import { type CallResult, type GatewayProcess, KEY_A, MODEL_PATH, call, expectProblem, startGateway, startGatewayProcess, stopAllGatewayProcesses, upstreamCalls, useGateway, useSimulator, writeTenants } from './helpers/stack.js';

const SECRET = 'limits-test-signing-secret-0123456789abcdef';
const key = (id: string) => `${id}-key-0123456789abcdef`;
const lots = { max: 10_000, timeWindow: '1 minute' };

const TENANTS: TenantInput[] = [
  { id: 'rl-basic', keys: [key('rl-basic')], rateLimit: { max: 5, timeWindow: '1 minute' } },
  { id: 'rl-window', keys: [key('rl-window')], rateLimit: { max: 1, timeWindow: '3 s' } },
  { id: 'rl-create', keys: [key('rl-create')], rateLimit: lots, createRateLimit: { max: 2, timeWindow: '1 minute' } },
  { id: 'rl-burst', keys: [key('rl-burst')], rateLimit: lots, createRateLimit: { max: 10, timeWindow: '1 minute' } },
  { id: 'rl-ip', keys: [key('rl-ip')], rateLimit: { ...lots, perIp: { max: 3, timeWindow: '1 minute' } } },
  { id: 'open', keys: [key('open')], rateLimit: lots },
  // key('team-a') is KEY_A. A window of 1000.5 ms: durations are rounded to whole milliseconds.
  { id: 'team-a', keys: [KEY_A], rateLimit: { max: 1000, timeWindow: 1000.5 } },
];

const CREATES = /\/predictions$/;

const s = useSimulator(100);
const gw = useGateway(() => ({ sim: s, tenants: TENANTS, env: { TRUST_PROXY: 'true', TOKEN_SIGNING_SECRET: SECRET, POLL_CACHE_MS: '0', LOG_LEVEL: 'warn' } }));
afterAll(async () => {
  await stopAllGatewayProcesses();
});

const create = (k: string, headers?: Record<string, string>, path = MODEL_PATH, body: unknown = { input: { prompt: 'a cat' } }) =>
  call(gw.url, 'POST', path, { key: k, body, headers });
const statuses = (rs: CallResult[]) => rs.map((r) => r.status);
const count = (rs: CallResult[], status: number) => rs.filter((r) => r.status === status).length;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

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

  it('a replica killed while it holds leased permits never lets the limit be passed; the survivor serves the rest', async () => {
    const tenantsFile = writeTenants([{ id: 'lease-kill', keys: [key('lease-kill')], rateLimit: { max: 300, timeWindow: '1 minute' } }]);
    const prefix = `lease-kill:${randomUUID()}:`;
    let a: GatewayProcess | undefined;
    let b: GatewayProcess | undefined;
    try {
      [a, b] = await Promise.all([startGatewayProcess({ sim: s, tenantsFile, prefix }), startGatewayProcess({ sim: s, tenantsFile, prefix })]);
      const list = (url: string) => call(url, 'GET', '/replicate/v1/predictions', { key: key('lease-kill') });
      // A takes a lease and uses part of it, then dies without a word (no shutdown, permits still held).
      const fromA = await Promise.all(Array.from({ length: 10 }, () => list(a!.url)));
      expect(count(fromA, 200)).toBe(10);
      a.child.kill('SIGKILL');
      await a.exited;
      const fromB: CallResult[] = [];
      for (let wave = 0; wave < 12; wave++) fromB.push(...(await Promise.all(Array.from({ length: 30 }, () => list(b!.url)))));
      const passed = count(fromA, 200) + count(fromB, 200);
      // Never more than the limit in the window; what A leased and never used (at most RATE_LIMIT_LEASE_MAX, 64) is
      // lost for this window, not handed out twice.
      expect(passed).toBeLessThanOrEqual(300);
      expect(passed).toBeGreaterThanOrEqual(300 - 64);
      expect(count(fromB, 429)).toBe(fromB.length - count(fromB, 200));
      expect(fromB.filter((r) => r.status === 429).every((r) => /request rate limit of 300 exceeded/.test(r.body.detail))).toBe(true);
    } catch (err) {
      throw new Error(`${(err as Error).message}\n--- gateway B ---\n${b?.output() ?? ''}`, { cause: err });
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

describe('durations', () => {
  it('round a fractional timeWindow to whole milliseconds, so the Redis window still expires', async () => {
    const r = await call(gw.url, 'GET', '/replicate/v1/predictions', { key: KEY_A });
    expect(r.status).toBe(200);
    expect(Number(r.headers.get('x-ratelimit-reset'))).toBeGreaterThanOrEqual(1);
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

  it('limits METRICS_TOKEN guessing like key guessing', async () => {
    const g = await startGateway({ sim: s, redis: 'memory', env: { METRICS_TOKEN: 'metrics-token-0123456789', AUTH_FAILURE_LIMIT: '5' } });
    try {
      const statuses = [];
      for (let i = 0; i < 7; i++) statuses.push((await call(g.url, 'GET', '/metrics', { key: `guess-${i}` })).status);
      expect(statuses).toEqual([401, 401, 401, 401, 401, 429, 429]);
    } finally {
      await g.close();
    }
  });
});

describe('request bounds', () => {
  it('closes requests whose body never arrives after REQUEST_TIMEOUT_MS, answering 408 problem JSON (finding 7)', async () => {
    const g = await startGateway({ sim: s, redis: 'memory', env: { REQUEST_TIMEOUT_MS: '1000' } });
    try {
      const { port } = new URL(g.url);
      const clients = Array.from({ length: 20 }, () => {
        const sock = connect(Number(port), '127.0.0.1');
        let data = '';
        sock.setEncoding('utf8').on('data', (d: string) => (data += d));
        const closed = new Promise<void>((r) => sock.once('close', () => r()));
        sock.write(`POST ${MODEL_PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${KEY_A}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"input":`);
        return { closed, data: () => data };
      });
      await Promise.all(clients.map((c) => c.closed));
      for (const c of clients) {
        expect(c.data()).toMatch(/^HTTP\/1.1 408 /);
        expect(c.data()).toMatch(/x-request-id: /);
        expect(JSON.parse(c.data().split('\r\n\r\n')[1]!)).toMatchObject({ status: 408, title: 'Bad request' });
      }
      expect(s.sim.requests.filter((r) => r.method === 'POST')).toHaveLength(0);
    } finally {
      await g.close();
    }
  });

  it('refuses JSON nested past JSON_MAX_DEPTH with a 422 naming it, and the tenant\'s list still works (finding 8)', async () => {
    const deep = `${'['.repeat(10_000)}"x"${']'.repeat(10_000)}`;
    for (const headers of [{ 'idempotency-key': randomUUID() }, undefined]) {
      const r = await call(gw.url, 'POST', MODEL_PATH, { key: KEY_A, rawBody: `{"input":{"deep":${deep}}}`, headers });
      expect(r.status).toBe(422);
      expect(r.body.detail).toMatch(/JSON_MAX_DEPTH \(64\)/);
    }
    let ok: unknown = 'x';
    for (let i = 0; i < 60; i++) ok = [ok];
    expect((await call(gw.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: { ok } } })).status).toBe(201);
    expect(s.sim.requests.filter((r) => r.method === 'POST')).toHaveLength(1);
    expect((await call(gw.url, 'GET', '/replicate/v1/predictions', { key: KEY_A })).status).toBe(200);
  });

  it('answers an upload over FILES_MAX_BYTES with 413 while it streams, and a non-multipart /files body with 415 unread', async () => {
    const g = await startGateway({ sim: s, redis: 'memory', env: { FILES_MAX_BYTES: '4096' } });
    try {
      const form = new FormData();
      form.append('content', new Blob(['x'.repeat(100_000)]), 'big.bin');
      const res = await fetch(`${g.url}/replicate/v1/files`, { method: 'POST', body: form, headers: { authorization: `Bearer ${KEY_A}` } });
      expect(res.status).toBe(413);
      expect(((await res.json()) as { detail: string }).detail).toMatch(/FILES_MAX_BYTES/);
      const r = await call(g.url, 'POST', '/replicate/v1/files', { key: KEY_A, rawBody: 'x'.repeat(100_000), headers: { 'content-type': 'application/octet-stream' } });
      expect(r.status).toBe(415);
      expect(r.body.detail).toMatch(/multipart\/form-data/);
    } finally {
      await g.close();
    }
  });

  it('answers headers too large (431) and a malformed request line (400) as problem JSON with a request id', async () => {
    const { port } = new URL(gw.url);
    const raw = (text: string) =>
      new Promise<string>((resolve) => {
        const sock = connect(Number(port), '127.0.0.1');
        let data = '';
        sock.setEncoding('utf8').on('data', (d: string) => (data += d));
        sock.once('close', () => resolve(data));
        sock.write(text);
      });
    const big = await raw(`GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`);
    expect(big).toMatch(/^HTTP\/1.1 431 /);
    const bad = await raw('NOT A REQUEST\r\n\r\n');
    expect(bad).toMatch(/^HTTP\/1.1 400 /);
    for (const text of [big, bad]) {
      expect(text).toMatch(/content-type: application\/problem\+json/);
      const problem = JSON.parse(text.split('\r\n\r\n')[1]!);
      expect(problem).toMatchObject({ type: expect.stringMatching(/^urn:fuhu-gateway:problem:/), title: expect.any(String), detail: expect.any(String) });
      expect(text).toContain(`x-request-id: ${problem.request_id}`);
    }
  });
});
