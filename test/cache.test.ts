// What the gateway answers without asking the upstream: terminal predictions from the store (x-cache: HIT), and
// concurrent polls of a running prediction coalesced into one upstream call, briefly micro-cached.
import { describe, expect, it } from 'vitest';
import { KEY_A, KEY_B, call, createPrediction, fromClients, upstreamCalls, useGateway, useSimulator, waitFor } from './helpers/stack.js';

const s = useSimulator(100);

describe('terminal cache', () => {
  // No poll micro-cache: every read of a running prediction goes upstream.
  const gw = useGateway(() => ({ sim: s, env: { POLL_CACHE_MS: '0' } }));

  async function settle(id: string): Promise<void> {
    await waitFor(async () => (await call(gw.url, 'GET', `/replicate/v1/predictions/${id}`, { key: KEY_A })).body.status === 'succeeded', 5000, 'the prediction to finish');
  }

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
    expect(upstreamCalls(s.sim).filter((r) => fromClients(r.method, r.url, r))).toHaveLength(3);
    s.sim.injectFault({ kind: 'status', status: 400, body: { title: 'Bad', detail: 'nope', status: 400 } }, { match: fromClients });
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

describe('poll coalescing and the micro-cache', () => {
  // POLL_CACHE_MS at its default, 500 ms.
  const gw = useGateway(() => ({ sim: s, env: { UPSTREAM_TIMEOUT_MS: '500', DEFAULT_RATE_LIMIT_MAX: '100000' } }));
  const RUNNING = { prompt: 'long', duration_ms: 60_000 };
  const isGet = (m: string) => m === 'GET';
  const get = (id: string, base = gw.url, key = KEY_A) => call(base, 'GET', `/replicate/v1/predictions/${id}`, { key });
  const upstreamGets = (id: string) => s.sim.requests.filter((r) => r.method === 'GET' && r.url.endsWith(`/predictions/${id}`));

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

  it('does not hold huge running predictions in the poll micro-cache: each poll goes upstream', async () => {
    const id = await createPrediction(gw.url, KEY_A, { image: `data:image/png;base64,${'A'.repeat(300 * 1024)}`, duration_ms: 60_000 });
    s.sim.clearRequests();
    for (let i = 0; i < 3; i++) expect((await call(gw.url, 'GET', `/replicate/v1/predictions/${id}`, { key: KEY_A })).status).toBe(200);
    expect(upstreamCalls(s.sim, new RegExp(id))).toHaveLength(3);
    // A small one is micro-cached as before.
    const small = await createPrediction(gw.url, KEY_A, { duration_ms: 60_000 });
    s.sim.clearRequests();
    for (let i = 0; i < 3; i++) await call(gw.url, 'GET', `/replicate/v1/predictions/${small}`, { key: KEY_A });
    expect(upstreamCalls(s.sim, new RegExp(small)).length).toBeLessThan(3);
  });
});
