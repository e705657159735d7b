// Issue 15: webhooks through the gateway. A real receiver on loopback (that can fail on purpose), the simulator as
// the upstream (it sends no webhooks at all, like a New-API reseller), the official client's validateWebhook on what
// the tenant receives, two gateway processes on one Redis, a restart in the middle of a backoff, and forged calls.
import { randomUUID } from 'node:crypto';
import { type IncomingHttpHeaders, type Server, createServer } from 'node:http';
import { validateWebhook } from 'replicate';
import { Webhook } from 'standardwebhooks';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { KEY_A, KEY_B, MODEL_PATH, type Gateway, type SimHandle, call, expectProblem, sendHeadOnly, startGateway, startGatewayProcess, startSimulator, stopAllGatewayProcesses, upstreamCalls, waitFor, writeTenants } from './helpers/stack.js';

interface Received {
  headers: IncomingHttpHeaders;
  body: string;
  status: number;
  at: number;
  json: { id: string; status: string; output: unknown; urls: { get: string; cancel: string } };
}

/** A tenant's webhook endpoint: records every call; `answer` decides each status (default 200). */
class Receiver {
  readonly calls: Received[] = [];
  answer: (headers: IncomingHttpHeaders, n: number) => number = () => 200;
  #server: Server | undefined;
  url = '';

  async start(): Promise<void> {
    this.#server = createServer((req, res) => {
      let body = '';
      req.setEncoding('utf8').on('data', (d: string) => (body += d));
      req.on('end', () => {
        const status = this.answer(req.headers, this.calls.length);
        this.calls.push({ headers: req.headers, body, status, at: Date.now(), json: JSON.parse(body) });
        res.writeHead(status).end();
      });
    });
    await new Promise<void>((r) => this.#server!.listen(0, '127.0.0.1', r));
    const addr = this.#server.address() as { port: number };
    this.url = `http://127.0.0.1:${addr.port}`;
  }

  /** Calls that got a 2xx, for one prediction (all when omitted). */
  delivered(prediction?: string): Received[] {
    return this.calls.filter((c) => c.status < 300 && (!prediction || c.json.id === prediction));
  }

  async stop(): Promise<void> {
    await new Promise((r) => this.#server?.close(r));
  }
}

/** The event a delivery was for, from its webhook-id (msg_<prediction>_<event>[_<what>]). */
const eventOf = (c: Received) => String(c.headers['webhook-id']).slice(`msg_${c.json.id}_`.length).split('_')[0];
const RANK: Record<string, number> = { starting: 0, processing: 1, succeeded: 2, failed: 2, canceled: 2, aborted: 2 };

/** One prediction's deliveries: start first (as created), completed last and once, no id twice, statuses never going back. */
function expectInOrder(got: Received[], what: string): void {
  const seen = got.map((c) => `${eventOf(c)}:${c.json.status}`).join(' ');
  expect(eventOf(got[0]!), `${what}: ${seen}`).toBe('start');
  // The start event is the create's own answer, however late the first look comes.
  expect(got[0]!.json.status).toBe('starting');
  expect(got.filter((c) => eventOf(c) === 'completed'), `${what}: ${seen}`).toHaveLength(1);
  expect(eventOf(got.at(-1)!), `${what}: ${seen}`).toBe('completed');
  expect(got.at(-1)!.json.status).toBe('succeeded');
  expect(new Set(got.map((c) => c.headers['webhook-id'])).size, `${what}: ${seen}`).toBe(got.length);
  const ranks = got.map((c) => RANK[c.json.status]!);
  expect(ranks, `${what}: ${seen}`).toEqual([...ranks].sort((a, b) => a - b));
}

const WEBHOOK_ENV = {
  WEBHOOK_ALLOW_HTTP_HOSTS: '127.0.0.1',
  WEBHOOK_ALLOW_PRIVATE_HOSTS: '127.0.0.1',
  WEBHOOK_POLL_MIN_MS: '50',
  WEBHOOK_POLL_MAX_MS: '200',
  WATCH_MIN_MS: '50',
  WATCH_MAX_MS: '200',
  WEBHOOK_RETRY_MIN_MS: '100',
};

let s: SimHandle;
const receiver = new Receiver();
beforeAll(async () => {
  s = await startSimulator(100);
  await receiver.start();
});
afterAll(async () => {
  await receiver.stop();
  await s.sim.close();
});
afterEach(() => {
  receiver.answer = () => 200;
});

const createWithHook = (base: string, key: string, hook: Record<string, unknown>, input: Record<string, unknown> = { prompt: 'hook' }) =>
  call(base, 'POST', MODEL_PATH, { key, body: { input, ...hook } });

describe.each([['redis'], ['memory']] as const)('with the %s store', (kind) => {
  let gw: Gateway;
  beforeAll(async () => {
    gw = await startGateway({ sim: s, ...(kind === 'memory' ? { redis: 'memory' as const } : {}), env: WEBHOOK_ENV });
  });
  afterAll(async () => {
    await gw.close();
  });

  it('delivers the tenant\'s events in order, signed with its own secret, and the upstream never sees the webhook', async () => {
    s.sim.clearRequests();
    const url = `${receiver.url}/hooks/${kind}`;
    const created = await createWithHook(gw.url, KEY_A, { webhook: url });
    expect(created.status).toBe(201);
    const id = created.body.id as string;
    const upstreamCreate = upstreamCalls(s.sim).find((r) => r.method === 'POST')!.body as Record<string, unknown>;
    expect(upstreamCreate).not.toHaveProperty('webhook');
    expect(upstreamCreate).not.toHaveProperty('webhook_events_filter');

    await waitFor(() => receiver.delivered(id).some((c) => eventOf(c) === 'completed'), 10_000, 'the completed event');
    const got = receiver.delivered(id);
    // start first (with whatever the first look saw), completed last and once, running states only in between.
    expectInOrder(got, id);
    expect(got.every((c) => c.headers['user-agent'] === 'fuhu-gateway-webhooks')).toBe(true);
    // What the gateway would answer: its own URLs.
    expect(got.at(-1)!.json.urls.get).toBe(`${gw.url}/replicate/v1/predictions/${id}`);

    // The tenant reads its secret once and verifies every call with the official client's helper.
    const secret = await call(gw.url, 'GET', '/gateway/v1/webhooks/secret', { key: KEY_A });
    expect(secret.status).toBe(200);
    expect(secret.body.key).toMatch(/^whsec_/);
    for (const c of got) {
      expect(await validateWebhook({ headers: c.headers as Record<string, string>, body: c.body } as never, secret.body.key)).toBe(true);
    }
    // Another tenant's secret does not verify them.
    const other = await call(gw.url, 'GET', '/gateway/v1/webhooks/secret', { key: KEY_B });
    expect(other.body.key).not.toBe(secret.body.key);
    expect(await validateWebhook({ headers: got[0]!.headers as Record<string, string>, body: got[0]!.body } as never, other.body.key)).toBe(false);
    // Nor does the secret reach the gateway's logs.
    expect(gw.logs.join('\n')).not.toContain(secret.body.key.slice('whsec_'.length));
    const again = await call(gw.url, 'GET', '/gateway/v1/webhooks/secret', { key: KEY_A });
    expect(again.status).toBe(409);
    expect(again.body.detail).toMatch(/shown once already/);

    // The gateway knows the outcome without any client poll: the first GET is a cache hit, and usage counts it.
    const first = await call(gw.url, 'GET', `/replicate/v1/predictions/${id}`, { key: KEY_A });
    expect(first.headers.get('x-cache')).toBe('HIT');
    expect(first.body.status).toBe('succeeded');
    const listed = await call(gw.url, 'GET', '/replicate/v1/predictions', { key: KEY_A });
    expect(listed.body.results.find((p: { id: string }) => p.id === id).status).toBe('succeeded');
  });

  it('sends only the events in webhook_events_filter', async () => {
    const created = await createWithHook(gw.url, KEY_A, { webhook: `${receiver.url}/only-completed`, webhook_events_filter: ['completed'] });
    const id = created.body.id as string;
    await waitFor(() => receiver.delivered(id).length > 0, 10_000, 'the completed event');
    await new Promise((r) => setTimeout(r, 300));
    expect(receiver.delivered(id).map((c) => c.json.status)).toEqual(['succeeded']);
  });

  it('retries 5xx with backoff under one webhook-id, never 4xx, and shows the tenant its failures', async () => {
    let failures = 2;
    receiver.answer = (h) => (String(h['webhook-id']).includes(retryId) && failures-- > 0 ? 503 : 200);
    let retryId = '\u0000';
    const created = await createWithHook(gw.url, KEY_B, { webhook: `${receiver.url}/flaky`, webhook_events_filter: ['completed'] });
    retryId = created.body.id as string;
    await waitFor(() => receiver.delivered(retryId).length === 1, 10_000, 'the delivery after two failures');
    const attempts = receiver.calls.filter((c) => c.json.id === retryId);
    expect(attempts.map((c) => c.status)).toEqual([503, 503, 200]);
    expect(new Set(attempts.map((c) => c.headers['webhook-id'])).size).toBe(1);
    // The pauses are at least 100 ms, then 200 ms (WEBHOOK_RETRY_MIN_MS, doubling).
    const [t0, t1, t2] = attempts.map((c) => c.at);
    expect(t1! - t0!).toBeGreaterThanOrEqual(95);
    expect(t2! - t1!).toBeGreaterThanOrEqual(195);

    receiver.answer = (h) => (String(h['webhook-id']).includes(badId) ? 400 : 200);
    let badId = '\u0000';
    const bad = await createWithHook(gw.url, KEY_B, { webhook: `${receiver.url}/bad`, webhook_events_filter: ['completed'] });
    badId = bad.body.id as string;
    await waitFor(() => receiver.calls.some((c) => c.json.id === badId), 10_000, 'the one attempt');
    await new Promise((r) => setTimeout(r, 500));
    expect(receiver.calls.filter((c) => c.json.id === badId)).toHaveLength(1);

    const log = await call(gw.url, 'GET', '/gateway/v1/webhooks/deliveries', { key: KEY_B });
    const mine = log.body.failures.filter((f: { prediction: string }) => [retryId, badId].includes(f.prediction));
    expect(mine).toEqual([
      expect.objectContaining({ prediction: badId, event: 'completed', status: 400, will_retry: false, attempt: 1 }),
      expect.objectContaining({ prediction: retryId, status: 503, will_retry: true, attempt: 2 }),
      expect.objectContaining({ prediction: retryId, status: 503, will_retry: true, attempt: 1 }),
    ]);
    // Tenant A sees none of B's.
    const a = await call(gw.url, 'GET', '/gateway/v1/webhooks/deliveries', { key: KEY_A });
    expect(a.body.failures.some((f: { prediction: string }) => f.prediction === retryId)).toBe(false);
    const metrics = await call(gw.url, 'GET', '/metrics');
    expect(metrics.text).toMatch(/fgw_webhook_deliveries_total\{tenant="team-b",outcome="retrying"\} 2/);
  });

  it('keeps one queued logs event, the newest, while a delivery waits for its retry', async () => {
    let id = '\u0000';
    let down = true;
    receiver.answer = (h) => (String(h['webhook-id']).includes(id) && down ? 503 : 200);
    const r = await createWithHook(gw.url, KEY_A, { webhook: `${receiver.url}/backlog`, webhook_events_filter: ['start', 'logs', 'completed'] }, { prompt: 'long', duration_ms: 4000 });
    id = r.body.id;
    await waitFor(() => s.sim.predictions.get(id)!.status === 'processing', 5000, 'processing');
    // The logs grow 20 times while the receiver is down (each change seen by a 50 ms watch).
    for (let i = 0; i < 20; i++) {
      s.sim.predictions.get(id)!.logs += `line ${i}\n`;
      await new Promise((r2) => setTimeout(r2, 60));
    }
    down = false;
    await waitFor(() => receiver.delivered(id).some((c) => eventOf(c) === 'completed'), 15_000, 'the completed event');
    const logs = receiver.delivered(id).filter((c) => eventOf(c) === 'logs');
    // At most the one that was being retried and the newest: not one per change.
    expect(logs.length).toBeGreaterThanOrEqual(1);
    expect(logs.length).toBeLessThanOrEqual(3);
    expectInOrder(receiver.delivered(id), id);
  });

  it('refuses a body key the upstream could read as webhook or webhook_events_filter (any case, Unicode folding), and sends nothing', async () => {
    s.sim.clearRequests();
    for (const key of ['Webhook', 'WEBHOOK', 'webHook', 'webhooK', 'Webhook_Events_Filter', 'WEBHOOK_EVENTS_FILTER', 'webhook_eventſ_filter']) {
      const value = key.toLowerCase().includes('filter') ? ['start'] : 'https://example.com/hook';
      const r = await call(gw.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: { prompt: 'x' }, [key]: value } });
      expectProblem(r, 422, /write webhook or webhook_events_filter exactly so/);
    }
    expect(upstreamCalls(s.sim)).toHaveLength(0);
  });

  it('refuses webhook URLs the gateway must not call: plain http, private addresses, names that resolve to loopback', async () => {
    s.sim.clearRequests();
    for (const [url, why] of [
      ['http://example.com/hook', /^webhook must be an https URL/],
      ['https://10.1.2.3/hook', /^webhook points at a private, loopback or reserved address/],
      ['https://[::1]/hook', /private, loopback/],
      ['https://[::127.0.0.1]/hook', /private, loopback/],
      ['https://[::169.254.169.254]/hook', /private, loopback/],
      ['https://[::ffff:10.0.0.1]/hook', /private, loopback/],
      ['https://[64:ff9b::10.0.0.1]/hook', /private, loopback/],
      ['https://[2002:c0a8:101::1]/hook', /private, loopback/],
      ['https://user:pw@example.com/hook', /credentials/],
      ['ftp://example.com/hook', /https/],
    ] as const) {
      const r = await createWithHook(gw.url, KEY_A, { webhook: url });
      expect(r.status, url).toBe(422);
      expect(r.body.detail).toMatch(why);
    }
    expect(upstreamCalls(s.sim)).toHaveLength(0);
    // A name is checked on the address actually connected to, at each delivery.
    const r = await createWithHook(gw.url, KEY_A, { webhook: 'https://localhost:1/hook', webhook_events_filter: ['completed'] });
    expect(r.status).toBe(201);
    await waitFor(async () => (await call(gw.url, 'GET', '/gateway/v1/webhooks/deliveries', { key: KEY_A })).body.failures.some((f: { prediction: string }) => f.prediction === r.body.id), 10_000, 'the refused delivery');
    const f = (await call(gw.url, 'GET', '/gateway/v1/webhooks/deliveries', { key: KEY_A })).body.failures.find((x: { prediction: string }) => x.prediction === r.body.id);
    expect(f).toMatchObject({ will_retry: false, reason: expect.stringMatching(/localhost resolves to a private, loopback or reserved address/) });
  });
});

describe('webhooks and spend control', () => {
  const KEY_W = 'team-w-key-0123456789abcdef';
  const KEY_V = 'team-v-key-0123456789abcdef';
  let gw: Gateway;
  beforeAll(async () => {
    gw = await startGateway({
      sim: s,
      tenants: [
        { id: 'team-w', keys: [KEY_W], maxRunning: 1, budget: { predictTimeSeconds: { max: 1000, period: 'month' } } },
        { id: 'team-v', keys: [KEY_V], maxRunning: 1 },
      ],
      env: WEBHOOK_ENV,
    });
  });
  afterAll(async () => {
    await gw.close();
  });

  it('settles the budget and frees the running slot when the watcher sees the end, with no client poll', async () => {
    const first = await createWithHook(gw.url, KEY_W, { webhook: `${receiver.url}/budget`, webhook_events_filter: ['completed'] }, { prompt: 'first', duration_ms: 1500 });
    expect(first.status).toBe(201);
    // At maxRunning 1 a second create waits for the first to end.
    const blocked = await call(gw.url, 'POST', MODEL_PATH, { key: KEY_W, body: { input: { prompt: 'second', duration_ms: 5000 } } });
    expect(blocked.status).toBe(429);
    expect(blocked.body.detail).toMatch(/maxRunning 1/);
    await waitFor(() => receiver.delivered(first.body.id).length === 1, 10_000, 'the completed event');
    const usage = await call(gw.url, 'GET', '/gateway/v1/usage', { key: KEY_W });
    expect(usage.body.running.count).toBe(0);
    expect(usage.body.budget.predictTimeSeconds).toMatchObject({ reserved: 0, spent: expect.any(Number) });
    expect(usage.body.budget.predictTimeSeconds.spent).toBeGreaterThan(0);
    expect(usage.body.totals.succeeded).toBe(1);
    const second = await call(gw.url, 'POST', MODEL_PATH, { key: KEY_W, body: { input: { prompt: 'second' } } });
    expect(second.status).toBe(201);
  });
});

describe('one tenant\'s hanging receivers', () => {
  const KEY_X = 'team-x-key-0123456789abcdef';
  const KEY_Y = 'team-y-key-0123456789abcdef';
  let gw: Gateway;
  let hang: Server;
  let hanging = 0;
  const open = new Set<import('node:net').Socket>();
  beforeAll(async () => {
    // Takes every request and never answers it.
    hang = createServer(() => void hanging++);
    hang.on('connection', (sock) => {
      open.add(sock);
    });
    await new Promise<void>((r) => hang.listen(0, '127.0.0.1', r));
    gw = await startGateway({ sim: s, tenants: [{ id: 'team-x', keys: [KEY_X] }, { id: 'team-y', keys: [KEY_Y] }], env: { ...WEBHOOK_ENV, WEBHOOK_TIMEOUT_MS: '8000' } });
  });
  afterAll(async () => {
    for (const sock of open) sock.destroy();
    await gw.close();
    await new Promise((r) => hang.close(r));
  });

  it('hold only their share of the watcher, so another tenant\'s webhooks go out while they hang', async () => {
    const port = (hang.address() as { port: number }).port;
    // More hanging deliveries than the replica has watch slots (32).
    for (let i = 0; i < 40; i++) {
      const r = await createWithHook(gw.url, KEY_X, { webhook: `http://127.0.0.1:${port}/never`, webhook_events_filter: ['start'] }, { prompt: `x${i}` });
      expect(r.status).toBe(201);
    }
    await waitFor(() => hanging >= 8, 5000, 'team-x deliveries to hang');
    const y = await createWithHook(gw.url, KEY_Y, { webhook: `${receiver.url}/while-x-hangs`, webhook_events_filter: ['start'] });
    await waitFor(() => receiver.delivered(y.body.id).length === 1, 7000, 'team-y delivery while team-x hangs');
    // team-x holds 8 of the slots, never all of them; none of its attempts has ended yet.
    expect(hanging).toBe(8);
  });
});

describe('across gateway processes on one Redis', () => {
  afterAll(async () => {
    await stopAllGatewayProcesses();
  });

  it('delivers each event once when two replicas watch the same predictions', async () => {
    const prefix = `wh2:${randomUUID()}:`;
    const tenantsFile = writeTenants([{ id: 'team-a', keys: [KEY_A] }]);
    const [g1, g2] = await Promise.all([0, 1].map(() => startGatewayProcess({ sim: s, tenantsFile, prefix, env: WEBHOOK_ENV })));
    const ids: string[] = [];
    for (let i = 0; i < 6; i++) {
      // Long enough that both replicas take turns watching each prediction.
      const r = await createWithHook(i % 2 ? g2!.url : g1!.url, KEY_A, { webhook: `${receiver.url}/two` }, { prompt: `two ${i}`, duration_ms: 800 });
      expect(r.status).toBe(201);
      ids.push(r.body.id);
    }
    await waitFor(() => ids.every((id) => receiver.delivered(id).some((c) => eventOf(c) === 'completed')), 20_000, 'every completed event');
    await new Promise((r) => setTimeout(r, 500));
    for (const id of ids) expectInOrder(receiver.delivered(id), id);
  });

  it('keeps a delivery through a restart in the middle of its backoff, and sends it once', async () => {
    const prefix = `whr:${randomUUID()}:`;
    const tenantsFile = writeTenants([{ id: 'team-a', keys: [KEY_A] }]);
    const env = { ...WEBHOOK_ENV, WEBHOOK_RETRY_MIN_MS: '400' };
    const g1 = await startGatewayProcess({ sim: s, tenantsFile, prefix, env });
    let id = '\u0000';
    let down = true;
    receiver.answer = (h) => (String(h['webhook-id']).includes(id) && down ? 503 : 200);
    const r = await createWithHook(g1.url, KEY_A, { webhook: `${receiver.url}/restart`, webhook_events_filter: ['completed'] });
    id = r.body.id;
    await waitFor(() => receiver.calls.some((c) => c.json.id === id), 10_000, 'a first failed attempt');
    await g1.stop();
    const failedBefore = receiver.calls.filter((c) => c.json.id === id).length;
    down = false;
    const g2 = await startGatewayProcess({ sim: s, tenantsFile, prefix, env });
    await waitFor(() => receiver.delivered(id).length === 1, 15_000, 'the delivery by the new process');
    await new Promise((r2) => setTimeout(r2, 800));
    const all = receiver.calls.filter((c) => c.json.id === id);
    expect(failedBefore).toBeGreaterThanOrEqual(1);
    expect(all.filter((c) => c.status === 200)).toHaveLength(1);
    expect(new Set(all.map((c) => c.headers['webhook-id'])).size).toBe(1);
    await g2.stop();
  });
});

describe('WEBHOOK_MODE=upstream: the upstream calls the gateway back', () => {
  const upstreamSecret = `whsec_${Buffer.from('upstream-signing-secret-0123456789').toString('base64')}`;
  let gw: Gateway;
  beforeAll(async () => {
    gw = await startGateway({
      sim: s,
      env: {
        ...WEBHOOK_ENV,
        WEBHOOK_MODE: 'upstream',
        PUBLIC_BASE_URL: 'http://gateway.test',
        UPSTREAM_WEBHOOK_SECRET: upstreamSecret,
        // Polls so rare that only the receiver's hint can explain a prompt delivery.
        WEBHOOK_POLL_MIN_MS: '600000',
        WEBHOOK_POLL_MAX_MS: '600000',
        WATCH_MIN_MS: '600000',
        WATCH_MAX_MS: '600000',
      },
    });
  });
  afterAll(async () => {
    await gw.close();
  });

  it('gives the upstream its own receiver, and on a verified call re-reads the prediction instead of trusting the payload', async () => {
    s.sim.clearRequests();
    const r = await createWithHook(gw.url, KEY_A, { webhook: `${receiver.url}/up`, webhook_events_filter: ['completed'] });
    const id = r.body.id as string;
    const sent = upstreamCalls(s.sim).find((c) => c.method === 'POST')!.body as { webhook: string; webhook_events_filter: string[] };
    expect(sent.webhook).toMatch(/^http:\/\/gateway\.test\/gateway\/v1\/webhooks\/upstream\/[\w-]{32}$/);
    expect(sent.webhook_events_filter).toEqual(['start', 'output', 'logs', 'completed']);
    const receiverPath = new URL(sent.webhook).pathname;
    await waitFor(() => s.sim.predictions.get(id)!.status === 'succeeded', 5000, 'the upstream to finish');

    const forged = JSON.stringify({ id, status: 'succeeded', output: ['https://evil.example/steal.png'] });
    const post = (body: string, headers: Record<string, string>) => call(gw.url, 'POST', receiverPath, { rawBody: body, headers: { 'content-type': 'application/json', ...headers } });
    const signed = (msgId: string, at = new Date()) => ({
      'webhook-id': msgId,
      'webhook-timestamp': String(Math.floor(at.getTime() / 1000)),
      'webhook-signature': new Webhook(upstreamSecret).sign(msgId, at, forged),
    });
    // Unsigned, badly signed, or too old: refused, nothing happens.
    expect((await post(forged, {})).status).toBe(401);
    expect((await post(forged, { ...signed('msg_x'), 'webhook-signature': 'v1,AAAA' })).status).toBe(401);
    expect((await post(forged, signed('msg_old', new Date(Date.now() - 3_600_000)))).status).toBe(401);
    await new Promise((r2) => setTimeout(r2, 300));
    expect(receiver.calls.filter((c) => c.json.id === id)).toHaveLength(0);

    // Genuine: a hint. The tenant gets the real prediction, not the payload's claims.
    expect((await post(forged, signed('msg_1'))).status).toBe(204);
    await waitFor(() => receiver.delivered(id).length === 1, 5000, 'the delivery after the hint');
    expect(receiver.delivered(id)[0]!.json.output).toEqual([`https://replicate.delivery/xezq/${id}/out-0.webp`]);
    const cached = await call(gw.url, 'GET', `/replicate/v1/predictions/${id}`, { key: KEY_A });
    expect(cached.headers.get('x-cache')).toBe('HIT');
    expect(cached.body.output).toEqual([`https://replicate.delivery/xezq/${id}/out-0.webp`]);
    // The same message again is a replay.
    expect((await post(forged, signed('msg_1'))).status).toBe(409);
    // An upstream payload may be larger and deeper than a client body (it echoes the input, inlined files too).
    const big = JSON.stringify({ id, status: 'succeeded', input: { image: `data:image/png;base64,${'A'.repeat(11 * 1024 * 1024)}` }, deep: JSON.parse('['.repeat(80) + ']'.repeat(80)) });
    const at = new Date();
    const bigHeaders = { 'webhook-id': 'msg_big', 'webhook-timestamp': String(Math.floor(at.getTime() / 1000)), 'webhook-signature': new Webhook(upstreamSecret).sign('msg_big', at, big) };
    expect((await post(big, bigHeaders)).status).toBe(204);
    // A link the gateway never issued changes nothing either: 404.
    expect((await post(forged, signed('msg_2'))).status).toBe(204);
    const unknown = await call(gw.url, 'POST', `/gateway/v1/webhooks/upstream/${'z'.repeat(32)}`, { rawBody: forged, headers: { 'content-type': 'application/json', ...signed('msg_3') } });
    expect(unknown.status).toBe(404);
    await new Promise((r2) => setTimeout(r2, 300));
    expect(receiver.delivered(id)).toHaveLength(1);
    // The receiver link is a credential too: never in the access log.
    expect(gw.logs.join('\n')).not.toContain(receiverPath.split('/').pop());
  });

  it('answers an unknown link, missing or stale signature headers and an over-long body before the body is sent; a bad signature is read through the HMAC, never kept', async () => {
    s.sim.clearRequests();
    await createWithHook(gw.url, KEY_A, { webhook: `${receiver.url}/noread`, webhook_events_filter: ['completed'] });
    const receiverPath = new URL((upstreamCalls(s.sim).find((c) => c.method === 'POST')!.body as { webhook: string }).webhook).pathname;
    const fifteenMb = { 'content-type': 'application/json', 'content-length': String(15 * 1024 * 1024) };
    const now = String(Math.floor(Date.now() / 1000));
    const looksSigned = { 'webhook-id': 'msg_nobody', 'webhook-timestamp': now, 'webhook-signature': `v1,${Buffer.alloc(32).toString('base64')}` };
    // Each answer comes while the 15 MB are still unsent: the gateway cannot have waited for them.
    const unknownLink = await sendHeadOnly(gw.url, 'POST', `/gateway/v1/webhooks/upstream/${'z'.repeat(32)}`, { ...fifteenMb, ...looksSigned });
    expect(unknownLink).toMatchObject({ status: 404, body: { status: 404 } });
    const unsigned = await sendHeadOnly(gw.url, 'POST', receiverPath, fifteenMb);
    expect(unsigned).toMatchObject({ status: 401, body: { status: 401 } });
    const stale = await sendHeadOnly(gw.url, 'POST', receiverPath, { ...fifteenMb, ...looksSigned, 'webhook-timestamp': String(Number(now) - 3600) });
    expect(stale).toMatchObject({ status: 401, body: { detail: expect.stringMatching(/too old/) } });
    const tooLong = await sendHeadOnly(gw.url, 'POST', receiverPath, { ...looksSigned, 'content-type': 'application/json', 'content-length': String(gw.config.UPSTREAM_MAX_BODY_BYTES + 1) });
    expect(tooLong).toMatchObject({ status: 413, body: { detail: expect.stringMatching(/UPSTREAM_MAX_BODY_BYTES/) } });
    // Headers that pass: the body streams through the HMAC; a wrong signature is 401 and a body past the cap 413.
    const wrong = await call(gw.url, 'POST', receiverPath, { rawBody: 'x'.repeat(1024 * 1024), headers: { 'content-type': 'application/json', ...looksSigned } });
    expectProblem(wrong, 401, /not valid/);
    const chunked = new ReadableStream({
      pull(c) {
        c.enqueue(new Uint8Array(1024 * 1024));
      },
    });
    const endless = await fetch(gw.url + receiverPath, { method: 'POST', body: chunked, duplex: 'half', headers: { 'content-type': 'application/json', ...looksSigned } } as RequestInit).catch((err: Error) => err);
    // The gateway answers 413 and closes; a client still sending may see the close before the answer.
    if (endless instanceof Response) expect(endless.status).toBe(413);
    else expect(String(endless.cause ?? endless)).toMatch(/closed|reset|EPIPE|other side/i);
  });
});

describe('webhook settings at boot', () => {
  it.each([
    [{ WEBHOOK_MODE: 'push' }, /WEBHOOK_MODE must be poll or upstream/],
    [{ WEBHOOK_MODE: 'upstream' }, /WEBHOOK_MODE=upstream needs PUBLIC_BASE_URL/],
    [{ UPSTREAM_WEBHOOK_SECRET: 'plain' }, /UPSTREAM_WEBHOOK_SECRET must be a Standard Webhooks secret/],
    [{ WEBHOOK_ALLOW_HTTP_HOSTS: 'http://x.example' }, /WEBHOOK_ALLOW_HTTP_HOSTS must be a comma-separated list of host names/],
    [{ WEBHOOK_POLL_MIN_MS: '5000', WEBHOOK_POLL_MAX_MS: '1000' }, /WEBHOOK_POLL_MAX_MS must be at least WEBHOOK_POLL_MIN_MS/],
  ])('refuses %o, naming the variable', async (env, message) => {
    const { loadConfig } = await import('../src/config.js');
    expect(() => loadConfig({ UPSTREAM_API_KEY: 'k', TENANTS_FILE: '/dev/null', ...env })).toThrow(message);
  });

  it('refuses a tenant webhookSecret that is not a Standard Webhooks secret, naming the field', async () => {
    const { readTenantsFile } = await import('../src/access/tenants.js');
    const file = writeTenants([{ id: 'team-a', keys: [KEY_A], webhookSecret: 'hunter2' } as never]);
    expect(() => readTenantsFile(file)).toThrow(/tenants\.0\.webhookSecret: must be a Standard Webhooks secret/);
  });
});
