// Issue 28: several upstream accounts. Each prediction stays with the account that created it (reads, cancels and
// the watcher, from any replica); creates move to another account only when no job can have started; an account
// removed from the file drains; balances are read from new-api's billing routes and empty accounts are avoided.
import { randomUUID } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Webhook } from 'standardwebhooks';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { createSimulator } from '../src/simulator/simulator.js';
import { readUpstreamsFile } from '../src/upstream/upstreams-file.js';
import {
  byWatcher, type Gateway, type GatewayProcess, KEY_A, MODEL_PATH, type SimHandle, call, createPrediction, expectProblem, startGateway, startGatewayProcess, startSimulator,
  stopAllGatewayProcesses, upstreamCalls, waitFor, writeTenants,
} from './helpers/stack.js';

type Entry = Record<string, unknown> & { name: string };

const ADMIN = 'admin-key-0123456789abcdef';

function upstreamsFile(entries: Entry[], dir = mkdtempSync(join(tmpdir(), 'fgw-upstreams-'))): string {
  const file = join(dir, 'upstreams.json');
  writeFileSync(file, JSON.stringify({ upstreams: entries }));
  return file;
}

const entry = (name: string, s: SimHandle, extra: Record<string, unknown> = {}): Entry => ({ name, baseUrl: s.url, apiKey: s.apiKey, ...extra });

/** Every request a simulator was sent about this prediction id. */
const callsFor = (s: SimHandle, id: string) => upstreamCalls(s.sim).filter((r) => r.url.includes(`/predictions/${id}`));

const createOn = (url: string, model: string, input: Record<string, unknown> = { prompt: 'a cat' }) =>
  call(url, 'POST', `/replicate/v1/models/${model}/predictions`, { key: KEY_A, body: { input } });

/** A simulator that stands for a new-api reseller account with a balance (USD). */
async function startReseller(balance: number, billingApi: 'both' | 'token' = 'both'): Promise<SimHandle> {
  const apiKey = `sk-reseller-${randomUUID()}`;
  const sim = createSimulator({ apiKey, stepMs: 200, balance, billingApi });
  const url = await sim.listen(0, '127.0.0.1');
  return { sim, url, apiKey };
}

const sims: SimHandle[] = [];
const gateways: Gateway[] = [];
afterEach(async () => {
  await Promise.all(gateways.splice(0).map((g) => g.close()));
  await Promise.all(sims.splice(0).map((s) => s.sim.close()));
});

async function sim(): Promise<SimHandle> {
  const s = await startSimulator();
  sims.push(s);
  return s;
}

/** An in-process gateway on UPSTREAMS_FILE (the one-upstream settings left unset); `sim` only fills the helper's defaults. */
async function gateway(file: string, first: SimHandle, env: Record<string, string> = {}, procEnv: Record<string, string> = {}): Promise<Gateway> {
  const g = await startGateway({ sim: first, env: { UPSTREAM_API_KEY: '', UPSTREAMS_FILE: file, ...env }, deps: { env: procEnv } });
  gateways.push(g);
  return g;
}

function expectNoKeys(g: Gateway, ...ss: SimHandle[]): void {
  const logs = g.logs.join('\n');
  for (const s of ss) expect(logs).not.toContain(s.apiKey);
}

describe('pinning: every call for a prediction goes to the account that created it, from every replica', () => {
  let a: SimHandle;
  let b: SimHandle;
  let p1: GatewayProcess;
  let p2: GatewayProcess;
  beforeAll(async () => {
    [a, b] = [await startSimulator(), await startSimulator()];
    // Models decide the account here, so that the test knows where each create went. B's key comes from the
    // environment, as an operator keeps keys out of the file.
    const file = upstreamsFile([
      entry('acct-a', a, { models: ['black-forest-labs/*'] }),
      { name: 'acct-b', baseUrl: b.url, apiKey: { env: 'RESELLER_B_KEY' }, models: ['acme/*'] },
    ]);
    const tenantsFile = writeTenants([{ id: 'team-a', keys: [KEY_A] }]);
    const prefix = `pin:${randomUUID()}:`;
    const env = { UPSTREAM_API_KEY: '', UPSTREAMS_FILE: file, RESELLER_B_KEY: b.apiKey, WATCH_MIN_MS: '100', WATCH_MAX_MS: '300' };
    [p1, p2] = await Promise.all([startGatewayProcess({ sim: a, tenantsFile, prefix, env }), startGatewayProcess({ sim: a, tenantsFile, prefix, env })]);
  });
  afterAll(async () => {
    await stopAllGatewayProcesses();
    await Promise.all([a.sim.close(), b.sim.close()]);
  });

  it('reads and cancels each prediction on its own account, through either gateway process, and the watchers do too', async () => {
    // Long enough to be canceled while it runs.
    const onA = await createOn(p1.url, 'black-forest-labs/flux-schnell', { prompt: 'a', duration_ms: 60_000 });
    const onB = await createOn(p1.url, 'acme/painter', { prompt: 'b', duration_ms: 60_000 });
    expect([onA.status, onB.status]).toEqual([201, 201]);
    const [idA, idB] = [onA.body.id as string, onB.body.id as string];
    expect(a.sim.predictions.has(idA) && b.sim.predictions.has(idB)).toBe(true);

    // The other replica reads them: each from its own account.
    expect((await call(p2.url, 'GET', `/replicate/v1/predictions/${idA}`, { key: KEY_A })).status).toBe(200);
    expect((await call(p2.url, 'GET', `/replicate/v1/predictions/${idB}`, { key: KEY_A })).status).toBe(200);
    // The watchers look at both (through whichever replica claims them).
    await waitFor(() => callsFor(a, idA).some(byWatcher), 10_000, 'a watcher to read A\'s prediction');
    await waitFor(() => callsFor(b, idB).some(byWatcher), 10_000, 'a watcher to read B\'s prediction');

    const canceled = await Promise.all([
      call(p2.url, 'POST', `/replicate/v1/predictions/${idA}/cancel`, { key: KEY_A }),
      call(p1.url, 'POST', `/replicate/v1/predictions/${idB}/cancel`, { key: KEY_A }),
    ]);
    expect(canceled.map((r) => r.body.status)).toEqual(['canceled', 'canceled']);
    expect(callsFor(a, idA).some((r) => r.method === 'POST' && r.url.endsWith('/cancel'))).toBe(true);
    expect(callsFor(b, idB).some((r) => r.method === 'POST' && r.url.endsWith('/cancel'))).toBe(true);
    // Never the other account: no request about A's prediction reached B, nor B's reached A.
    expect(callsFor(b, idA)).toEqual([]);
    expect(callsFor(a, idB)).toEqual([]);
    for (const p of [p1, p2]) for (const s of [a, b]) expect(p.output()).not.toContain(s.apiKey);
  });
});

describe('routing creates: on to the next account only when no job can have started', () => {
  it('goes to the other account while one refuses the connection, and pins the creates there', async () => {
    const [a, b] = [await sim(), await sim()];
    // B at weight 0 is the standby: every create tries A first.
    const g = await gateway(upstreamsFile([entry('acct-a', a), entry('acct-b', b, { weight: 0 })]), a);
    await a.sim.close();
    const ids = await Promise.all(Array.from({ length: 6 }, () => createPrediction(g.url, KEY_A)));
    expect(ids.every((id) => b.sim.predictions.has(id))).toBe(true);
    // Five refused connections in a row open A's own breaker; B's stays closed, and so the gateway's as a whole.
    expect((await call(g.url, 'GET', '/readyz')).body).toMatchObject({
      upstream_breaker: 'closed',
      upstreams: [{ name: 'acct-a', state: 'active', breaker: 'open' }, { name: 'acct-b', state: 'active', breaker: 'closed' }],
    });
    // Read back from B, not from the closed A.
    expect((await call(g.url, 'GET', `/replicate/v1/predictions/${ids[0]}`, { key: KEY_A })).status).toBe(200);
    expectNoKeys(g, a, b);
  });

  it.each([
    ['"no available channel" (503)', 503, { error: { message: 'no available channel for model black-forest-labs/flux-schnell', type: 'new_api_error', code: null } }],
    ['"quota" (403)', 403, { error: { message: 'user quota is not enough', type: 'new_api_error', code: 'insufficient_user_quota' } }],
  ])('goes to the next account on the reseller\'s %s', async (_what, status, body) => {
    const [a, b] = [await sim(), await sim()];
    // B at weight 0 is the standby: A is always tried first, B only after it.
    const g = await gateway(upstreamsFile([entry('acct-a', a), entry('acct-b', b, { weight: 0 })]), a);
    a.sim.injectFault({ kind: 'status', status, body }, { times: Infinity, match: (m) => m === 'POST' });
    const r = await call(g.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: { prompt: 'x' } } });
    expect(r.status).toBe(201);
    expect(b.sim.predictions.has(r.body.id)).toBe(true);
    expect(upstreamCalls(a.sim, /\/predictions$/).filter((c) => c.method === 'POST')).toHaveLength(1);
    const metrics = await (await g.app.inject({ url: '/metrics' })).body;
    expect(metrics).toMatch(new RegExp(`fgw_upstream_failovers_total\\{upstream="acct-a",reason="http_${status}"\\} 1`));
  });

  it('goes on past an account whose key is refused (401), and names that account when no other is left', async () => {
    const [a, b] = [await sim(), await sim()];
    const g = await gateway(upstreamsFile([entry('acct-a', a, { apiKey: 'sk-wrong-key-0000000000' }), entry('acct-b', b, { weight: 0 })]), a);
    const id = await createPrediction(g.url, KEY_A);
    expect(b.sim.predictions.has(id)).toBe(true);
    const alone = await gateway(upstreamsFile([entry('acct-a', a, { apiKey: 'sk-wrong-key-0000000000' })]), a);
    const r = await call(alone.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: { prompt: 'x' } } });
    expectProblem(r, 502, /check the apiKey of upstream "acct-a" in UPSTREAMS_FILE/);
    expect(r.text).not.toContain('sk-wrong-key');
  });

  it('never moves a create that timed out after it was sent: the job may be running on the first account', async () => {
    const [a, b] = [await sim(), await sim()];
    const g = await gateway(upstreamsFile([entry('acct-a', a), entry('acct-b', b, { weight: 0 })]), a, { UPSTREAM_TIMEOUT_MS: '500' });
    a.sim.injectFault({ kind: 'hang' }, { times: 1, match: (m) => m === 'POST' });
    expectProblem(await call(g.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: { prompt: 'x' } } }), 504);
    expect(upstreamCalls(b.sim)).toEqual([]);
  });

  it('does not move a create the account answered with a server error of its own (500): it may have started', async () => {
    const [a, b] = [await sim(), await sim()];
    const g = await gateway(upstreamsFile([entry('acct-a', a), entry('acct-b', b, { weight: 0 })]), a);
    a.sim.injectFault({ kind: 'status', status: 500 }, { times: 1, match: (m) => m === 'POST' });
    expectProblem(await call(g.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: { prompt: 'x' } } }), 502);
    expect(upstreamCalls(b.sim)).toEqual([]);
  });

  it('sends creates only to accounts that take the model, and says so when none does', async () => {
    const [a, b] = [await sim(), await sim()];
    const g = await gateway(upstreamsFile([entry('acct-a', a, { models: ['acme/*'] }), entry('acct-b', b, { models: ['black-forest-labs/*'] })]), a);
    const id = await createPrediction(g.url, KEY_A);
    expect(b.sim.predictions.has(id)).toBe(true);
    expectProblem(await createOn(g.url, 'other/model'), 503, /no configured upstream takes model other\/model/);
  });
});

describe('drain: an account removed from the file takes no new creates, and still serves its predictions', () => {
  it('keeps reading and canceling what the removed account runs, while creates go to the others', async () => {
    const [a, b] = [await sim(), await sim()];
    const file = upstreamsFile([entry('acct-a', a), entry('acct-b', b, { weight: 0 })]);
    const g = await gateway(file, a);
    const id = (await createOn(g.url, 'black-forest-labs/flux-schnell', { prompt: 'long', duration_ms: 60_000 })).body.id as string;
    expect(a.sim.predictions.has(id)).toBe(true);

    upstreamsFile([entry('acct-b', b)], join(file, '..'));
    g.app.reloadUpstreams();
    expect(g.app.upstreams.status().map((u) => [u.name, u.state])).toEqual([['acct-a', 'draining'], ['acct-b', 'active']]);

    a.sim.clearRequests();
    const next = await Promise.all(Array.from({ length: 4 }, () => createPrediction(g.url, KEY_A)));
    expect(next.every((n) => b.sim.predictions.has(n))).toBe(true);
    expect(upstreamCalls(a.sim).filter((c) => c.method === 'POST' && !c.url.includes(id))).toHaveLength(0);
    expect((await call(g.url, 'GET', `/replicate/v1/predictions/${id}`, { key: KEY_A })).status).toBe(200);
    const canceled = await call(g.url, 'POST', `/replicate/v1/predictions/${id}/cancel`, { key: KEY_A });
    expect(canceled.body.status).toBe('canceled');
    expect(callsFor(a, id).map((c) => c.method)).toEqual(expect.arrayContaining(['GET', 'POST']));
  });

  it('re-reads the file when it changes on disk', async () => {
    const [a, b] = [await sim(), await sim()];
    const file = upstreamsFile([entry('acct-a', a)]);
    const g = await startGateway({ sim: a, env: { UPSTREAM_API_KEY: '', UPSTREAMS_FILE: file }, deps: { watchTenants: true } });
    gateways.push(g);
    upstreamsFile([entry('acct-a', a), entry('acct-b', b, { weight: 2 })], join(file, '..'));
    await waitFor(() => g.app.upstreams.names().includes('acct-b'), 5000, 'the changed file to be reloaded');
    expect(g.app.upstreams.status().map((u) => [u.name, u.state, u.weight])).toEqual([['acct-a', 'active', 1], ['acct-b', 'active', 2]]);
  });

  it('keeps the previous accounts when the reloaded file is broken, and logs why without a key', async () => {
    const [a] = [await sim()];
    const file = upstreamsFile([entry('acct-a', a)]);
    const g = await gateway(file, a);
    writeFileSync(file, `{"upstreams":[{"name":"acct-a","baseUrl":"${a.url}","apiKey":"${a.apiKey}"`);
    g.app.reloadUpstreams();
    expect(g.app.upstreams.names()).toEqual(['acct-a']);
    expect(g.logs.some((l) => l.includes('upstreams file rejected'))).toBe(true);
    expectNoKeys(g, a);
  });
});

describe('balance: new-api resellers\' accounts are read, exported, alerted on, and avoided when empty', () => {
  it('reads each balance, exports it, warns under UPSTREAM_BALANCE_ALERT, and routes creates away from an empty account', async () => {
    const [a, b] = [await startReseller(0), await startReseller(5)];
    sims.push(a, b);
    const g = await gateway(upstreamsFile([entry('acct-a', a), entry('acct-b', b)]), a, { UPSTREAM_BALANCE_ALERT: '1', ADMIN_API_KEY: ADMIN });
    const metrics = async () => (await g.app.inject({ url: '/metrics' })).body;
    await waitFor(async () => /fgw_upstream_balance\{upstream="acct-a"\} 0[\s\S]*fgw_upstream_balance\{upstream="acct-b"\} 5/.test(await metrics()), 5000, 'the balances to be read');
    expect(await metrics()).toMatch(/fgw_upstream_balance\{upstream="acct-a"\} 0/);
    expect(await metrics()).toMatch(/fgw_upstream_balance_alerts_total\{upstream="acct-a"\} 1/);
    expect(await metrics()).not.toMatch(/fgw_upstream_balance_alerts_total\{upstream="acct-b"\}/);
    expect(g.logs.some((l) => l.includes('UPSTREAM_BALANCE_ALERT') && l.includes('acct-a'))).toBe(true);

    // A is at zero: every create goes to B first (A is only a last resort), and B's balance shrinks by what they cost.
    const ids = await Promise.all(Array.from({ length: 5 }, () => createPrediction(g.url, KEY_A)));
    expect(ids.every((id) => b.sim.predictions.has(id))).toBe(true);
    expect(upstreamCalls(a.sim).filter((c) => c.method === 'POST')).toHaveLength(0);
    await g.app.upstreams.refreshBalances();
    expect(g.app.upstreams.status().find((u) => u.name === 'acct-b')).toMatchObject({ balance: 4.95, balanceSource: 'billing', balanceError: null });

    // The dashboard's balance cards read the same, and carry no key.
    const login = await fetch(`${g.url}/gateway/admin/login`, { method: 'POST', redirect: 'manual', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: `key=${ADMIN}` });
    const cookie = login.headers.get('set-cookie')!.split(';')[0]!;
    const overview = await call(g.url, 'GET', '/gateway/admin/api/overview', { headers: { cookie } });
    expect(overview.body.balanceAlert).toBe(1);
    expect(overview.body.upstreams).toEqual([
      expect.objectContaining({ name: 'acct-a', state: 'active', balance: 0, breaker: 'closed' }),
      expect.objectContaining({ name: 'acct-b', state: 'active', balance: 4.95 }),
    ]);
    for (const s of [a, b]) expect(overview.text).not.toContain(s.apiKey);
    expectNoKeys(g, a, b);
  });

  it('reads new-api\'s /api/usage/token in raw quota units when the billing routes answer an error body', async () => {
    // Its billing routes answer HTTP 200 with an `error` body, as new-api does: not a reading.
    const a = await startReseller(3, 'token');
    sims.push(a);
    const g = await gateway(upstreamsFile([entry('acct-a', a)]), a);
    await g.app.upstreams.refreshBalances();
    expect(g.app.upstreams.status()[0]).toMatchObject({ balance: 3, balanceSource: 'token' });
  });

  it('shows an error and no balance for an account that has none to read', async () => {
    const a = await sim();
    const g = await gateway(upstreamsFile([entry('acct-a', a)]), a);
    await g.app.upstreams.refreshBalances();
    expect(g.app.upstreams.status()[0]).toMatchObject({ balance: null, balanceError: expect.stringMatching(/no balance/) });
    expectNoKeys(g, a);
  });
});

describe('UPSTREAMS_FILE and the settings: boot errors name the variable, never a key', () => {
  const base = { TENANTS_FILE: '/tmp/t.json' };

  it('takes UPSTREAMS_FILE instead of UPSTREAM_API_KEY, and refuses both or neither', () => {
    expect(loadConfig({ ...base, UPSTREAMS_FILE: '/tmp/u.yaml' }).UPSTREAMS_FILE).toBe('/tmp/u.yaml');
    expect(() => loadConfig(base)).toThrow(/UPSTREAM_API_KEY is required \(or UPSTREAMS_FILE/);
    expect(() => loadConfig({ ...base, UPSTREAMS_FILE: '/tmp/u.yaml', UPSTREAM_API_KEY: 'k' })).toThrow(/UPSTREAM_API_KEY and UPSTREAMS_FILE are both set/);
    expect(loadConfig({ ...base, UPSTREAM_API_KEY: 'k' }).UPSTREAM_BALANCE_POLL_SECONDS).toBe(300);
    expect(() => loadConfig({ ...base, UPSTREAM_API_KEY: 'k', UPSTREAM_BALANCE_POLL_SECONDS: '1' })).toThrow(/UPSTREAM_BALANCE_POLL_SECONDS must be at least 10/);
    expect(() => loadConfig({ ...base, UPSTREAM_API_KEY: 'k', UPSTREAM_BALANCE_ALERT: 'low' })).toThrow(/UPSTREAM_BALANCE_ALERT must be a number/);
  });

  it('reads YAML with env references, and names the entry of a mistake without quoting the file', () => {
    const dir = mkdtempSync(join(tmpdir(), 'fgw-upstreams-'));
    const yaml = join(dir, 'u.yaml');
    writeFileSync(yaml, 'upstreams:\n  - name: one\n    baseUrl: https://r.example/replicate/v1/\n    apiKey: { env: ONE_KEY }\n    weight: 2\n  - name: rep\n    baseUrl: https://api.replicate.com/v1\n    apiKey: r8_secret\n');
    expect(readUpstreamsFile(yaml, { ONE_KEY: 'sk-one' })).toEqual([
      { name: 'one', baseUrl: 'https://r.example/replicate/v1', apiKey: 'sk-one', weight: 2, models: undefined, webhookSecret: undefined, balance: 'new-api', drain: false, quotaPerUnit: 500_000 },
      { name: 'rep', baseUrl: 'https://api.replicate.com/v1', apiKey: 'r8_secret', weight: 1, models: undefined, webhookSecret: undefined, balance: 'none', drain: false, quotaPerUnit: 500_000 },
    ]);
    expect(() => readUpstreamsFile(yaml, {})).toThrow(/upstreams\.0\.apiKey names ONE_KEY, which is not set/);
    const json = join(dir, 'u.json');
    writeFileSync(json, '{"upstreams":[{"name":"a","baseUrl":"https://a.example","apiKey":"sk-do-not-print-me"');
    expect(() => readUpstreamsFile(json, {})).toThrow(/^invalid configuration: UPSTREAMS_FILE .* is not valid JSON$/);
    writeFileSync(json, JSON.stringify({ upstreams: [{ name: 'a', baseUrl: 'https://a.example', apiKey: 'sk-do-not-print-me' }, { name: 'a', baseUrl: 'https://b.example', apiKey: 'sk-2' }] }));
    expect(() => readUpstreamsFile(json, {})).toThrow(/upstreams\.1\.name a is listed twice/);
    writeFileSync(json, JSON.stringify({ upstreams: [{ name: 'a', baseUrl: 'https://a.example', apiKey: 'sk-do-not-print-me', wieght: 2 }] }));
    try {
      readUpstreamsFile(json, {});
      expect.unreachable();
    } catch (err) {
      expect((err as Error).message).toMatch(/^invalid configuration: UPSTREAMS_FILE /);
      expect((err as Error).message).not.toContain('sk-do-not-print-me');
    }
  });
});

describe('upstream webhooks: a call about a prediction is verified with the secret of the account it is pinned to', () => {
  it('accepts the call signed by the prediction\'s own account, and refuses one signed by another account', async () => {
    const [a, b] = [await sim(), await sim()];
    const secret = (s: string) => `whsec_${Buffer.from(`${s}-signing-secret-0123456789`).toString('base64')}`;
    const file = upstreamsFile([
      entry('acct-a', a, { models: ['black-forest-labs/*'], webhookSecret: secret('a') }),
      entry('acct-b', b, { models: ['acme/*'], webhookSecret: secret('b') }),
    ]);
    const g = await gateway(file, a, {
      WEBHOOK_MODE: 'upstream',
      PUBLIC_BASE_URL: 'http://gateway.test',
      WEBHOOK_ALLOW_HTTP_HOSTS: '127.0.0.1',
      WEBHOOK_ALLOW_PRIVATE_HOSTS: '127.0.0.1',
    });
    const r = await call(g.url, 'POST', '/replicate/v1/models/acme/painter/predictions', { key: KEY_A, body: { input: { prompt: 'x' }, webhook: 'http://127.0.0.1:9/hook' } });
    expect(r.status).toBe(201);
    const sent = upstreamCalls(b.sim).find((c) => c.method === 'POST')!.body as { webhook: string };
    const path = new URL(sent.webhook).pathname;
    const body = JSON.stringify({ id: r.body.id, status: 'processing' });
    const signedBy = (s: string, msgId: string) => {
      const at = new Date();
      return { 'content-type': 'application/json', 'webhook-id': msgId, 'webhook-timestamp': String(Math.floor(at.getTime() / 1000)), 'webhook-signature': new Webhook(s).sign(msgId, at, body) };
    };
    // The link is known to the gateway only once the create's background step has stored it.
    await waitFor(async () => (await call(g.url, 'POST', path, { rawBody: body, headers: signedBy(secret('a'), `msg_${randomUUID()}`) })).status === 401, 5000, 'the receiver link');
    expect((await call(g.url, 'POST', path, { rawBody: body, headers: signedBy(secret('b'), 'msg_b') })).status).toBe(204);
  });
});
