// Who may call, and with what: tenant keys (and what of a request goes upstream with the gateway's own key), model
// and version allowlists, and short-lived tokens. Over real HTTP against the simulator and a real Redis.
import { randomUUID } from 'node:crypto';
import { SignJWT } from 'jose';
import { describe, expect, it } from 'vitest';
import type { TenantInput } from '../src/access/tenants.js';
import { type CallResult, KEY_A, KEY_B, MODEL_PATH, call, expectProblem, upstreamCalls, useGateway, useSimulator } from './helpers/stack.js';

const SECRET = 'auth-test-signing-secret-0123456789abcdef';
const key = (id: string) => `${id}-key-0123456789abcdef`;
const lots = { max: 10_000, timeWindow: '1 minute' };

const TENANTS: TenantInput[] = [
  // key('team-a') is KEY_A: the tenant lists one version, so tokens narrowed to a model can be tried on it.
  { id: 'team-a', keys: [KEY_A], rateLimit: lots, versions: ['acme/img:v1'] },
  { id: 'team-b', keys: [KEY_B], rateLimit: lots },
  {
    id: 'allow',
    keys: [key('allow')],
    rateLimit: lots,
    models: ['black-forest-labs/*', 'acme/upscaler'],
    versions: ['acme/upscaler:abc123'],
  },
  { id: 'open', keys: [key('open')], rateLimit: lots },
  { id: 'tok', keys: [key('tok')], rateLimit: lots, models: ['black-forest-labs/*'] },
];

const CREATES = /\/predictions$/;

const s = useSimulator(100);
const gw = useGateway(() => ({ sim: s, tenants: TENANTS, env: { TRUST_PROXY: 'true', TOKEN_SIGNING_SECRET: SECRET, POLL_CACHE_MS: '0', LOG_LEVEL: 'warn' } }));

const create = (k: string, headers?: Record<string, string>, path = MODEL_PATH, body: unknown = { input: { prompt: 'a cat' } }) =>
  call(gw.url, 'POST', path, { key: k, body, headers });
const count = (rs: CallResult[], status: number) => rs.filter((r) => r.status === status).length;

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

describe('tokens narrowed to models', () => {
  it('cannot run an arbitrary version under an allowed model name', async () => {
    const minted = await call(gw.url, 'POST', '/gateway/v1/tokens', { key: KEY_A, body: { models: ['acme/img'] } });
    const token = minted.body.token as string;
    s.sim.clearRequests();
    const sneaky = await call(gw.url, 'POST', '/replicate/v1/predictions', { key: token, body: { version: 'acme/img:some-other-hash', input: {} } });
    expect(sneaky.status).toBe(403);
    expect(upstreamCalls(s.sim)).toHaveLength(0);
    const listed = await call(gw.url, 'POST', '/replicate/v1/predictions', { key: token, body: { version: 'acme/img:v1', input: {} } });
    expect(listed.status).toBe(201);
  });
});
