// The mirrored prediction routes over real HTTP, with the simulator as the upstream: creates by model and by version,
// get and cancel, URLs rewritten to the gateway, bad requests answered before anything goes upstream, Prefer: wait,
// and, on a real Redis, ownership, lists, replicas and restarts.
import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { KEY_A, KEY_B, MODEL_PATH, type GatewayOptions, call, createPrediction, sendCreate as create, startGateway, upstreamCalls, useGateway, useSimulator, waitFor } from './helpers/stack.js';

const s = useSimulator(150);
/** The in-memory store, a short deadline and a 2 KiB body limit. */
const inMemory = (): GatewayOptions => ({ sim: s, redis: 'memory', env: { UPSTREAM_TIMEOUT_MS: '800', BODY_LIMIT_BYTES: '2048' } });
const prefix = `state:${randomUUID()}:`;
/** The run's Redis, under one prefix that the replicas below share; no poll micro-cache. */
const onRedis = (): GatewayOptions => ({ sim: s, prefix, env: { POLL_CACHE_MS: '0' } });

describe('routes and rewriting', () => {
  const gw = useGateway(inMemory);

  it('creates by model and rewrites urls.get and urls.cancel to the gateway, keeping stream and web', async () => {
    const r = await call(gw.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: { prompt: 'x' }, extra_field: 1 } });
    expect(r.status).toBe(201);
    const id = r.body.id;
    expect(r.body.urls.get).toBe(`${gw.url}/replicate/v1/predictions/${id}`);
    expect(r.body.urls.cancel).toBe(`${gw.url}/replicate/v1/predictions/${id}/cancel`);
    expect(r.body.urls.stream).toMatch(/^https:\/\/stream\.replicate\.com\//);
    expect(r.body.urls.web).toMatch(/^https:\/\/replicate\.com\//);
    const up = upstreamCalls(s.sim)[0]!;
    expect(up.url).toBe('/replicate/v1/models/black-forest-labs/flux-schnell/predictions');
    // Unknown fields pass through.
    expect(up.body).toEqual({ input: { prompt: 'x' }, extra_field: 1 });
  });

  it('creates by version, gets and cancels with an empty JSON body', async () => {
    const c = await call(gw.url, 'POST', '/replicate/v1/predictions', { key: KEY_A, body: { version: 'owner/model:abc123', input: { prompt: 'slow', duration_ms: 5000 } } });
    expect(c.status).toBe(201);
    const g = await call(gw.url, 'GET', `/replicate/v1/predictions/${c.body.id}`, { key: KEY_A });
    expect(g.status).toBe(200);
    expect(g.body.urls.get).toBe(`${gw.url}/replicate/v1/predictions/${c.body.id}`);
    // Exactly what the official client sends: POST, Content-Type: application/json, no body.
    const x = await call(gw.url, 'POST', `/replicate/v1/predictions/${c.body.id}/cancel`, { key: KEY_A, headers: { 'content-type': 'application/json' } });
    expect(x.status).toBe(200);
    expect(x.body.status).toBe('canceled');
    expect(x.body.urls.cancel).toBe(`${gw.url}/replicate/v1/predictions/${c.body.id}/cancel`);
  });

  it('uses PUBLIC_BASE_URL for rewritten URLs when set', async () => {
    const other = await startGateway({ sim: s, redis: 'memory', env: { PUBLIC_BASE_URL: 'https://gw.example.com/' } });
    try {
      const r = await call(other.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: {} } });
      expect(r.body.urls.get).toBe(`https://gw.example.com/replicate/v1/predictions/${r.body.id}`);
    } finally {
      await other.close();
    }
  });

  it('honours X-Forwarded-* only with TRUST_PROXY', async () => {
    const fwd = { 'x-forwarded-proto': 'https', 'x-forwarded-host': 'public.example.com' };
    const untrusted = await call(gw.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: {} }, headers: fwd });
    expect(untrusted.body.urls.get.startsWith(gw.url)).toBe(true);
    const trusting = await startGateway({ sim: s, redis: 'memory', env: { TRUST_PROXY: 'true' } });
    try {
      const r = await call(trusting.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: {} }, headers: fwd });
      expect(r.body.urls.get).toBe(`https://public.example.com/replicate/v1/predictions/${r.body.id}`);
    } finally {
      await trusting.close();
    }
  });

  it('answers unknown routes with 404 problem JSON', async () => {
    const r = await call(gw.url, 'GET', '/replicate/v1/nope', { key: KEY_A });
    expect(r.status).toBe(404);
    expect(r.body.title).toBe('Not found');
  });
});

describe('bad requests never leave the gateway', () => {
  const gw = useGateway(inMemory);

  const cases: [string, string, string, { body?: unknown; rawBody?: string }, number, RegExp][] = [
    ['malformed JSON', 'POST', MODEL_PATH, { rawBody: '{"input":' }, 400, /not valid JSON/],
    ['a non-object input', 'POST', MODEL_PATH, { body: { input: 'a cat' } }, 422, /^input /],
    ['a missing input', 'POST', MODEL_PATH, { body: { prompt: 'x' } }, 422, /^input /],
    ['a version on the model route', 'POST', MODEL_PATH, { body: { input: {}, version: 'abc' } }, 422, /^version /],
    ['a missing version', 'POST', '/replicate/v1/predictions', { body: { input: {} } }, 422, /^version /],
    ['an empty version', 'POST', '/replicate/v1/predictions', { body: { input: {}, version: '' } }, 422, /^version /],
    ['an http webhook', 'POST', MODEL_PATH, { body: { input: {}, webhook: 'http://example.com/hook' } }, 422, /^webhook .*https/],
    ['a bad webhook event', 'POST', MODEL_PATH, { body: { input: {}, webhook_events_filter: ['start', 'boom'] } }, 422, /^webhook_events_filter\.1 /],
    ['a bad owner', 'POST', '/replicate/v1/models/bad%20owner/x/predictions', { body: { input: {} } }, 422, /owner/],
    ['a bad id', 'GET', '/replicate/v1/predictions/abc$def', {}, 422, /id/],
    ['an array body', 'POST', MODEL_PATH, { body: [1, 2] }, 400, /JSON object/],
  ];
  it.each(cases)('%s', async (_name, method, path, payload, status, detail) => {
    const r = await call(gw.url, method, path, { key: KEY_A, ...payload });
    expect(r.status).toBe(status);
    expect(r.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    expect(r.body.status).toBe(status);
    expect(r.body.detail).toMatch(detail);
    expect(upstreamCalls(s.sim)).toHaveLength(0);
  });

  it('answers 413 for a body over BODY_LIMIT_BYTES', async () => {
    const r = await call(gw.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: { prompt: 'x'.repeat(4096) } } });
    expect(r.status).toBe(413);
    expect(r.body.title).toBe('Payload too large');
    expect(upstreamCalls(s.sim)).toHaveLength(0);
  });

  it('get problem JSON with a request id, like every other bad request', async () => {
    for (const path of ['/replicate/v1/predictions/%zz', `/replicate/v1/predictions/${'a'.repeat(150)}`]) {
      const r = await call(gw.url, 'GET', path, { key: KEY_A });
      expect([400, 414]).toContain(r.status);
      expect(r.headers.get('content-type')).toMatch(/^application\/problem\+json/);
      expect(r.body).toMatchObject({ status: r.status, type: expect.stringMatching(/^urn:fuhu-gateway:problem:/) });
      expect(r.body.request_id).toBe(r.headers.get('x-request-id'));
    }
  });
});

describe('Prefer: wait', () => {
  const gw = useGateway(inMemory);
  const upstreamCreates = () => upstreamCalls(s.sim).filter((r) => r.method === 'POST' && !r.url.endsWith('/cancel'));

  it('clamps Prefer: wait to 60 before forwarding', async () => {
    const r = await create(gw.url, { input: { duration_ms: 0 }, headers: { prefer: 'wait=90' } });
    expect(r.status).toBe(201);
    expect(upstreamCreates()[0]!.headers.prefer).toBe('wait=60');
  });

  it('rounds and clamps a fractional wait, and refuses one that is not a number before anything goes upstream', async () => {
    s.sim.clearRequests();
    const ok = await call(gw.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: {} }, headers: { prefer: 'wait=90.5' } });
    expect(ok.status).toBe(201);
    expect(upstreamCalls(s.sim)[0]!.headers.prefer).toBe('wait=60');
    s.sim.clearRequests();
    const bad = await call(gw.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: {} }, headers: { prefer: 'wait=abc' } });
    expect(bad.status).toBe(400);
    expect(bad.body.detail).toMatch(/Prefer: wait takes a number/);
    expect(upstreamCalls(s.sim)).toHaveLength(0);
  });
});

describe('on a real Redis', () => {
  const gw = useGateway(onRedis);

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
});
