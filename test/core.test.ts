// Issue 2: the mirrored routes over real HTTP, with the simulator as the upstream.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { KEY_A, KEY_B, MODEL_PATH, type Gateway, type SimHandle, call, createPrediction, startGateway, startSimulator, upstreamCalls } from './helpers/stack.js';

let s: SimHandle;
let gw: Gateway;

beforeAll(async () => {
  s = await startSimulator(150);
  gw = await startGateway({ sim: s, redis: 'memory', env: { UPSTREAM_TIMEOUT_MS: '800', BODY_LIMIT_BYTES: '2048' } });
});
afterAll(async () => {
  await gw.close();
  await s.sim.close();
});
afterEach(() => {
  s.sim.clearFaults();
  s.sim.clearRequests();
});

describe('keys', () => {
  it('sends the upstream key upstream, never the tenant key, and drops cookies', async () => {
    const r = await call(gw.url, 'POST', MODEL_PATH, {
      key: KEY_A,
      body: { input: { prompt: 'hi' } },
      headers: { cookie: 'session=secret-cookie', 'x-request-id': 'req-123', prefer: 'wait=1', 'x-custom': 'nope' },
    });
    expect(r.status).toBe(201);
    const [up] = upstreamCalls(s.sim, /predictions/);
    expect(up!.headers.authorization).toBe(`Bearer ${s.apiKey}`);
    const sent = JSON.stringify(up!.headers);
    expect(sent).not.toContain(KEY_A);
    expect(sent).not.toContain('secret-cookie');
    expect(up!.headers['x-custom']).toBeUndefined();
    expect(up!.headers['x-request-id']).toBe('req-123');
    expect(up!.headers.prefer).toBe('wait=1');
    expect(r.headers.get('x-request-id')).toBe('req-123');
    expect(r.text).not.toContain(s.apiKey);
  });

  it('generates a request id when none is sent and forwards it', async () => {
    const r = await call(gw.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: {} } });
    const id = r.headers.get('x-request-id');
    expect(id).toMatch(/^[0-9a-f-]{36}$/);
    expect(upstreamCalls(s.sim)[0]!.headers['x-request-id']).toBe(id);
  });

  it('accepts the Token scheme too', async () => {
    const r = await call(gw.url, 'POST', MODEL_PATH, { body: { input: {} }, headers: { authorization: `Token ${KEY_B}` } });
    expect(r.status).toBe(201);
  });

  it.each([
    ['no header', undefined],
    ['an unknown key', 'Bearer not-a-real-key-at-all-000'],
    ['a malformed header', 'Basic abc'],
  ])('answers 401 problem JSON for %s and never calls upstream', async (_what, authorization) => {
    const r = await call(gw.url, 'POST', MODEL_PATH, { body: { input: {} }, headers: authorization ? { authorization } : {} });
    expect(r.status).toBe(401);
    expect(r.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    expect(r.body).toMatchObject({ type: expect.any(String), title: 'Unauthenticated', status: 401, detail: expect.any(String) });
    expect(upstreamCalls(s.sim)).toHaveLength(0);
  });
});

describe('routes and rewriting', () => {
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

  it('answers /healthz and /readyz', async () => {
    expect((await call(gw.url, 'GET', '/healthz')).status).toBe(200);
    const ready = await call(gw.url, 'GET', '/readyz');
    expect(ready.status).toBe(200);
    expect(ready.body.store).toBe('memory');
  });

  it('answers unknown routes with 404 problem JSON', async () => {
    const r = await call(gw.url, 'GET', '/replicate/v1/nope', { key: KEY_A });
    expect(r.status).toBe(404);
    expect(r.body.title).toBe('Not found');
  });
});

describe('bad requests never leave the gateway', () => {
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
});

describe('upstream failures', () => {
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
    s.sim.injectFault({ kind: 'reset' });
    const reset = await call(gw.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: {} } });
    expect(reset.status).toBe(502);
    expect(reset.body.detail).toMatch(/closed the connection|could not be reached/);
    s.sim.injectFault({ kind: 'hang' });
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
    });
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

describe('logs', () => {
  it('contain neither the upstream key nor a tenant key, even with Token scheme and errors', async () => {
    const id = await createPrediction(gw.url, KEY_A);
    await call(gw.url, 'GET', `/replicate/v1/predictions/${id}`, { headers: { authorization: `Token ${KEY_B}` } });
    await call(gw.url, 'GET', `/replicate/v1/predictions/${id}`, { key: 'wrong-key-but-secret-123456' });
    s.sim.injectFault({ kind: 'reset' });
    await call(gw.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: {} } });
    const all = gw.logs.join('\n');
    expect(gw.logs.length).toBeGreaterThan(5);
    expect(all).toContain('request completed');
    for (const secret of [s.apiKey, KEY_A, KEY_B, 'wrong-key-but-secret-123456']) expect(all).not.toContain(secret);
  });
});
