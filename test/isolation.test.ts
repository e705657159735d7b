// Issue 12: sharing one key stays safe when the upstream misbehaves (another id, an echoed key, a huge body, a
// hang) and when one tenant floods: each finding replayed against a real Redis, two gateways sharing state where
// state is shared, and a misbehaving simulator over real HTTP.
import { randomUUID } from 'node:crypto';
import { connect } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { MemoryStore } from '../src/store/memory-store.js';
import { KEY_A, KEY_B, MODEL_PATH, type Gateway, type SimHandle, call, createPrediction, startGateway, startSimulator, waitFor } from './helpers/stack.js';

let s: SimHandle;
/** Two replicas on one Redis prefix. */
let gw1: Gateway;
let gw2: Gateway;

const RUNNING = { prompt: 'long', duration_ms: 60_000 };
const get = (g: Gateway, id: string, key: string) => call(g.url, 'GET', `/replicate/v1/predictions/${id}`, { key });
const isGet = (m: string) => m === 'GET';
const isCreate = (m: string, p: string) => m === 'POST' && !p.endsWith('/cancel');

beforeAll(async () => {
  s = await startSimulator(100);
  const prefix = `iso:${randomUUID()}:`;
  const env = { DEFAULT_RATE_LIMIT_MAX: '100000', UPSTREAM_RETRIES: '0', POLL_CACHE_MS: '0' };
  gw1 = await startGateway({ sim: s, prefix, env });
  gw2 = await startGateway({ sim: s, prefix, env });
});
afterAll(async () => {
  await gw1.close();
  await gw2.close();
  await s.sim.close();
});
afterEach(() => {
  s.sim.clearFaults();
  s.sim.clearRequests();
});

describe('an upstream that answers about another prediction', () => {
  it('a create answered with an id another tenant owns is a 502, and the owner keeps it (finding 1)', async () => {
    const v = await createPrediction(gw1.url, KEY_A, RUNNING);
    // A deduplicating reseller: team B's identical create comes back as A's prediction.
    s.sim.injectFault({ kind: 'replaceId', id: v }, { match: isCreate });
    const b = await call(gw2.url, 'POST', MODEL_PATH, { key: KEY_B, body: { input: RUNNING } });
    expect(b.status).toBe(502);
    expect(b.headers.get('content-type')).toMatch(/problem\+json/);
    expect(b.body.detail).toMatch(/belongs to someone else/);
    expect(b.text).not.toContain(v);
    expect((await get(gw2, v, KEY_A)).status).toBe(200);
    expect((await get(gw1, v, KEY_B)).status).toBe(404);
    const listB = await call(gw1.url, 'GET', '/replicate/v1/predictions', { key: KEY_B });
    expect(listB.body.results.map((p: { id: string }) => p.id)).not.toContain(v);
    expect(gw2.logs.join('\n')).toMatch(new RegExp(`another tenant owns.*|"prediction":"${v}"`));
  });

  it('a GET or cancel answered with another id is a 502 and nothing is cached (finding 2)', async () => {
    const y = await createPrediction(gw1.url, KEY_A, RUNNING);
    const x = await createPrediction(gw2.url, KEY_B, RUNNING);
    s.sim.setStatus(y, 'succeeded');
    s.sim.injectFault({ kind: 'replaceId', id: y }, { match: (m, p) => p.includes(x) });
    const poll = await get(gw2, x, KEY_B);
    expect(poll.status).toBe(502);
    expect(poll.body.detail).toMatch(/different prediction/);
    s.sim.injectFault({ kind: 'replaceId', id: y }, { match: (m, p) => p.includes(x) });
    expect((await call(gw1.url, 'POST', `/replicate/v1/predictions/${x}/cancel`, { key: KEY_B })).status).toBe(502);
    // A's own prediction was never stored under X, nor as a cache hit for A; B's X is still its own.
    const a = await get(gw1, y, KEY_A);
    expect(a.status).toBe(200);
    expect(a.headers.get('x-cache')).toBe('MISS');
    const own = await get(gw2, x, KEY_B);
    expect(own.status).toBe(200);
    expect(own.body.id).toBe(x);
    expect(own.body.output).toBeNull();
  });
});

describe('an upstream that echoes the key', () => {
  it('never passes the upstream key on in a 2xx answer, the cache or the list (finding 3)', async () => {
    s.sim.injectFault({ kind: 'embed', text: s.apiKey }, { times: Infinity });
    const created = await call(gw1.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: { prompt: 'x', duration_ms: 0 } } });
    expect(created.status).toBe(201);
    expect(created.body.logs).toMatch(/\[redacted\]/);
    const id = created.body.id as string;
    const hit = await get(gw2, id, KEY_A);
    expect(hit.headers.get('x-cache')).toBe('HIT');
    const running = await createPrediction(gw1.url, KEY_A, RUNNING);
    const polled = await get(gw1, running, KEY_A);
    const list = await call(gw1.url, 'GET', '/replicate/v1/predictions', { key: KEY_A });
    for (const r of [created, hit, polled, list]) {
      expect(r.status).toBe(200 + (r === created ? 1 : 0));
      expect(r.text).not.toContain(s.apiKey);
    }
    expect([...gw1.logs, ...gw2.logs].join('\n')).not.toContain(s.apiKey);
  });
});

describe('one tenant cannot hurt another', () => {
  it('five 500s on team A\'s GETs pause team A only; team B keeps reading and creating (finding 4)', async () => {
    const g = await startGateway({ sim: s, env: { UPSTREAM_RETRIES: '0', POLL_CACHE_MS: '0' } });
    try {
      const a = await createPrediction(g.url, KEY_A, RUNNING);
      const b = await createPrediction(g.url, KEY_B, RUNNING);
      s.sim.injectFault({ kind: 'status', status: 500 }, { match: (m, p) => m === 'GET' && p.includes(a), times: Infinity });
      for (let i = 0; i < 5; i++) expect((await get(g, a, KEY_A)).status).toBe(502);
      const paused = await get(g, a, KEY_A);
      expect(paused.status).toBe(503);
      expect(paused.body.detail).toMatch(/failing repeatedly/);
      expect((await get(g, b, KEY_B)).status).toBe(200);
      expect((await call(g.url, 'POST', MODEL_PATH, { key: KEY_B, body: { input: { prompt: 'b' } } })).status).toBe(201);
      expect((await call(g.url, 'GET', '/readyz')).body).toMatchObject({ upstream_breaker: 'closed', tenant_breakers_open: ['team-a'] });
    } finally {
      await g.close();
    }
  });

  it('a tenant holding its share of the pool with long waits gets 429s, and another tenant is still served (finding 5)', async () => {
    const g = await startGateway({ sim: s, env: { UPSTREAM_CONNECTIONS: '8', UPSTREAM_TENANT_MAX_CONCURRENCY: '4', UPSTREAM_TIMEOUT_MS: '20000' } });
    try {
      const b = await createPrediction(g.url, KEY_B, RUNNING);
      // Team A: 12 creates the upstream holds for 3 s each (as replicate.run() with Prefer: wait does).
      let settled = 0;
      const flood = Array.from({ length: 12 }, () =>
        call(g.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: { prompt: 'slow', hold_ms: 3000 } } }).finally(() => settled++),
      );
      await waitFor(() => s.sim.requests.filter((r) => r.method === 'POST').length >= 5, 5000, 'team A to hold its share');
      const other = await get(g, b, KEY_B);
      expect(other.status).toBe(200);
      // B was answered while A's held creates were all still waiting.
      const inFlight = (await Promise.race([Promise.all(flood).then(() => 'done'), new Promise((r) => setImmediate(() => r('waiting')))]));
      expect(inFlight).toBe('waiting');
      const results = await Promise.all(flood);
      expect(settled).toBe(12);
      const limited = results.filter((r) => r.status === 429);
      expect(results.filter((r) => r.status === 201)).toHaveLength(4);
      expect(limited).toHaveLength(8);
      for (const r of limited) {
        expect(r.headers.get('retry-after')).toBe('1');
        expect(r.body.detail).toMatch(/UPSTREAM_TENANT_MAX_CONCURRENCY/);
      }
    } finally {
      await g.close();
    }
  });
});

describe('bounds', () => {
  it('cuts off a 100 MB upstream answer with a 502, without buffering it (finding 6)', async () => {
    const id = await createPrediction(gw1.url, KEY_A, RUNNING);
    s.sim.injectFault({ kind: 'hugeBody', bytes: 100 * 1024 * 1024 }, { match: isGet });
    const before = process.memoryUsage().rss;
    const r = await get(gw1, id, KEY_A);
    const grown = process.memoryUsage().rss - before;
    expect(r.status).toBe(502);
    expect(r.body.detail).toMatch(/larger than UPSTREAM_MAX_BODY_BYTES/);
    // At most the 16 MiB cap (and its string) is ever held, not the 100 MB.
    expect(grown).toBeLessThan(80 * 1024 * 1024);
    expect((await get(gw1, id, KEY_A)).status).toBe(200);
  });

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
      const r = await call(gw1.url, 'POST', MODEL_PATH, { key: KEY_A, rawBody: `{"input":{"deep":${deep}}}`, headers });
      expect(r.status).toBe(422);
      expect(r.body.detail).toMatch(/JSON_MAX_DEPTH \(64\)/);
    }
    let ok: unknown = 'x';
    for (let i = 0; i < 60; i++) ok = [ok];
    expect((await call(gw1.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: { ok } } })).status).toBe(201);
    expect(s.sim.requests.filter((r) => r.method === 'POST')).toHaveLength(1);
    expect((await call(gw1.url, 'GET', '/replicate/v1/predictions', { key: KEY_A })).status).toBe(200);
  });

  it('the memory store is bounded by bytes as well as entries (finding 9)', async () => {
    const store = new MemoryStore({ predictionTtlSeconds: 3600, cacheTtlSeconds: 3600, maxEntries: 100_000, maxBytes: 12 * 1024 * 1024 });
    const big = 'x'.repeat(1024 * 1024);
    for (let i = 0; i < 40; i++) {
      const json = JSON.stringify({ id: `m${i}`, status: 'succeeded', input: { big } });
      await store.recordCreate({ tenant: 't', id: `m${i}`, score: i, json, day: '2026-12-02', terminal: { status: 'succeeded', predictTime: 0 } });
    }
    // About 4 MB each for records and terminal bodies: the newest few stay, the oldest bodies are gone.
    expect((await store.lookup('m39')).terminal).not.toBeNull();
    expect((await store.lookup('m0')).terminal).toBeNull();
    const page = await store.listPage('t', { limit: 100 });
    expect(page.entries.length).toBeLessThanOrEqual(4);
    expect(page.entries[0]!.id).toBe('m39');
  });
});

describe('the smaller ones (finding 10)', () => {
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

  it('scopes Idempotency-Key to the credential: two tokens of one tenant never replay each other\'s creates', async () => {
    const g = await startGateway({ sim: s, env: { TOKEN_SIGNING_SECRET: 'x'.repeat(40) } });
    try {
      const mint = async () => (await call(g.url, 'POST', '/gateway/v1/tokens', { key: KEY_A, body: {} })).body.token as string;
      const [t1, t2] = [await mint(), await mint()];
      const headers = { 'idempotency-key': 'same-key-for-both' };
      const body = { input: { prompt: 'browser' } };
      const a = await call(g.url, 'POST', MODEL_PATH, { key: t1, body, headers });
      const b = await call(g.url, 'POST', MODEL_PATH, { key: t2, body, headers });
      const again = await call(g.url, 'POST', MODEL_PATH, { key: t1, body, headers });
      expect([a.status, b.status, again.status]).toEqual([201, 201, 201]);
      expect(b.body.id).not.toBe(a.body.id);
      expect(b.headers.get('idempotent-replayed')).toBeNull();
      expect(again.body.id).toBe(a.body.id);
      expect(again.headers.get('idempotent-replayed')).toBe('true');
    } finally {
      await g.close();
    }
  });

  it('fingerprints an idempotent create over the bytes that go upstream (__proto__ included)', async () => {
    const headers = { 'idempotency-key': randomUUID() };
    const first = await call(gw1.url, 'POST', MODEL_PATH, { key: KEY_A, rawBody: '{"input":{"prompt":"p"}}', headers });
    const poisoned = await call(gw1.url, 'POST', MODEL_PATH, { key: KEY_A, rawBody: '{"input":{"prompt":"p"},"__proto__":{"admin":true}}', headers });
    expect(first.status).toBe(201);
    expect(poisoned.status).toBe(422);
    expect(poisoned.body.detail).toMatch(/different request body/);
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
    const { port } = new URL(gw1.url);
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

describe('configuration of the bounds', () => {
  const base = { UPSTREAM_API_KEY: 'sk-test-secret-value-123', TENANTS_FILE: '/tmp/t.json' };
  it.each([
    [{ METRICS_TOKEN: 'short' }, /METRICS_TOKEN must be at least 16 characters/],
    [{ UPSTREAM_MAX_BODY_BYTES: '1048576', BODY_LIMIT_BYTES: '2097152' }, /UPSTREAM_MAX_BODY_BYTES must be larger than BODY_LIMIT_BYTES/],
    [{ UPSTREAM_CONNECTIONS: '8', UPSTREAM_TENANT_MAX_CONCURRENCY: '9' }, /UPSTREAM_TENANT_MAX_CONCURRENCY must be at most UPSTREAM_CONNECTIONS/],
    [{ JSON_MAX_DEPTH: '1' }, /JSON_MAX_DEPTH must be at least 2/],
  ])('refuses %o at boot, naming the variable', (env, message) => {
    expect(() => loadConfig({ ...base, ...env })).toThrow(message);
  });

  it('defaults each tenant to half the upstream pool and the answer cap above the body limit', () => {
    // The answer cap leaves room for the body, 1 MiB, and a FILES_MAX_BYTES file inlined as base64 (issue 13).
    const inlined = Math.ceil((10 * 1024 * 1024 * 4) / 3);
    expect(loadConfig(base)).toMatchObject({ UPSTREAM_CONNECTIONS: 128, UPSTREAM_TENANT_MAX_CONCURRENCY: 64, UPSTREAM_MAX_BODY_BYTES: 11 * 1024 * 1024 + inlined, JSON_MAX_DEPTH: 64 });
    expect(loadConfig({ ...base, BODY_LIMIT_BYTES: String(32 * 1024 * 1024) }).UPSTREAM_MAX_BODY_BYTES).toBe(33 * 1024 * 1024 + inlined);
  });
});
