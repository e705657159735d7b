// Issue 3: ownership, the terminal cache, lists, replicas and restarts on a real Redis, and a real Redis outage.
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { COMMAND_TIMEOUT_MS } from '../src/store/redis-store.js';
import { RedisServer } from './helpers/redis.js';
import { KEY_A, KEY_B, type Gateway, type SimHandle, call, createPrediction, startGateway, startSimulator, upstreamCalls, waitFor } from './helpers/stack.js';

let s: SimHandle;
let gw: Gateway;
const prefix = `state:${randomUUID()}:`;

beforeAll(async () => {
  s = await startSimulator(100);
  gw = await startGateway({ sim: s, prefix, env: { POLL_CACHE_MS: '0' } });
});
afterAll(async () => {
  await gw.close();
  await s.sim.close();
});

async function settle(id: string): Promise<void> {
  await waitFor(async () => (await call(gw.url, 'GET', `/replicate/v1/predictions/${id}`, { key: KEY_A })).body.status === 'succeeded', 5000, 'the prediction to finish');
}

describe('ownership', () => {
  it('hides a prediction from other tenants: 404 exactly like an unknown id, upstream not called', async () => {
    const id = await createPrediction(gw.url, KEY_A);
    s.sim.clearRequests();
    const get = await call(gw.url, 'GET', `/replicate/v1/predictions/${id}`, { key: KEY_B });
    const cancel = await call(gw.url, 'POST', `/replicate/v1/predictions/${id}/cancel`, { key: KEY_B });
    const unknown = await call(gw.url, 'GET', '/replicate/v1/predictions/doesnotexist', { key: KEY_B });
    expect(get.status).toBe(404);
    expect(cancel.status).toBe(404);
    expect(unknown.status).toBe(404);
    expect(get.body.detail.replace(id, 'X')).toBe(unknown.body.detail.replace('doesnotexist', 'X'));
    expect(upstreamCalls(s.sim)).toHaveLength(0);
    // And the owner still can.
    expect((await call(gw.url, 'GET', `/replicate/v1/predictions/${id}`, { key: KEY_A })).status).toBe(200);
  });

  it('lists only the caller\'s own predictions', async () => {
    const a = await createPrediction(gw.url, KEY_A);
    const b = await createPrediction(gw.url, KEY_B);
    const listA = await call(gw.url, 'GET', '/replicate/v1/predictions', { key: KEY_A });
    const ids = listA.body.results.map((p: { id: string }) => p.id);
    expect(ids).toContain(a);
    expect(ids).not.toContain(b);
    expect(listA.body.results[0].urls.get).toBe(`${gw.url}/replicate/v1/predictions/${listA.body.results[0].id}`);
  });
});

describe('terminal cache', () => {
  it('answers a finished prediction from the store: HIT, no upstream call, for GET and cancel', async () => {
    const id = await createPrediction(gw.url, KEY_A);
    await settle(id);
    s.sim.clearRequests();
    const hit = await call(gw.url, 'GET', `/replicate/v1/predictions/${id}`, { key: KEY_A });
    expect(hit.headers.get('x-cache')).toBe('HIT');
    expect(hit.body.status).toBe('succeeded');
    expect(hit.body.urls.get).toBe(`${gw.url}/replicate/v1/predictions/${id}`);
    const cancel = await call(gw.url, 'POST', `/replicate/v1/predictions/${id}/cancel`, { key: KEY_A });
    expect(cancel.status).toBe(200);
    expect(cancel.body.status).toBe('succeeded');
    expect(cancel.headers.get('x-cache')).toBe('HIT');
    expect(upstreamCalls(s.sim)).toHaveLength(0);
  });

  it.each(['failed', 'canceled', 'aborted'])('caches %s predictions too', async (status) => {
    const id = await createPrediction(gw.url, KEY_A, { prompt: 'long', duration_ms: 60_000 });
    s.sim.setStatus(id, status as 'failed');
    expect((await call(gw.url, 'GET', `/replicate/v1/predictions/${id}`, { key: KEY_A })).headers.get('x-cache')).toBe('MISS');
    s.sim.clearRequests();
    const again = await call(gw.url, 'GET', `/replicate/v1/predictions/${id}`, { key: KEY_A });
    expect(again.headers.get('x-cache')).toBe('HIT');
    expect(again.body.status).toBe(status);
    expect(upstreamCalls(s.sim)).toHaveLength(0);
  });

  it('never caches a running prediction or an error', async () => {
    const id = await createPrediction(gw.url, KEY_A, { prompt: 'long', duration_ms: 60_000 });
    s.sim.clearRequests();
    for (let i = 0; i < 3; i++) {
      const r = await call(gw.url, 'GET', `/replicate/v1/predictions/${id}`, { key: KEY_A });
      expect(r.headers.get('x-cache')).toBe('MISS');
    }
    expect(upstreamCalls(s.sim)).toHaveLength(3);
    s.sim.injectFault({ kind: 'status', status: 400, body: { title: 'Bad', detail: 'nope', status: 400 } });
    expect((await call(gw.url, 'GET', `/replicate/v1/predictions/${id}`, { key: KEY_A })).status).toBe(400);
    const after = await call(gw.url, 'GET', `/replicate/v1/predictions/${id}`, { key: KEY_A });
    expect(after.status).toBe(200);
    expect(after.headers.get('x-cache')).toBe('MISS');
  });

  it('caches a terminal answer to a Prefer: wait create', async () => {
    const r = await call(gw.url, 'POST', '/replicate/v1/models/a/b/predictions', { key: KEY_A, body: { input: {} }, headers: { prefer: 'wait=5' } });
    expect(r.body.status).toBe('succeeded');
    s.sim.clearRequests();
    expect((await call(gw.url, 'GET', `/replicate/v1/predictions/${r.body.id}`, { key: KEY_A })).headers.get('x-cache')).toBe('HIT');
    expect(upstreamCalls(s.sim)).toHaveLength(0);
  });
});

describe('replicas and restarts', () => {
  it('two gateways on one Redis share ownership, cache and lists, and a restart loses nothing', async () => {
    const second = await startGateway({ sim: s, prefix });
    try {
      const id = await createPrediction(gw.url, KEY_A);
      await settle(id);
      s.sim.clearRequests();
      const viaSecond = await call(second.url, 'GET', `/replicate/v1/predictions/${id}`, { key: KEY_A });
      expect(viaSecond.headers.get('x-cache')).toBe('HIT');
      expect(viaSecond.body.urls.get).toBe(`${second.url}/replicate/v1/predictions/${id}`);
      expect((await call(second.url, 'GET', `/replicate/v1/predictions/${id}`, { key: KEY_B })).status).toBe(404);
      const list = await call(second.url, 'GET', '/replicate/v1/predictions', { key: KEY_A });
      expect(list.body.results[0].id).toBe(id);
      // The finished one comes from the shared cache; the list refreshes only entries still running (issue 13).
      expect(upstreamCalls(s.sim).filter((r) => r.url.includes(id))).toHaveLength(0);
      const listed = new Set(list.body.results.map((p: { id: string }) => p.id));
      for (const r of upstreamCalls(s.sim)) expect(r.method === 'GET' && listed.has(r.url.split('/').pop())).toBe(true);
    } finally {
      await second.close();
    }
    // A normal shutdown is not an outage: closing our own Redis connection logs no warning (the socket's close
    // event comes a moment after quit() resolves).
    await new Promise((r) => setTimeout(r, 200));
    expect(second.logs.join('\n')).not.toMatch(/redis unavailable/);
    // A restart: a brand-new process state on the same Redis.
    const id = await createPrediction(gw.url, KEY_A);
    await settle(id);
    const restarted = await startGateway({ sim: s, prefix });
    try {
      s.sim.clearRequests();
      const r = await call(restarted.url, 'GET', `/replicate/v1/predictions/${id}`, { key: KEY_A });
      expect(r.headers.get('x-cache')).toBe('HIT');
      expect((await call(restarted.url, 'GET', '/replicate/v1/predictions', { key: KEY_A })).body.results[0].id).toBe(id);
      // Only predictions still running are refreshed from the upstream, never the finished one.
      expect(upstreamCalls(s.sim).filter((c) => c.url.includes(id))).toHaveLength(0);
    } finally {
      await restarted.close();
    }
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
});
