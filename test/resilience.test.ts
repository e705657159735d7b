// Issue 5: how the gateway behaves when things fail — deadlines, safe retries, idempotent creates, poll coalescing,
// the circuit breaker, overload, and faults injected through the simulator and a real Redis outage. Everything goes
// over real HTTP; nothing asserts a duration (only what a client would see, and what reached the upstream).
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { UpstreamClient } from '../src/upstream/client.js';
import { startGatewayProcess, stopAllGatewayProcesses } from './helpers/processes.js';
import { RedisServer, freePort } from './helpers/redis.js';
import {
  DEFAULT_TENANTS,
  KEY_A,
  KEY_B,
  MODEL_PATH,
  type CallResult,
  type Gateway,
  type SimHandle,
  call,
  createPrediction,
  startGateway,
  startSimulator,
  waitFor,
  writeTenants,
} from './helpers/stack.js';

let s: SimHandle;
/** UPSTREAM_TIMEOUT_MS=500, 2 retries; its breaker never opens, so one test's faults cannot leak into the next. */
let gw: Gateway;
let upstream: UpstreamClient;

const RUNNING = { prompt: 'long', duration_ms: 60_000 };
const isGet = (m: string) => m === 'GET';
const isCreate = (m: string, p: string) => m === 'POST' && !p.endsWith('/cancel');
const isCancel = (m: string, p: string) => m === 'POST' && p.endsWith('/cancel');

beforeAll(async () => {
  s = await startSimulator(100);
  upstream = new UpstreamClient({ baseUrl: s.url, apiKey: s.apiKey, timeoutMs: 500, retries: 2, breakerThreshold: 1_000_000 });
  gw = await startGateway({ sim: s, env: { UPSTREAM_TIMEOUT_MS: '500', DEFAULT_RATE_LIMIT_MAX: '100000' }, deps: { upstream } });
});
afterAll(async () => {
  await gw.close();
  await upstream.close();
  await stopAllGatewayProcesses();
  await s.sim.close();
});
afterEach(() => {
  s.sim.clearFaults();
  s.sim.clearRequests();
});

const get = (id: string, base = gw.url, key = KEY_A) => call(base, 'GET', `/replicate/v1/predictions/${id}`, { key });
const upstreamGets = (id: string) => s.sim.requests.filter((r) => r.method === 'GET' && r.url.endsWith(`/predictions/${id}`));
const upstreamCreates = () => s.sim.requests.filter((r) => isCreate(r.method, r.url.split('?')[0]!));
const upstreamCancels = () => s.sim.requests.filter((r) => isCancel(r.method, r.url));

function create(base: string, opts: { key?: string; input?: Record<string, unknown>; idem?: string; headers?: Record<string, string> } = {}) {
  const headers: Record<string, string> = { ...opts.headers };
  if (opts.idem) headers['idempotency-key'] = opts.idem;
  return call(base, 'POST', MODEL_PATH, { key: opts.key ?? KEY_A, body: { input: opts.input ?? { prompt: 'a cat' } }, headers });
}

/** A client-visible error: problem JSON with the given status, and a Retry-After in whole seconds when asked. */
function expectProblem(r: CallResult, status: number, detail?: RegExp, retryAfter = false) {
  expect(r.status).toBe(status);
  expect(r.headers.get('content-type')).toMatch(/^application\/problem\+json/);
  expect(r.body).toMatchObject({ status, type: expect.stringMatching(/^urn:fuhu-gateway:problem:/), title: expect.any(String) });
  if (detail) expect(r.body.detail).toMatch(detail);
  if (retryAfter) expect(r.headers.get('retry-after')).toMatch(/^[1-9]\d*$/);
  // Never a stack trace or the upstream key.
  expect(r.text).not.toMatch(/at .*\.(ts|js):\d+/);
  expect(r.text).not.toContain(s.apiKey);
}

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

  it('clamps Prefer: wait to 60 before forwarding', async () => {
    const r = await create(gw.url, { input: { duration_ms: 0 }, headers: { prefer: 'wait=90' } });
    expect(r.status).toBe(201);
    expect(upstreamCreates()[0]!.headers.prefer).toBe('wait=60');
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

describe('Idempotency-Key on creates', () => {
  it('replays the stored response with idempotent-replayed: true, calling the upstream once', async () => {
    const key = randomUUID();
    const first = await create(gw.url, { idem: key });
    expect(first.status).toBe(201);
    expect(first.headers.get('idempotent-replayed')).toBeNull();
    const again = await create(gw.url, { idem: key });
    expect(again.status).toBe(201);
    expect(again.headers.get('idempotent-replayed')).toBe('true');
    expect(again.body.id).toBe(first.body.id);
    expect(again.body.urls.get).toBe(`${gw.url}/replicate/v1/predictions/${first.body.id}`);
    expect(upstreamCreates()).toHaveLength(1);
  });

  it('calls the upstream once when 10 duplicates arrive at the same moment', async () => {
    s.sim.injectFault({ kind: 'delay', delayMs: 200 }, { match: isCreate });
    const key = randomUUID();
    const all = await Promise.all(Array.from({ length: 10 }, () => create(gw.url, { idem: key })));
    expect(all.map((r) => r.status)).toEqual(Array(10).fill(201));
    expect(new Set(all.map((r) => r.body.id)).size).toBe(1);
    expect(all.filter((r) => r.headers.get('idempotent-replayed') === 'true')).toHaveLength(9);
    expect(upstreamCreates()).toHaveLength(1);
  });

  it('calls the upstream once when duplicates arrive at two replicas on one Redis', async () => {
    const prefix = `idem:${randomUUID()}:`;
    const [a, b] = await Promise.all([startGateway({ sim: s, prefix }), startGateway({ sim: s, prefix })]);
    try {
      s.sim.clearRequests();
      s.sim.injectFault({ kind: 'delay', delayMs: 200 }, { match: isCreate });
      const key = randomUUID();
      const all = await Promise.all(Array.from({ length: 10 }, (_, i) => create(i % 2 ? a.url : b.url, { idem: key })));
      expect(all.map((r) => r.status)).toEqual(Array(10).fill(201));
      expect(new Set(all.map((r) => r.body.id)).size).toBe(1);
      expect(upstreamCreates()).toHaveLength(1);
      // Either replica can read it.
      expect((await get(all[0]!.body.id, a.url)).status).toBe(200);
      expect((await get(all[0]!.body.id, b.url)).status).toBe(200);
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });

  it('calls the upstream once when duplicates arrive at two gateway processes', async () => {
    const prefix = `idem-proc:${randomUUID()}:`;
    const tenantsFile = writeTenants(DEFAULT_TENANTS);
    const [a, b] = await Promise.all([startGatewayProcess({ sim: s, tenantsFile, prefix }), startGatewayProcess({ sim: s, tenantsFile, prefix })]);
    try {
      s.sim.clearRequests();
      s.sim.injectFault({ kind: 'delay', delayMs: 300 }, { match: isCreate });
      const key = randomUUID();
      const all = await Promise.all(Array.from({ length: 10 }, (_, i) => create(i % 2 ? a.url : b.url, { idem: key })));
      expect(all.map((r) => r.status)).toEqual(Array(10).fill(201));
      expect(new Set(all.map((r) => r.body.id)).size).toBe(1);
      expect(all.filter((r) => r.headers.get('idempotent-replayed') === 'true')).toHaveLength(9);
      expect(upstreamCreates()).toHaveLength(1);
    } finally {
      await Promise.all([a.stop(), b.stop()]);
    }
  });

  it('answers 422 when the key is reused with a different body, and creates nothing', async () => {
    const key = randomUUID();
    expect((await create(gw.url, { idem: key, input: { prompt: 'a cat' } })).status).toBe(201);
    const other = await create(gw.url, { idem: key, input: { prompt: 'a dog' } });
    expectProblem(other, 422, /already used with a different request body/);
    expect(other.body.title).toBe('Idempotency key reused');
    expect(upstreamCreates()).toHaveLength(1);
  });

  it('changes nothing without the header: two identical creates are two predictions', async () => {
    const [a, b] = [await create(gw.url), await create(gw.url)];
    expect([a.status, b.status]).toEqual([201, 201]);
    expect(a.body.id).not.toBe(b.body.id);
    expect(b.headers.get('idempotent-replayed')).toBeNull();
    expect(upstreamCreates()).toHaveLength(2);
  });

  it('keeps tenants apart: another tenant using the same key string gets its own prediction', async () => {
    const key = 'order-42';
    const a = await create(gw.url, { idem: key, key: KEY_A });
    const b = await create(gw.url, { idem: key, key: KEY_B });
    expect([a.status, b.status]).toEqual([201, 201]);
    expect(b.headers.get('idempotent-replayed')).toBeNull();
    expect(a.body.id).not.toBe(b.body.id);
    expect((await get(a.body.id, gw.url, KEY_B)).status).toBe(404);
    expect(upstreamCreates()).toHaveLength(2);
  });

  it('frees the key when the upstream refused the create, so the retry creates it once', async () => {
    const key = randomUUID();
    s.sim.injectFault({ kind: 'status', status: 503 }, { match: isCreate });
    expect((await create(gw.url, { idem: key })).status).toBe(502);
    const retry = await create(gw.url, { idem: key });
    expect(retry.status).toBe(201);
    expect(retry.headers.get('idempotent-replayed')).toBeNull();
    expect((await create(gw.url, { idem: key })).headers.get('idempotent-replayed')).toBe('true');
    // One refused attempt, one create.
    expect(upstreamCreates()).toHaveLength(2);
  });

  it('holds the key after a create timed out (the upstream may have made it): the retry gets 409, not a second job', async () => {
    const key = randomUUID();
    const before = s.sim.predictions.size;
    s.sim.injectFault({ kind: 'delay', delayMs: 1000 }, { match: isCreate });
    expectProblem(await create(gw.url, { idem: key }), 504);
    const retry = await create(gw.url, { idem: key });
    expectProblem(retry, 409, /still in progress/, true);
    // The upstream did make the job after the gateway gave up; a retry still does not make a second one.
    await waitFor(() => s.sim.predictions.size === before + 1, 5000, 'the late upstream create');
    expectProblem(await create(gw.url, { idem: key }), 409, /still in progress/, true);
    expect(upstreamCreates()).toHaveLength(1);
  });
});

describe('poll coalescing', () => {
  it('serves 50 concurrent polls of one running prediction with a handful of upstream calls', async () => {
    const id = await createPrediction(gw.url, KEY_A, RUNNING);
    s.sim.injectFault({ kind: 'delay', delayMs: 300 }, { match: isGet, times: 50 });
    const all = await Promise.all(Array.from({ length: 50 }, () => get(id)));
    expect(all.every((r) => r.status === 200 && r.body.id === id)).toBe(true);
    expect(all.every((r) => r.body.urls.get === `${gw.url}/replicate/v1/predictions/${id}`)).toBe(true);
    expect(upstreamGets(id).length).toBeGreaterThanOrEqual(1);
    expect(upstreamGets(id).length).toBeLessThanOrEqual(5);
  });

  it('serves a running prediction from the micro-cache only briefly, then shows the new status', async () => {
    const id = await createPrediction(gw.url, KEY_A, RUNNING);
    expect((await get(id)).body.status).toBe('starting');
    s.sim.setStatus(id, 'succeeded');
    // An immediate poll may still see the cached running answer, without an upstream call ...
    const immediate = await get(id);
    expect(immediate.status).toBe(200);
    expect(upstreamGets(id)).toHaveLength(1);
    // ... but the change shows up on its own once POLL_CACHE_MS (500 ms) is over, and is then cached for good.
    await waitFor(async () => (await get(id)).body.status === 'succeeded', 5000, 'the new status to show');
    s.sim.clearRequests();
    const hit = await get(id);
    expect(hit.body.status).toBe('succeeded');
    expect(hit.headers.get('x-cache')).toBe('HIT');
    expect(upstreamGets(id)).toHaveLength(0);
  });

  it('never shares one tenant\'s poll with another tenant', async () => {
    const id = await createPrediction(gw.url, KEY_A, RUNNING);
    s.sim.injectFault({ kind: 'delay', delayMs: 200 }, { match: isGet });
    const [own, other] = await Promise.all([get(id), get(id, gw.url, KEY_B)]);
    expect(own.status).toBe(200);
    expect(other.status).toBe(404);
  });
});

describe('circuit breaker', () => {
  let up: UpstreamClient;
  let g: Gateway;
  beforeAll(async () => {
    // Three failed attempts in a row open it for one second.
    up = new UpstreamClient({ baseUrl: s.url, apiKey: s.apiKey, timeoutMs: 500, retries: 0, breakerThreshold: 3, breakerCooldownMs: 1000 });
    g = await startGateway({ sim: s, env: { UPSTREAM_TIMEOUT_MS: '500', UPSTREAM_RETRIES: '0' }, deps: { upstream: up } });
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
    expect(s.sim.requests).toHaveLength(3);
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
    expect(s.sim.requests).toHaveLength(3);

    // After the cool-down one probe goes through; while it is in flight the rest are not queued behind it.
    await sleep(1100);
    s.sim.injectFault({ kind: 'delay', delayMs: 300 }, { match: isGet });
    const probe = get(id, g.url);
    await waitFor(() => s.sim.requests.length === 4, 2000, 'the probe to reach the upstream');
    // (Polls of other predictions: polls of the probe's own id would simply share its answer.)
    const during = await Promise.all(Array.from({ length: 10 }, (_, i) => get(ids[1 + (i % 2)]!, g.url)));
    for (const r of during) expectProblem(r, 503, /failing repeatedly/, true);
    expect((await probe).status).toBe(200);
    expect(s.sim.requests).toHaveLength(4);
    expect((await get(id, g.url)).status).toBe(200);
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

  describe('a Redis outage in the middle of traffic', () => {
    let redis: RedisServer;
    beforeAll(async () => {
      redis = await RedisServer.start();
    });
    afterAll(async () => {
      await redis.destroy();
    });

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
});
