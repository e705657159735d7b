// Idempotency-Key on creates: a replay of the stored answer, one upstream create for simultaneous duplicates (in
// one process, on two replicas, in two processes), a different body refused, keys per tenant and per credential,
// the fingerprint over the bytes forwarded, and what a refused or timed-out create leaves behind.
import { randomUUID } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { DEFAULT_TENANTS, KEY_A, KEY_B, MODEL_PATH, call, expectProblem, sendCreate as create, startGateway, startGatewayProcess, stopAllGatewayProcesses, useSimulator, useSteadyGateway, waitFor, writeTenants } from './helpers/stack.js';

const s = useSimulator(100);
const gw = useSteadyGateway(s);
afterAll(async () => {
  await stopAllGatewayProcesses();
});

const isCreate = (m: string, p: string) => m === 'POST' && !p.endsWith('/cancel');
const get = (id: string, base = gw.url, key = KEY_A) => call(base, 'GET', `/replicate/v1/predictions/${id}`, { key });
const upstreamCreates = () => s.sim.requests.filter((r) => isCreate(r.method, r.url.split('?')[0]!));

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
    const first = await call(gw.url, 'POST', MODEL_PATH, { key: KEY_A, rawBody: '{"input":{"prompt":"p"}}', headers });
    const poisoned = await call(gw.url, 'POST', MODEL_PATH, { key: KEY_A, rawBody: '{"input":{"prompt":"p"},"__proto__":{"admin":true}}', headers });
    expect(first.status).toBe(201);
    expect(poisoned.status).toBe(422);
    expect(poisoned.body.detail).toMatch(/different request body/);
  });
});
