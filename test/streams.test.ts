// Issue 26: browsers watch a prediction without polling. Server-sent events per prediction, for its owner (a key,
// or a token for that prediction alone, which may come as ?token=), fanned out across replicas through the store's
// pub/sub, bounded per tenant, and resumable with Last-Event-ID; and a real Chromium page that follows one.
import { randomUUID } from 'node:crypto';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TenantInput } from '../src/access/tenants.js';
import { launchChromium } from './helpers/chromium.js';
import { type DemoBackend, startDemoBackend } from './fixtures/browser/backend.js';
import { freePort } from './support/processes.js';
import { byWatcher, call, expectProblem, type Gateway, gatewaysPerTest, MODEL_PATH, startGateway, upstreamCalls, useSimulator } from './helpers/stack.js';

const key = (id: string) => `${id}-key-0123456789abcdef`;
const lots = { max: 100_000, timeWindow: '1 minute' };
const SECRET = 'streams-test-signing-secret-0123456789abcdef';
const TENANTS: TenantInput[] = [
  { id: 'live', keys: [key('live')], rateLimit: lots },
  { id: 'other', keys: [key('other')], rateLimit: lots },
];
const ENV = { TOKEN_SIGNING_SECRET: SECRET, WATCH_MIN_MS: '100', WATCH_MAX_MS: '300', LOG_LEVEL: 'info' };

interface SseEvent {
  event: string;
  id: string;
  data: string;
}

/** An event stream as a client reads it: its status, and its events as they come. */
async function openStream(url: string, headers: Record<string, string> = {}) {
  const controller = new AbortController();
  const res = await fetch(url, { headers, signal: controller.signal });
  const events: SseEvent[] = [];
  let closed = false;
  let wake: () => void = () => {};
  const reading = (async () => {
    if (!res.body || !res.headers.get('content-type')?.startsWith('text/event-stream')) return;
    const decoder = new TextDecoder();
    let buf = '';
    try {
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        buf += decoder.decode(chunk, { stream: true });
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const e: SseEvent = { event: 'message', id: '', data: '' };
          let any = false;
          for (const line of block.split('\n')) {
            const [k, ...rest] = line.split(': ');
            const v = rest.join(': ');
            if (k === 'event') e.event = v;
            else if (k === 'id') e.id = v;
            else if (k === 'data') (e.data = v), (any = true);
          }
          if (any) events.push(e);
          wake();
        }
      }
    } catch {
      // Aborted by the test.
    }
    closed = true;
    wake();
  })();
  /** Waits until `check` holds of the events (or the stream closed), at most `ms`. */
  const until = async (check: (ev: SseEvent[]) => boolean, ms = 10_000) => {
    const deadline = Date.now() + ms;
    while (!check(events) && !closed && Date.now() < deadline) await new Promise<void>((r) => ((wake = r), setTimeout(r, 100)));
    return check(events);
  };
  return {
    res,
    events,
    until,
    get closed() {
      return closed;
    },
    async close() {
      controller.abort();
      await reading;
    },
  };
}

const statuses = (events: SseEvent[]) => events.filter((e) => e.event === 'status').map((e) => JSON.parse(e.data).status as string);

const s = useSimulator(100);
const start = gatewaysPerTest();
const gateway = (env: Record<string, string> = {}, prefix?: string): Promise<Gateway> => start({ sim: s, tenants: TENANTS, prefix, env: { ...ENV, ...env } });
const create = async (gw: Gateway, k = key('live'), input: Record<string, unknown> = { prompt: 'x', duration_ms: 1500 }) =>
  (await call(gw.url, 'POST', MODEL_PATH, { key: k, body: { input } })).body.id as string;
const mint = async (gw: Gateway, predictions: string[], k = key('live')) => call(gw.url, 'POST', '/gateway/v1/tokens', { key: k, body: { predictions } });


describe('a prediction\'s event stream', () => {
  it('sends starting, processing and succeeded as they happen, then done, and closes; ids only grow', async () => {
    const gw = await gateway();
    const id = await create(gw);
    const st = await openStream(`${gw.url}/gateway/v1/predictions/${id}/events`, { authorization: `Bearer ${key('live')}` });
    expect(st.res.status).toBe(200);
    expect(st.res.headers.get('cache-control')).toMatch(/no-cache/);
    expect(st.res.headers.get('x-accel-buffering')).toBe('no');
    expect(await st.until((ev) => ev.some((e) => e.event === 'done'))).toBe(true);
    expect(statuses(st.events)).toEqual(['starting', 'processing', 'succeeded']);
    const last = st.events.at(-1)!;
    expect(last.event).toBe('done');
    expect(JSON.parse(last.data)).toEqual({ status: 'succeeded' });
    const ids = st.events.map((e) => Number(e.id));
    expect(ids).toEqual([...ids].sort((a, b) => a - b));
    // The final status carries the prediction as the gateway renders it.
    const final = JSON.parse(st.events.filter((e) => e.event === 'status').at(-1)!.data);
    expect(final.urls.get).toBe(`${gw.url}/replicate/v1/predictions/${id}`);
    expect(st.events.some((e) => e.event === 'output')).toBe(true);
    await st.until(() => false, 1000);
    expect(st.closed).toBe(true);
  });

  it('answers a stream opened after the end with the final state and done at once, and a resumed one with done only', async () => {
    const gw = await gateway();
    const id = await create(gw, key('live'), { prompt: 'x', duration_ms: 0 });
    const st = await openStream(`${gw.url}/gateway/v1/predictions/${id}/events`, { authorization: `Bearer ${key('live')}` });
    await st.until(() => false, 2000);
    expect(st.closed).toBe(true);
    expect(st.events[0]!.event).toBe('status');
    expect(JSON.parse(st.events[0]!.data).status).toBe('succeeded');
    expect(st.events.at(-1)!.event).toBe('done');
    const again = await openStream(`${gw.url}/gateway/v1/predictions/${id}/events`, { authorization: `Bearer ${key('live')}`, 'last-event-id': st.events.at(-1)!.id });
    await again.until(() => false, 2000);
    expect(again.events.map((e) => e.event)).toEqual(['done']);
  });

  it('resumes from Last-Event-ID without repeating what was sent', async () => {
    const gw = await gateway();
    const id = await create(gw, key('live'), { prompt: 'x', duration_ms: 2000 });
    const first = await openStream(`${gw.url}/gateway/v1/predictions/${id}/events`, { authorization: `Bearer ${key('live')}` });
    await first.until((ev) => ev.length > 0);
    await first.close();
    const lastId = first.events.at(-1)!.id;
    const second = await openStream(`${gw.url}/gateway/v1/predictions/${id}/events`, { authorization: `Bearer ${key('live')}`, 'last-event-id': lastId });
    expect(await second.until((ev) => ev.some((e) => e.event === 'done'))).toBe(true);
    expect(second.events.every((e) => Number(e.id) > Number(lastId))).toBe(true);
    expect(statuses([...first.events, ...second.events]).at(-1)).toBe('succeeded');
  });

  it('is for the owner only: another tenant gets 404, nobody 401', async () => {
    const gw = await gateway();
    const id = await create(gw);
    expectProblem(await call(gw.url, 'GET', `/gateway/v1/predictions/${id}/events`, { key: key('other') }), 404);
    expectProblem(await call(gw.url, 'GET', `/gateway/v1/predictions/${id}/events`), 401);
    expectProblem(await call(gw.url, 'GET', `/gateway/v1/predictions/nope/events`, { key: key('live') }), 404);
  });
});

describe('a token for one prediction', () => {
  it('reads, cancels and watches that prediction, as ?token= on the stream only, and can do nothing else', async () => {
    const gw = await gateway();
    const id = await create(gw, key('live'), { prompt: 'x', duration_ms: 60_000 });
    const mine = await create(gw, key('live'), { prompt: 'y', duration_ms: 60_000 });
    const theirs = await create(gw, key('other'));
    // Someone else's prediction cannot be named in a token.
    expectProblem(await mint(gw, [theirs]), 404);
    const minted = await mint(gw, [id]);
    expect(minted.status).toBe(201);
    expect(minted.body.predictions).toEqual([id]);
    const token = minted.body.token as string;

    expect((await call(gw.url, 'GET', `/replicate/v1/predictions/${id}`, { key: token })).status).toBe(200);
    const st = await openStream(`${gw.url}/gateway/v1/predictions/${id}/events?token=${token}`);
    expect(st.res.status).toBe(200);
    await st.until((ev) => ev.length > 0);
    expect(statuses(st.events)[0]).toBe('starting');
    // Everything else is refused: another prediction of the tenant, creates, lists, uploads, minting.
    expectProblem(await call(gw.url, 'GET', `/replicate/v1/predictions/${mine}`, { key: token }), 403, /its own predictions only/);
    expectProblem(await call(gw.url, 'POST', MODEL_PATH, { key: token, body: { input: { prompt: 'no' } } }), 403);
    expectProblem(await call(gw.url, 'GET', `/gateway/v1/predictions/${mine}/events?token=${token}`), 403);
    // ?token= is taken by the stream route alone.
    expectProblem(await call(gw.url, 'GET', `/replicate/v1/predictions/${id}?token=${token}`), 401);
    const canceled = await call(gw.url, 'POST', `/replicate/v1/predictions/${id}/cancel`, { key: token });
    expect(canceled.body.status).toBe('canceled');
    expect(await st.until((ev) => ev.some((e) => e.event === 'done'))).toBe(true);
    expect(statuses(st.events).at(-1)).toBe('canceled');
    // The token never reaches a log line.
    await new Promise((r) => setTimeout(r, 200));
    expect(gw.logs.join('\n')).not.toContain(token);
    expect(gw.logs.join('\n')).toContain('token=[redacted]');
  });
});

describe('fan-out and bounds', () => {
  it('shows on replica B what replica A observed, and many watchers add no upstream read', async () => {
    const prefix = `streams:${randomUUID()}:`;
    const a = await gateway({}, prefix);
    const b = await gateway({}, prefix);
    const id = await create(a, key('live'), { prompt: 'x', duration_ms: 1500 });
    const streams = await Promise.all(Array.from({ length: 40 }, (_, i) => openStream(`${(i % 2 ? a : b).url}/gateway/v1/predictions/${id}/events`, { authorization: `Bearer ${key('live')}` })));
    for (const st of streams) expect(await st.until((ev) => ev.some((e) => e.event === 'done'))).toBe(true);
    for (const st of streams) expect(statuses(st.events).at(-1)).toBe('succeeded');
    // Reads of it are the watchers' (every WATCH_MIN_MS while streamed), not one per stream.
    const reads = upstreamCalls(s.sim, new RegExp(`/predictions/${id}$`)).filter((r) => r.method === 'GET');
    expect(reads.length).toBeLessThan(streams.length);
    expect(reads.every(byWatcher)).toBe(true);
  });

  it('refuses a stream past MAX_STREAMS_PER_TENANT with 429, and a closed stream frees its slot', async () => {
    const gw = await gateway({ MAX_STREAMS_PER_TENANT: '2' });
    const id = await create(gw, key('live'), { prompt: 'x', duration_ms: 60_000 });
    const url = `${gw.url}/gateway/v1/predictions/${id}/events`;
    const auth = { authorization: `Bearer ${key('live')}` };
    const one = await openStream(url, auth);
    const two = await openStream(url, auth);
    expect([one.res.status, two.res.status]).toEqual([200, 200]);
    const three = await call(gw.url, 'GET', `/gateway/v1/predictions/${id}/events`, { key: key('live') });
    expectProblem(three, 429, /MAX_STREAMS_PER_TENANT/, true);
    // Another tenant is not affected.
    const theirs = await create(gw, key('other'), { prompt: 'x', duration_ms: 60_000 });
    const other = await openStream(`${gw.url}/gateway/v1/predictions/${theirs}/events`, { authorization: `Bearer ${key('other')}` });
    expect(other.res.status).toBe(200);
    await one.close();
    await new Promise((r) => setTimeout(r, 200));
    const four = await openStream(url, auth);
    expect(four.res.status).toBe(200);
    await Promise.all([two.close(), four.close(), other.close()]);
  });

  it('ends open streams when the gateway shuts down, so it can stop', async () => {
    const gw = await startGateway({ sim: s, tenants: TENANTS, env: ENV });
    const id = await create(gw, key('live'), { prompt: 'x', duration_ms: 60_000 });
    const st = await openStream(`${gw.url}/gateway/v1/predictions/${id}/events`, { authorization: `Bearer ${key('live')}` });
    await st.until((ev) => ev.length > 0);
    const t0 = Date.now();
    await gw.close();
    expect(Date.now() - t0).toBeLessThan(5000);
    await st.until(() => false, 2000);
    expect(st.closed).toBe(true);
  });
});

describe('in a real browser', () => {
  const KEY = key('page');
  let gw: Gateway;
  let backend: DemoBackend;
  let browser: Browser;
  let origin: string;

  beforeAll(async () => {
    const port = await freePort();
    origin = `http://127.0.0.1:${port}`;
    gw = await startGateway({ sim: s, tenants: [{ id: 'page', keys: [KEY], rateLimit: lots, allowedOrigins: [origin] }], env: ENV });
    backend = await startDemoBackend({ port, gatewayUrl: gw.url, tenantKey: KEY, watchMs: 3000 });
    browser = await launchChromium();
  });
  afterAll(async () => {
    await browser?.close();
    await backend?.close();
    await gw?.close();
  });

  it('follows a prediction with EventSource and a one-prediction token, and resumes after a dropped connection', async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    const consoleLines: string[] = [];
    page.on('console', (m) => consoleLines.push(m.text()));
    try {
      await page.goto(`${origin}/events.html`, { timeout: 5000 });
      await page.waitForFunction(() => document.getElementById('events')!.textContent!.includes('starting'), undefined, { timeout: 8000 });
      // The connection drops (a proxy restarts, the network blips): the browser reconnects with Last-Event-ID.
      gw.app.server.closeAllConnections();
      await page.waitForSelector('#status[data-state="done"], #status[data-state="error"]', { timeout: 15_000 });
      expect(await page.locator('#status').innerText(), consoleLines.join('\n')).toBe('succeeded');
      expect(Number(await page.locator('#opens').innerText())).toBeGreaterThanOrEqual(2);
      const log = JSON.parse(await page.locator('#events').innerText()) as { type: string; id: string; status?: string }[];
      const seen = log.filter((e) => e.type === 'status').map((e) => e.status);
      expect(seen[0]).toBe('starting');
      expect(seen).toContain('processing');
      expect(seen.at(-1)).toBe('succeeded');
      // Nothing repeated across the reconnection: every event id is newer than the one before.
      const ids = log.filter((e) => e.type === 'status').map((e) => Number(e.id));
      expect(new Set(ids).size).toBe(ids.length);
      expect(ids).toEqual([...ids].sort((x, y) => x - y));
    } finally {
      await context.close();
    }
  });
});
