// How the gateway behaves when things fail: deadlines, safe retries, upstream failures mapped to what a client can
// act on, the circuit breaker, an upstream that misbehaves (another id, an echoed key, a huge body) or a tenant that
// floods, overload, Redis outages, and faults injected through the simulator in mixed traffic. Everything goes over
// real HTTP; nothing asserts a duration (only what a client would see, and what reached the upstream).
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { COMMAND_TIMEOUT_MS } from '../src/store/redis-store.js';
import { UpstreamClient } from '../src/upstream/client.js';
import type { FaultRequest } from '../src/simulator/simulator.js';
import { RedisServer } from './support/redis.js';
import { freePort } from './support/processes.js';
import { KEY_A, KEY_B, MODEL_PATH, type CallResult, type Gateway, call, createPrediction, expectProblem, fromClients, sendCreate as create, startGateway, upstreamCalls, useGateway, useSimulator, useSteadyGateway, waitFor } from './helpers/stack.js';

const s = useSimulator(100);
const gw = useSteadyGateway(s);

const RUNNING = { prompt: 'long', duration_ms: 60_000 };
/** A client's read through the gateway (not a watcher's look or a balance read: `fromClients`). */
const isGet = (m: string, p: string, req: FaultRequest) => m === 'GET' && fromClients(m, p, req);
const isCreate = (m: string, p: string) => m === 'POST' && !p.endsWith('/cancel');
const isCancel = (m: string, p: string) => m === 'POST' && p.endsWith('/cancel');

const get = (id: string, base = gw.url, key = KEY_A) => call(base, 'GET', `/replicate/v1/predictions/${id}`, { key });
const upstreamGets = (id: string) => s.sim.requests.filter((r) => r.method === 'GET' && r.url.endsWith(`/predictions/${id}`));
const upstreamCreates = () => s.sim.requests.filter((r) => isCreate(r.method, r.url.split('?')[0]!));
const upstreamCancels = () => s.sim.requests.filter((r) => isCancel(r.method, r.url));

describe('deadlines', () => {
  it('answers 504 when the upstream hangs, on a GET and on a create, and the upstream sees each once', async () => {
    const id = await createPrediction(gw.url, KEY_A, RUNNING);
    s.sim.clearRequests();
    s.sim.injectFault({ kind: 'hang' }, { match: isGet });
    expectProblem(await get(id), 504, /did not answer within the deadline/);
    // A timed-out GET is not retried: its deadline is spent.
    expect(upstreamGets(id)).toHaveLength(1);
    s.sim.injectFault({ kind: 'hang' }, { match: isCreate });
    expectProblem(await create(gw.url), 504, /did not answer within the deadline/);
    expect(upstreamCreates()).toHaveLength(1);
    // The gateway is fine afterwards.
    expect((await get(id)).status).toBe(200);
  });

  it('answers 504 when the body trickles in past the deadline, and 200 when it arrives in time', async () => {
    const id = await createPrediction(gw.url, KEY_A, RUNNING);
    s.sim.injectFault({ kind: 'slowBody', delayMs: 2000 }, { match: isGet });
    expectProblem(await get(id), 504, /deadline/);
    s.sim.injectFault({ kind: 'slowBody', delayMs: 100 }, { match: isGet });
    const ok = await get(id);
    expect(ok.status).toBe(200);
    expect(ok.body.id).toBe(id);
  });

  it('extends the deadline for Prefer: wait=n, so a 1 s prediction succeeds with UPSTREAM_TIMEOUT_MS=500', async () => {
    const r = await create(gw.url, { input: { prompt: 'sync', duration_ms: 1000 }, headers: { prefer: 'wait=2' } });
    expect(r.status).toBe(201);
    expect(r.body.status).toBe('succeeded');
    expect(r.body.output).toEqual([expect.stringContaining(r.body.id)]);
    expect(upstreamCreates()[0]!.headers.prefer).toBe('wait=2');
  });
});

describe('retries', () => {
  it.each([502, 503, 504, 524, 429])('retries a GET after an upstream %i and answers 200', async (status) => {
    const id = await createPrediction(gw.url, KEY_A, RUNNING);
    s.sim.injectFault({ kind: 'status', status }, { match: isGet });
    const r = await get(id);
    expect(r.status).toBe(200);
    expect(r.body.id).toBe(id);
    expect(upstreamGets(id)).toHaveLength(2);
  });

  it('retries a GET after reset connections', async () => {
    const id = await createPrediction(gw.url, KEY_A, RUNNING);
    s.sim.injectFault({ kind: 'reset' }, { match: isGet, times: 2 });
    expect((await get(id)).status).toBe(200);
    expect(upstreamGets(id)).toHaveLength(3);
  });

  it('makes at most UPSTREAM_RETRIES (2) retries, then answers 502 naming the upstream status', async () => {
    const id = await createPrediction(gw.url, KEY_A, RUNNING);
    s.sim.injectFault({ kind: 'status', status: 503 }, { match: isGet, times: 100 });
    expectProblem(await get(id), 502, /upstream answered 503: no available channel/);
    expect(upstreamGets(id)).toHaveLength(3);
  });

  it('does not retry what a retry cannot fix: 500, 400, and the upstream refusing the gateway key (401)', async () => {
    const id = await createPrediction(gw.url, KEY_A, RUNNING);
    s.sim.injectFault({ kind: 'status', status: 500 }, { match: isGet });
    expectProblem(await get(id), 502, /answered 500/);
    s.sim.injectFault({ kind: 'status', status: 400, body: { title: 'Bad', detail: 'bad id', status: 400 } }, { match: isGet });
    expectProblem(await get(id), 400, /upstream: bad id/);
    s.sim.injectFault({ kind: 'status', status: 401, body: { title: 'Unauthenticated', detail: 'You did not pass an authentication token', status: 401 } }, { match: isGet });
    expectProblem(await get(id), 502, /UPSTREAM_API_KEY/);
    expect(upstreamGets(id)).toHaveLength(3);
  });

  it('honours Retry-After: a 429 whose Retry-After ends after the deadline goes back to the client with it', async () => {
    const id = await createPrediction(gw.url, KEY_A, RUNNING);
    s.sim.injectFault({ kind: 'status', status: 429, headers: { 'retry-after': '7' } }, { match: isGet });
    const r = await get(id);
    expectProblem(r, 429, /upstream load saturated/);
    expect(r.headers.get('retry-after')).toBe('7');
    expect(upstreamGets(id)).toHaveLength(1);
  });

  it('honours Retry-After: with a deadline long enough, the GET waits and retries, and the client gets 200', async () => {
    const long = new UpstreamClient({ baseUrl: s.url, apiKey: s.apiKey, timeoutMs: 5000, retries: 2 });
    const g = await startGateway({ sim: s, env: { UPSTREAM_TIMEOUT_MS: '5000' }, deps: { upstream: long } });
    try {
      const id = await createPrediction(g.url, KEY_A, RUNNING);
      s.sim.injectFault({ kind: 'status', status: 429, headers: { 'retry-after': '1' } }, { match: isGet });
      const r = await get(id, g.url);
      expect(r.status).toBe(200);
      expect(upstreamGets(id)).toHaveLength(2);
    } finally {
      await g.close();
      await long.close();
    }
  });

  it('retries a cancel after a 503', async () => {
    const id = await createPrediction(gw.url, KEY_A, RUNNING);
    s.sim.injectFault({ kind: 'status', status: 503 }, { match: isCancel });
    const r = await call(gw.url, 'POST', `/replicate/v1/predictions/${id}/cancel`, { key: KEY_A });
    expect(r.status).toBe(200);
    expect(r.body.status).toBe('canceled');
    expect(upstreamCancels()).toHaveLength(2);
  });

  it.each([
    ['an upstream 503', { kind: 'status', status: 503 } as const, 502],
    ['an upstream 502', { kind: 'status', status: 502 } as const, 502],
    ['a reset connection', { kind: 'reset' } as const, 502],
    ['a 429 with Retry-After: 0', { kind: 'status', status: 429, headers: { 'retry-after': '0' } } as const, 429],
  ])('never retries a create: after %s the upstream saw it exactly once', async (_what, fault, status) => {
    s.sim.injectFault(fault, { match: isCreate, times: 5 });
    const r = await create(gw.url);
    expectProblem(r, status);
    expect(upstreamCreates()).toHaveLength(1);
  });

  it('answers 502 "refused" when nothing listens upstream, after retrying the GET', async () => {
    const port = await freePort();
    const prefix = `refused:${randomUUID()}:`;
    const live = await startGateway({ sim: s, prefix });
    const dead = await startGateway({ sim: { ...s, url: `http://127.0.0.1:${port}/replicate/v1` }, prefix, env: { UPSTREAM_TIMEOUT_MS: '2000' } });
    try {
      const id = await createPrediction(live.url, KEY_A, RUNNING);
      expectProblem(await get(id, dead.url), 502, /refused the connection/);
      expectProblem(await create(dead.url), 502, /refused the connection/);
    } finally {
      await dead.close();
      await live.close();
    }
  });
});

describe('upstream failures', () => {
  // Its own gateway, on the in-memory store, with an 800 ms deadline.
  const gw = useGateway(() => ({ sim: s, redis: 'memory', env: { UPSTREAM_TIMEOUT_MS: '800', BODY_LIMIT_BYTES: '2048' } }));

  it('keeps an upstream 4xx status and its message as problem JSON', async () => {
    const r = await call(gw.url, 'POST', '/replicate/v1/models/sim/quota-exceeded/predictions', { key: KEY_A, body: { input: {} } });
    expect(r.status).toBe(403);
    expect(r.body).toMatchObject({ status: 403, title: 'Forbidden' });
    expect(r.body.detail).toContain('quota');
  });

  it('maps an upstream 5xx to 502 with the reason', async () => {
    const r = await call(gw.url, 'POST', '/replicate/v1/models/sim/no-channel/predictions', { key: KEY_A, body: { input: {} } });
    expect(r.status).toBe(502);
    expect(r.body.detail).toMatch(/503.*no available channel/);
  });

  it('maps a reset connection to 502 and a hang to 504, without stack traces', async () => {
    s.sim.injectFault({ kind: 'reset' }, { match: fromClients });
    const reset = await call(gw.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: {} } });
    expect(reset.status).toBe(502);
    expect(reset.body.detail).toMatch(/closed the connection|could not be reached/);
    s.sim.injectFault({ kind: 'hang' }, { match: fromClients });
    const hang = await call(gw.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: {} } });
    expect(hang.status).toBe(504);
    for (const r of [reset, hang]) {
      expect(r.text).not.toMatch(/at .*\.(ts|js):\d+/);
      expect(r.text).not.toContain(s.apiKey);
    }
  });

  it('maps a refused connection to 502', async () => {
    const dead = await startGateway({ sim: { ...s, url: 'http://127.0.0.1:1/replicate/v1' }, redis: 'memory' });
    try {
      const r = await call(dead.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: {} } });
      expect(r.status).toBe(502);
      expect(r.body.detail).toMatch(/refused/);
    } finally {
      await dead.close();
    }
  });

  it('never echoes the upstream key or headers from an upstream error', async () => {
    s.sim.injectFault({
      kind: 'status',
      status: 400,
      body: { error: { message: `bad token Bearer ${s.apiKey} for ${s.apiKey}`, type: 'x' } },
      headers: { 'x-upstream-secret': 'leak' },
    }, { match: fromClients });
    const r = await call(gw.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: {} } });
    expect(r.status).toBe(400);
    expect(r.text).not.toContain(s.apiKey);
    expect(r.headers.get('x-upstream-secret')).toBeNull();
    expect(r.body.detail).toContain('[redacted]');
  });

  it('reports an upstream 401 (the gateway key refused) as 502, not as the client\'s fault', async () => {
    const wrong = await startGateway({ sim: { ...s, apiKey: 'sk-wrong-upstream-key-000000' }, redis: 'memory' });
    try {
      const r = await call(wrong.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: {} } });
      expect(r.status).toBe(502);
      expect(r.body.detail).toMatch(/UPSTREAM_API_KEY/);
      expect(r.text).not.toContain('sk-wrong-upstream-key');
    } finally {
      await wrong.close();
    }
  });
});

describe('circuit breaker', () => {
  // Requests about these predictions (other gateways on the same simulator have watchers of their own).
  const mine = (ids: string[]) => s.sim.requests.filter((r) => ids.some((id) => r.url.includes(id)));
  let up: UpstreamClient;
  let g: Gateway;
  beforeAll(async () => {
    // Three failed attempts in a row open it for one second.
    up = new UpstreamClient({ baseUrl: s.url, apiKey: s.apiKey, timeoutMs: 500, retries: 0, breakerThreshold: 3, breakerCooldownMs: 1000 });
    // The watcher of open predictions stays out of the way: these tests count every upstream call their requests make.
    g = await startGateway({ sim: s, env: { UPSTREAM_TIMEOUT_MS: '500', UPSTREAM_RETRIES: '0', WATCH_MIN_MS: '3600000', WATCH_MAX_MS: '3600000' }, deps: { upstream: up } });
  });
  afterAll(async () => {
    await g.close();
    await up.close();
  });

  it('fails fast with 503 + Retry-After while the upstream keeps failing, and recovers after the cool-down', async () => {
    const id = await createPrediction(g.url, KEY_A, RUNNING);
    s.sim.clearRequests();
    s.sim.injectFault({ kind: 'status', status: 503 }, { times: 1000 });
    for (let i = 0; i < 3; i++) expectProblem(await get(id, g.url), 502, /503/);
    // Open: nothing reaches the upstream, every request is answered at once.
    const burst = await Promise.all(Array.from({ length: 20 }, () => get(id, g.url)));
    for (const r of burst) {
      expectProblem(r, 503, /failing repeatedly/, true);
      expect(r.body.title).toBe('Upstream unavailable');
    }
    expectProblem(await create(g.url), 503, /failing repeatedly/, true);
    expect(mine([id])).toHaveLength(3);
    expect(s.sim.requests.filter((r) => r.method === 'POST')).toHaveLength(0);
    // One tenant's failing GETs open that tenant's breaker, not the upstream-wide one (issue 12).
    const ready = (await call(g.url, 'GET', '/readyz')).body;
    expect(ready.upstream_breaker).toBe('closed');
    expect(ready.tenant_breakers_open).toEqual(['team-a']);

    s.sim.clearFaults();
    await waitFor(async () => (await get(id, g.url)).status === 200, 5000, 'the breaker to close');
    expect((await call(g.url, 'GET', '/readyz')).body).toMatchObject({ upstream_breaker: 'closed', tenant_breakers_open: [] });
    expect((await create(g.url)).status).toBe(201);
  });

  it('stays closed when creates for one unavailable model answer 503, so other teams keep working', async () => {
    // New-API answers 503 "no available channel for model X": a fact about that model, not about the upstream.
    for (let i = 0; i < 6; i++) {
      const r = await call(g.url, 'POST', '/replicate/v1/models/sim/no-channel/predictions', { key: KEY_A, body: { input: {} } });
      expectProblem(r, 502, /no available channel/);
    }
    expect((await call(g.url, 'GET', '/readyz')).body.upstream_breaker).toBe('closed');
    expect((await create(g.url)).status).toBe(201);
  });

  it('opens on hangs too, so timeouts do not pile up; while the probe runs, others fail fast', async () => {
    // Three different predictions: concurrent polls of one id would share one upstream call.
    const ids = await Promise.all(Array.from({ length: 3 }, () => createPrediction(g.url, KEY_A, RUNNING)));
    const id = ids[0]!;
    s.sim.clearRequests();
    s.sim.injectFault({ kind: 'hang' }, { match: isGet, times: 3 });
    const hung = await Promise.all(ids.map((x) => get(x, g.url)));
    for (const r of hung) expectProblem(r, 504);
    const fast = await Promise.all(Array.from({ length: 30 }, () => get(id, g.url)));
    for (const r of fast) expectProblem(r, 503, /failing repeatedly/, true);
    expect(mine(ids)).toHaveLength(3);

    // After the cool-down one probe goes through; while it is in flight the rest are not queued behind it.
    await sleep(1100);
    s.sim.injectFault({ kind: 'delay', delayMs: 300 }, { match: isGet });
    const probe = get(id, g.url);
    await waitFor(() => mine(ids).length === 4, 2000, 'the probe to reach the upstream');
    // (Polls of other predictions: polls of the probe's own id would simply share its answer.)
    const during = await Promise.all(Array.from({ length: 10 }, (_, i) => get(ids[1 + (i % 2)]!, g.url)));
    for (const r of during) expectProblem(r, 503, /failing repeatedly/, true);
    expect((await probe).status).toBe(200);
    expect(mine(ids)).toHaveLength(4);
    expect((await get(id, g.url)).status).toBe(200);
  });
});

describe('an upstream that misbehaves, and a tenant that floods (two replicas on one Redis)', () => {
  const prefix = `iso:${randomUUID()}:`;
  const env = { DEFAULT_RATE_LIMIT_MAX: '100000', UPSTREAM_RETRIES: '0', POLL_CACHE_MS: '0' };
  const gw1 = useGateway(() => ({ sim: s, prefix, env }));
  const gw2 = useGateway(() => ({ sim: s, prefix, env }));
  const getVia = (g: Gateway, id: string, key: string) => call(g.url, 'GET', `/replicate/v1/predictions/${id}`, { key });

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
      expect((await getVia(gw2, v, KEY_A)).status).toBe(200);
      expect((await getVia(gw1, v, KEY_B)).status).toBe(404);
      const listB = await call(gw1.url, 'GET', '/replicate/v1/predictions', { key: KEY_B });
      expect(listB.body.results.map((p: { id: string }) => p.id)).not.toContain(v);
      expect(gw2.logs.join('\n')).toMatch(new RegExp(`another tenant owns.*|"prediction":"${v}"`));
    });

    it('a GET or cancel answered with another id is a 502 and nothing is cached (finding 2)', async () => {
      const y = await createPrediction(gw1.url, KEY_A, RUNNING);
      const x = await createPrediction(gw2.url, KEY_B, RUNNING);
      s.sim.setStatus(y, 'succeeded');
      s.sim.injectFault({ kind: 'replaceId', id: y }, { match: (m, p) => p.includes(x) });
      const poll = await getVia(gw2, x, KEY_B);
      expect(poll.status).toBe(502);
      expect(poll.body.detail).toMatch(/different prediction/);
      s.sim.injectFault({ kind: 'replaceId', id: y }, { match: (m, p) => p.includes(x) });
      expect((await call(gw1.url, 'POST', `/replicate/v1/predictions/${x}/cancel`, { key: KEY_B })).status).toBe(502);
      // A's own prediction was never stored under X, nor as a cache hit for A; B's X is still its own.
      const a = await getVia(gw1, y, KEY_A);
      expect(a.status).toBe(200);
      expect(a.headers.get('x-cache')).toBe('MISS');
      const own = await getVia(gw2, x, KEY_B);
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
      const hit = await getVia(gw2, id, KEY_A);
      expect(hit.headers.get('x-cache')).toBe('HIT');
      const running = await createPrediction(gw1.url, KEY_A, RUNNING);
      const polled = await getVia(gw1, running, KEY_A);
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
        for (let i = 0; i < 5; i++) expect((await getVia(g, a, KEY_A)).status).toBe(502);
        const paused = await getVia(g, a, KEY_A);
        expect(paused.status).toBe(503);
        expect(paused.body.detail).toMatch(/failing repeatedly/);
        expect((await getVia(g, b, KEY_B)).status).toBe(200);
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
        const other = await getVia(g, b, KEY_B);
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

  describe('an upstream answer too large', () => {
    it('cuts off a 100 MB upstream answer with a 502, without buffering it (finding 6)', async () => {
      const id = await createPrediction(gw1.url, KEY_A, RUNNING);
      s.sim.injectFault({ kind: 'hugeBody', bytes: 100 * 1024 * 1024 }, { match: isGet });
      const before = process.memoryUsage().rss;
      const r = await getVia(gw1, id, KEY_A);
      const grown = process.memoryUsage().rss - before;
      expect(r.status).toBe(502);
      expect(r.body.detail).toMatch(/larger than UPSTREAM_MAX_BODY_BYTES/);
      // At most the 16 MiB cap (and its string) is ever held, not the 100 MB.
      expect(grown).toBeLessThan(80 * 1024 * 1024);
      expect((await getVia(gw1, id, KEY_A)).status).toBe(200);
    });
  });
});

describe('overload', () => {
  it('answers 503 problem JSON with Retry-After when the heap is over OVERLOAD_MAX_HEAP_BYTES, and calls nothing upstream', async () => {
    const g = await startGateway({ sim: s, env: { OVERLOAD_MAX_HEAP_BYTES: '1' } });
    try {
      // under-pressure samples once a second.
      await waitFor(async () => (await call(g.url, 'GET', '/readyz')).status === 503, 5000, 'the overload check');
      // Liveness is exempt: an overloaded process is still alive.
      expect((await call(g.url, 'GET', '/healthz')).status).toBe(200);
      s.sim.clearRequests();
      const r = await create(g.url);
      expectProblem(r, 503, /overloaded \(heapUsedBytes\)/, true);
      expect(r.body.title).toBe('Service overloaded');
      expect(upstreamCreates()).toHaveLength(0);
      expect(g.logs.join('\n')).not.toMatch(/Reply was already sent|already sent/);
    } finally {
      await g.close();
    }
  });

  it('answers 503 while the event loop is blocked past OVERLOAD_MAX_EVENT_LOOP_DELAY_MS, and recovers', async () => {
    const g = await startGateway({ sim: s, env: { OVERLOAD_MAX_EVENT_LOOP_DELAY_MS: '40' } });
    // Busy-wait 100 ms on every tick: the gateway (in this process) sees a ~100 ms event-loop delay.
    const blocker = setInterval(() => {
      const end = Date.now() + 100;
      while (Date.now() < end);
    }, 1);
    try {
      let seen: CallResult | undefined;
      await waitFor(async () => (seen = await call(g.url, 'GET', '/readyz')).status === 503, 8000, 'the event-loop check');
      expectProblem(seen!, 503, /overloaded \(eventLoopDelay\)/, true);
    } finally {
      clearInterval(blocker);
    }
    try {
      await waitFor(async () => (await call(g.url, 'GET', '/readyz')).status === 200, 8000, 'recovery');
    } finally {
      await g.close();
    }
  });
});

/** A well-behaved client create: one Idempotency-Key, retried on 5xx, 409 and 429 until it gets a 201 (or gives up). */
async function createUntilDone(base: string, seen: CallResult[], stopped = () => false): Promise<string | undefined> {
  const key = randomUUID();
  const until = Date.now() + 15_000;
  while (Date.now() < until && !stopped()) {
    const r = await create(base, { idem: key, input: { prompt: 'p', duration_ms: 300 } });
    seen.push(r);
    if (r.status === 201) return r.body.id as string;
    expect([409, 429, 502, 503, 504]).toContain(r.status);
    expect(r.headers.get('content-type')).toMatch(/problem\+json/);
    await sleep(r.status === 429 ? 200 : 30);
  }
  return undefined;
}

describe('faults through the simulator: no crash, no loss, no duplicates', () => {
  it('survives bursts of 5xx, resets, hangs, slow bodies and 429s in mixed traffic', async () => {
    const before = new Set(s.sim.predictions.keys());
    const creates: CallResult[] = [];
    const ids: string[] = [];
    const burst = async () => {
      s.sim.injectFault({ kind: 'status', status: 503 }, { times: 5 });
      s.sim.injectFault({ kind: 'status', status: 500 }, { times: 2 });
      s.sim.injectFault({ kind: 'reset' }, { times: 3 });
      s.sim.injectFault({ kind: 'status', status: 429, headers: { 'retry-after': '1' } }, { times: 3 });
      // A create that hangs or times out may have been made upstream, so its key stays held (409) for the lease;
      // those are covered above. Here they hit the polls.
      s.sim.injectFault({ kind: 'hang' }, { match: isGet, times: 2 });
      s.sim.injectFault({ kind: 'slowBody', delayMs: 1000 }, { match: isGet, times: 2 });
    };
    const worker = async () => {
      for (let i = 0; i < 4; i++) {
        const id = await createUntilDone(gw.url, creates);
        if (id) ids.push(id);
        if (ids.length) {
          const r = await get(ids[Math.floor(Math.random() * ids.length)]!);
          expect([200, 429, 502, 504]).toContain(r.status);
        }
        if (i % 2 === 0) await burst();
      }
    };
    await burst();
    await Promise.all(Array.from({ length: 5 }, worker));
    s.sim.clearFaults();

    // The faults were felt, and every logical create still ended in exactly one prediction.
    expect(creates.some((r) => r.status >= 500)).toBe(true);
    expect(ids).toHaveLength(20);
    const created = [...s.sim.predictions.keys()].filter((id) => !before.has(id));
    expect(new Set(created)).toEqual(new Set(ids));
    for (const id of ids) {
      const r = await get(id);
      expect(r.status).toBe(200);
      expect(r.body.id).toBe(id);
    }
    expect((await call(gw.url, 'GET', '/healthz')).status).toBe(200);
  });
});

describe('Redis outage', () => {
  let redis: RedisServer;
  beforeAll(async () => {
    redis = await RedisServer.start();
  });
  afterAll(async () => {
    await redis.destroy();
  });

  it('answers 503 with Retry-After while Redis is down, fails closed, and recovers by itself', async () => {
    const g = await startGateway({ sim: s, redis: redis.url });
    try {
      const id = await createPrediction(g.url, KEY_A);
      await redis.stop();
      await waitFor(() => !g.app.store.isReady(), 5000, 'the gateway to notice');
      s.sim.clearRequests();
      const get = await call(g.url, 'GET', `/replicate/v1/predictions/${id}`, { key: KEY_A });
      expect(get.status).toBe(503);
      expect(get.headers.get('retry-after')).toMatch(/^\d+$/);
      expect(get.headers.get('content-type')).toMatch(/problem\+json/);
      const create = await call(g.url, 'POST', '/replicate/v1/models/a/b/predictions', { key: KEY_A, body: { input: {} } });
      expect(create.status).toBe(503);
      // Fail closed: nothing was served, and no paid job was started that the gateway could not record.
      expect(upstreamCalls(s.sim)).toHaveLength(0);
      expect((await call(g.url, 'GET', '/healthz')).status).toBe(200);
      expect((await call(g.url, 'GET', '/readyz')).status).toBe(503);
      // Both refused requests are counted, whichever part of the path met the outage.
      expect((await g.app.metrics.storeErrors.get()).values[0]?.value).toBe(2);

      await redis.start();
      await waitFor(async () => (await call(g.url, 'GET', '/readyz')).status === 200, 10_000, 'readyz to recover');
      const after = await call(g.url, 'GET', `/replicate/v1/predictions/${id}`, { key: KEY_A });
      expect(after.status).toBe(200);
      expect(after.body.id).toBe(id);
      expect(g.logs.join('\n')).toMatch(/redis unavailable/);
    } finally {
      await g.close();
    }
  });

  it('answers 503 within seconds, not never, when Redis holds the connection open but stops answering', async () => {
    const g = await startGateway({ sim: s, redis: redis.url });
    try {
      expect((await call(g.url, 'GET', '/replicate/v1/predictions', { key: KEY_A })).status).toBe(200);
      redis.pause();
      try {
        const started = Date.now();
        const [list, other] = await Promise.all([
          call(g.url, 'GET', '/replicate/v1/predictions', { key: KEY_A }),
          call(g.url, 'GET', `/replicate/v1/predictions/${randomUUID()}`, { key: KEY_A }),
        ]);
        expect([list.status, other.status]).toEqual([503, 503]);
        expect(list.body.detail).toMatch(/state store is unavailable/);
        expect(Number(list.headers.get('retry-after'))).toBeGreaterThan(0);
        expect(Date.now() - started).toBeLessThan(COMMAND_TIMEOUT_MS + 3000);
      } finally {
        redis.resume();
      }
      await waitFor(async () => (await call(g.url, 'GET', '/replicate/v1/predictions', { key: KEY_A })).status === 200, 10_000, 'answers after Redis resumes');
    } finally {
      await g.close();
    }
  });

  it('boots while Redis is unreachable, says so, answers /readyz 503, and connects when Redis comes', async () => {
    await redis.stop();
    const g = await startGateway({ sim: s, redis: redis.url, waitReady: false });
    try {
      const url = g.url;
      expect((await call(url, 'GET', '/readyz')).status).toBe(503);
      expect((await call(url, 'GET', '/healthz')).status).toBe(200);
      await redis.start();
      await waitFor(async () => (await call(url, 'GET', '/readyz')).status === 200, 10_000, 'readyz after boot');
      expect(g.logs.join('\n')).toMatch(/redis unavailable/);
      expect(g.logs.join('\n')).toMatch(/redis connected/);
    } finally {
      await g.close();
    }
  });

  // The same outage with traffic going on: every answer is one a client can act on, and nothing is lost.
  it('answers 503 + Retry-After while Redis is down, then loses nothing and creates nothing twice', async () => {
    const g = await startGateway({ sim: s, redis: redis.url, env: { UPSTREAM_TIMEOUT_MS: '1000', DEFAULT_RATE_LIMIT_MAX: '100000', POLL_CACHE_MS: '0' } });
    const before = new Set(s.sim.predictions.keys());
    const seen: CallResult[] = [];
    const ids: string[] = [];
    let stop = false;
    const worker = async () => {
      while (!stop) {
        // A claim Redis took just as it died (its answer lost) holds the key until its lease ends: that client
        // keeps getting 409 for a while, so stop retrying when the test is done.
        const id = await createUntilDone(g.url, seen, () => stop);
        if (id) ids.push(id);
        if (ids.length) seen.push(await get(ids[Math.floor(Math.random() * ids.length)]!, g.url));
      }
    };
    // Pollers too: a create caught by the outage after the upstream made its job waits for Redis to record it.
    const poller = async () => {
      while (!stop) {
        if (ids.length) seen.push(await get(ids[Math.floor(Math.random() * ids.length)]!, g.url));
        await sleep(10);
      }
    };
    const workers = Promise.all([...Array.from({ length: 4 }, worker), poller(), poller()]);
    try {
      await waitFor(() => ids.length >= 10, 10_000, 'traffic before the outage');
      await redis.stop();
      await waitFor(() => !g.app.store.isReady(), 5000, 'the gateway to notice the outage');
      const from = seen.length;
      await waitFor(() => seen.slice(from).filter((r) => r.status === 503).length >= 10, 5000, 'requests during the outage');
      await redis.start();
      await waitFor(async () => (await call(g.url, 'GET', '/readyz')).status === 200, 10_000, 'readyz to recover');
      const after = ids.length;
      await waitFor(() => ids.length >= after + 10, 10_000, 'traffic after the outage');
      stop = true;
      await workers;

      // Every answer was a prediction or a problem a client can act on: during the outage 503 + Retry-After.
      const failed = seen.filter((r) => r.status >= 400);
      expect(failed.length).toBeGreaterThanOrEqual(10);
      for (const r of failed) {
        if (r.status === 503) expectProblem(r, 503, /state store is unavailable|cannot be checked/, true);
        else expectProblem(r, 409, /still in progress/, true);
      }
      // After it: every prediction a client was told about is readable, and each logical create made one job.
      for (const id of ids) {
        const r = await get(id, g.url);
        expect(r.status).toBe(200);
        expect(r.body.id).toBe(id);
      }
      const created = [...s.sim.predictions.keys()].filter((id) => !before.has(id));
      expect(new Set(created)).toEqual(new Set(ids));
      expect(created).toHaveLength(ids.length);
      expect((await call(g.url, 'GET', '/healthz')).status).toBe(200);
    } finally {
      stop = true;
      await workers.catch(() => {});
      await g.close();
    }
  });
});
