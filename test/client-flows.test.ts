// Issue 13: the flows around predictions that real clients use, through the official `replicate` client: lists
// that are fresh though nobody polled, model and version reads, runs by "owner/name:version" on a tenant limited to
// models, the account, and the routes the gateway refuses. With Redis and without it.
import Replicate from 'replicate';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { simVersionOf } from '../src/simulator/models.js';
import { KEY_A, KEY_B, type Gateway, type SimHandle, call, startGateway, startSimulator, upstreamCalls, waitFor } from './helpers/stack.js';

const KEY_R = 'team-r-key-0123456789abcdef';
const TENANTS = [
  { id: 'team-a', keys: [KEY_A] },
  { id: 'team-b', keys: [KEY_B] },
  // Limited to one owner's models: versions are judged by the model the gateway has seen them belong to.
  { id: 'team-r', keys: [KEY_R], models: ['black-forest-labs/*'] },
];
const FLUX = 'black-forest-labs/flux-schnell';
const isTerminal = (status: string) => ['succeeded', 'failed', 'canceled', 'aborted'].includes(status);

describe.each([['redis'], ['memory']] as const)('with the %s store', (kind) => {
  let s: SimHandle;
  let gw: Gateway;
  const client = (auth: string) => new Replicate({ auth, baseUrl: `${gw.url}/replicate/v1`, useFileOutput: false });

  beforeAll(async () => {
    s = await startSimulator(100);
    gw = await startGateway({ sim: s, tenants: TENANTS, ...(kind === 'memory' ? { redis: 'memory' as const } : {}) });
  });
  afterAll(async () => {
    await gw.close();
    await s.sim.close();
  });

  it('lists predictions that finished unobserved with their real status, from the store alone, and caches them', async () => {
    const replicate = client(KEY_B);
    const created = await Promise.all([1, 2, 3].map((i) => replicate.predictions.create({ model: FLUX, input: { prompt: `p${i}`, duration_ms: 150 } })));
    const ids = created.map((p) => p.id);
    // Finished at the upstream, never polled through the gateway (as with webhooks): the watcher sees them end.
    const statuses = async () => {
      const listed = [];
      for await (const page of replicate.paginate(replicate.predictions.list)) listed.push(...page);
      return listed.filter((p) => ids.includes(p.id)).map((p) => p.status);
    };
    await waitFor(async () => (await statuses()).every((st) => st === 'succeeded'), 10_000, 'the list to show them ended');
    s.sim.clearRequests();
    const listed = [];
    for await (const page of replicate.paginate(replicate.predictions.list)) listed.push(...page);
    const mine = listed.filter((p) => ids.includes(p.id));
    expect(mine.map((p) => p.status)).toEqual(['succeeded', 'succeeded', 'succeeded']);
    for (const p of mine) expect(p.urls.get).toBe(`${gw.url}/replicate/v1/predictions/${p.id}`);
    // Stored when terminal: the next read is a cache hit, and neither it nor the list cost an upstream call.
    const again = await call(gw.url, 'GET', `/replicate/v1/predictions/${ids[0]}`, { key: KEY_B });
    expect(again.headers.get('x-cache')).toBe('HIT');
    expect(upstreamCalls(s.sim)).toHaveLength(0);
  });

  it('lists a prediction the gateway cannot read as last seen, and the list never asks the upstream', async () => {
    const replicate = client(KEY_B);
    const ok = await replicate.predictions.create({ model: FLUX, input: { prompt: 'ok', duration_ms: 100 } });
    const broken = await replicate.predictions.create({ model: FLUX, input: { prompt: 'broken', duration_ms: 100 } });
    s.sim.injectFault({ kind: 'status', status: 500 }, { match: (m, p) => m === 'GET' && p.endsWith(broken.id), times: Infinity });
    try {
      const byId = async () => new Map((await replicate.predictions.list()).results.map((p) => [p.id, p.status]));
      await waitFor(async () => (await byId()).get(ok.id) === 'succeeded', 10_000, 'the watcher to see the readable one end');
      const list = await call(gw.url, 'GET', '/replicate/v1/predictions', { key: KEY_B, headers: { 'x-request-id': 'list-broken' } });
      expect(list.status).toBe(200);
      expect(list.body.results.find((p: { id: string }) => p.id === broken.id).status).toBe('starting');
      // The watcher keeps trying (its reads name it); the list itself made none.
      expect(upstreamCalls(s.sim).filter((r) => r.headers['x-request-id'] === 'list-broken')).toHaveLength(0);
    } finally {
      s.sim.clearFaults();
    }
  });

  it('serves model and version reads for models the tenant may use, and hides the others', async () => {
    const r = client(KEY_R);
    const model = await r.models.get('black-forest-labs', 'flux-schnell');
    expect(model.latest_version?.id).toBe(simVersionOf(FLUX));
    const versions = await r.models.versions.list('black-forest-labs', 'flux-schnell');
    expect(versions.results.map((v) => v.id)).toEqual([simVersionOf(FLUX)]);
    const version = await r.models.versions.get('black-forest-labs', 'flux-schnell', simVersionOf(FLUX));
    expect(version.id).toBe(simVersionOf(FLUX));
    const other = await call(gw.url, 'GET', '/replicate/v1/models/stability-ai/sdxl', { key: KEY_R });
    expect(other.status).toBe(404);
    expect(other.body.detail).toBe('model stability-ai/sdxl was not found');
    expect((await call(gw.url, 'GET', '/replicate/v1/models/stability-ai/sdxl', { key: KEY_A })).status).toBe(200);
    // Cached briefly: the same read again does not reach the upstream.
    s.sim.clearRequests();
    await r.models.get('black-forest-labs', 'flux-schnell');
    expect(upstreamCalls(s.sim)).toHaveLength(0);
  });

  it('answers 501 where the upstream does not serve model reads', async () => {
    s.sim.injectFault({ kind: 'status', status: 501, body: { error: { message: 'not implemented', type: 'new_api_error' } } }, { match: (m, p) => p.includes('/models/sim/'), times: Infinity });
    try {
      const r = await call(gw.url, 'GET', '/replicate/v1/models/sim/anything', { key: KEY_A });
      expect(r.status).toBe(501);
      expect(r.body.detail).toMatch(/does not serve model reads/);
    } finally {
      s.sim.clearFaults();
    }
  });

  it('runs "owner/name:version" (the client sends only the hash) once the version is known to belong to an allowed model', async () => {
    const r = client(KEY_R);
    const hash = simVersionOf('black-forest-labs/flux-dev');
    // Unknown: 403, saying how to allow it.
    await expect(r.run(`black-forest-labs/flux-dev:${hash}`, { input: { prompt: 'x' } })).rejects.toThrow(/read it once through GET \/replicate\/v1\/models\/\{owner\}\/\{name\}\/versions/);
    expect(upstreamCalls(s.sim).filter((c) => c.method === 'POST' && JSON.stringify(c.body).includes(hash))).toHaveLength(0);
    // Learned from a version read through an allowed model, on this or any replica.
    await r.models.versions.get('black-forest-labs', 'flux-dev', hash);
    const output = await r.run(`black-forest-labs/flux-dev:${hash}`, { input: { prompt: 'x' } });
    expect(output).toEqual([expect.stringMatching(/^https:\/\/replicate\.delivery\//)]);
    // A hash learned for another model does not pass: the name before the colon proves nothing.
    const foreign = simVersionOf('stability-ai/sdxl');
    await call(gw.url, 'GET', `/replicate/v1/models/stability-ai/sdxl/versions/${foreign}`, { key: KEY_A });
    await expect(r.run(`black-forest-labs/flux-dev:${foreign}`, { input: { prompt: 'x' } })).rejects.toThrow(/not in the allowed versions of tenant team-r/);
  });

  it('learns versions from predictions too', async () => {
    const hash = simVersionOf('black-forest-labs/flux-pro');
    // The upstream knows the version (read there directly, not through the gateway, which so learns nothing yet).
    await fetch(`${s.url}/models/black-forest-labs/flux-pro/versions/${hash}`, { headers: { authorization: `Bearer ${s.apiKey}` } });
    expect((await call(gw.url, 'POST', '/replicate/v1/predictions', { key: KEY_R, body: { version: hash, input: { prompt: 'r' } } })).status).toBe(403);
    // Team A (no allowlist) runs it; the upstream's answer names the model the hash belongs to.
    const a = await call(gw.url, 'POST', '/replicate/v1/predictions', { key: KEY_A, body: { version: hash, input: { prompt: 'a' } } });
    expect(a.body.model).toBe('black-forest-labs/flux-pro');
    const r = await call(gw.url, 'POST', '/replicate/v1/predictions', { key: KEY_R, body: { version: hash, input: { prompt: 'r' } } });
    expect(r.status).toBe(201);
  });

  it('answers GET /account with the caller\'s own tenant, never the upstream account', async () => {
    const account = await client(KEY_B).accounts.current();
    expect(account).toMatchObject({ type: 'organization', username: 'team-b', name: 'team-b' });
    expect(upstreamCalls(s.sim, /\/account/)).toHaveLength(0);
  });

  it.each([
    ['GET', '/replicate/v1/deployments', /deployments belong to the whole shared account/],
    ['POST', '/replicate/v1/deployments/acme/d1/predictions', /deployments/],
    ['GET', '/replicate/v1/trainings', /trainings/],
    ['POST', `/replicate/v1/models/black-forest-labs/flux-schnell/versions/${simVersionOf(FLUX)}/trainings`, /trainings/],
    ['POST', '/replicate/v1/models', /creating models/],
    ['DELETE', '/replicate/v1/models/black-forest-labs/flux-schnell', /changing models/],
    ['GET', '/replicate/v1/webhooks/default/secret', /forge webhooks/],
  ])('refuses %s %s with a 403 problem saying why', async (method, path, why) => {
    s.sim.clearRequests();
    const r = await call(gw.url, method, path, { key: KEY_A, ...(method === 'POST' ? { body: {} } : {}) });
    expect(r.status).toBe(403);
    expect(r.headers.get('content-type')).toMatch(/problem\+json/);
    expect(r.body.detail).toMatch(why);
    expect(upstreamCalls(s.sim)).toHaveLength(0);
  });
});
