// Exercises the FuhuAPI simulator over real HTTP: auth, lifecycle, cancel, sync mode, faults and request recording,
// and its misbehaving-upstream modes: another id, an echoed key, a huge body, a hang that picks its requests by body
// or header, faults that last until cleared, and creates held back by their input.
import { setTimeout as delay } from 'node:timers/promises';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { HUGE_BODY_CHUNK_BYTES, HugePredictionBody } from '../src/simulator/answers.js';
import { createSimulator } from '../src/simulator/simulator.js';
import type { Prediction, Simulator } from '../src/simulator/simulator.js';

const KEY = 'test-key';
const auth = { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' };

let sim: Simulator;
let base: string;

beforeAll(async () => {
  sim = createSimulator({ apiKey: KEY, stepMs: 40 });
  base = await sim.listen();
});

afterAll(async () => {
  await sim.close();
});

beforeEach(() => {
  sim.clearFaults();
  sim.clearRequests();
});

async function call(method: 'GET' | 'POST', path: string, body?: unknown, headers: Record<string, string> = {}) {
  const res = await request(`${base}${path}`, {
    method,
    headers: { ...auth, ...headers },
    body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await res.body.text();
  return { status: res.statusCode, headers: res.headers, json: text === '' ? undefined : (JSON.parse(text) as unknown) };
}

async function createPrediction(input: Record<string, unknown>, headers: Record<string, string> = {}) {
  return call('POST', '/models/black-forest-labs/flux-schnell/predictions', { input }, headers);
}

describe('simulator', () => {
  it('rejects a missing or wrong key with a Replicate-style 401', async () => {
    const res = await request(`${base}/predictions/abc`);
    expect(res.statusCode).toBe(401);
    expect(await res.body.json()).toEqual({ title: 'Unauthenticated', detail: 'You did not pass an authentication token', status: 401 });
    const wrong = await call('GET', '/predictions/abc', undefined, { authorization: 'Bearer nope' });
    expect(wrong.status).toBe(401);
  });

  it('creates a prediction that goes starting -> processing -> succeeded', async () => {
    const created = await createPrediction({ prompt: 'a cat' });
    expect(created.status).toBe(201);
    const p = created.json as Prediction;
    expect(p.id).toMatch(/^[a-z2-7]{26}$/);
    expect(p).toMatchObject({ model: 'black-forest-labs/flux-schnell', version: 'hidden', status: 'starting', output: null, started_at: null });
    expect(p.urls.get).toBe(`https://api.replicate.com/v1/predictions/${p.id}`);

    await delay(55);
    const mid = (await call('GET', `/predictions/${p.id}`)).json as Prediction;
    expect(mid.status).toBe('processing');
    expect(mid.started_at).not.toBeNull();

    await delay(40);
    const done = (await call('GET', `/predictions/${p.id}`)).json as Prediction;
    expect(done.status).toBe('succeeded');
    expect(done.output).toEqual([`https://replicate.delivery/xezq/${p.id}/out-0.webp`]);
    expect(done.metrics.predict_time).toBeGreaterThan(0);
    expect(done.completed_at).not.toBeNull();

    expect((await call('GET', '/predictions/nope')).status).toBe(404);
  });

  it('creates by version, validates input and reproduces new-api errors', async () => {
    const byVersion = await call('POST', '/predictions', { version: 'acme/model:abc123', input: { duration_ms: 0, fail: true } });
    expect(byVersion.json).toMatchObject({ model: 'acme/model', version: 'abc123', status: 'failed', error: 'simulated failure' });
    const bare = await call('POST', '/predictions', { version: 'abc123', input: { duration_ms: 0, abort: true } });
    expect(bare.json).toMatchObject({ model: 'unknown/unknown', status: 'aborted', started_at: null });

    const noInput = await call('POST', '/models/a/b/predictions', {});
    expect(noInput.status).toBe(422);
    expect(noInput.json).toMatchObject({ title: 'Invalid input', status: 422 });
    expect((await call('POST', '/models/a/b/predictions', { version: 'x', input: {} })).status).toBe(422);

    const quota = await call('POST', '/models/sim/quota-exceeded/predictions', { input: {} });
    expect(quota.status).toBe(403);
    expect(quota.json).toEqual({ error: { message: 'user quota is not enough', type: 'new_api_error', code: 'insufficient_user_quota' } });
    expect((await call('POST', '/models/sim/no-channel/predictions', { input: {} })).status).toBe(503);
  });

  it('cancels with an empty JSON body and leaves terminal predictions alone', async () => {
    const p = (await createPrediction({ prompt: 'x', duration_ms: 10_000 })).json as Prediction;
    const canceled = await call('POST', `/predictions/${p.id}/cancel`);
    expect(canceled.status).toBe(200);
    expect(canceled.json).toMatchObject({ id: p.id, status: 'canceled' });
    expect((canceled.json as Prediction).completed_at).not.toBeNull();

    const done = (await createPrediction({ duration_ms: 0 })).json as Prediction;
    const again = await call('POST', `/predictions/${done.id}/cancel`, '');
    expect(again.json).toMatchObject({ status: 'succeeded' });
  });

  it('holds a Prefer: wait create until terminal, and setStatus wakes it early', async () => {
    const t0 = Date.now();
    const waited = await createPrediction({ prompt: 'x' }, { prefer: 'wait=5' });
    expect(waited.status).toBe(201);
    expect((waited.json as Prediction).status).toBe('succeeded');
    expect(Date.now() - t0).toBeGreaterThanOrEqual(70);

    const pending = createPrediction({ prompt: 'x', duration_ms: 60_000 }, { prefer: 'wait' });
    await delay(30);
    const [id] = [...sim.predictions.keys()].slice(-1);
    sim.setStatus(id, 'failed');
    expect(((await pending).json as Prediction).status).toBe('failed');
    expect(sim.predictions.get(id)?.status).toBe('failed');
  });

  it('records every request, including faulted ones, with headers and body', async () => {
    sim.injectFault({ kind: 'status', status: 429 }, { match: (m, path) => m === 'POST' && path.endsWith('/predictions') });
    const limited = await createPrediction({ prompt: 'r' });
    expect(limited.status).toBe(429);
    expect(limited.json).toEqual({ error: { message: 'upstream load saturated', type: 'new_api_error', code: null } });
    const ok = await createPrediction({ prompt: 'r' });
    expect(ok.status).toBe(201);
    expect(sim.requests).toHaveLength(2);
    expect(sim.requests[0]).toMatchObject({ method: 'POST', url: '/replicate/v1/models/black-forest-labs/flux-schnell/predictions', body: { input: { prompt: 'r' } } });
    expect(sim.requests[0].headers.authorization).toBe(`Bearer ${KEY}`);
  });

  it('applies status faults with custom body/headers, times and FIFO order', async () => {
    sim.injectFault({ kind: 'status', status: 503, body: { error: 'custom' }, headers: { 'retry-after': '1' } }, { times: 2 });
    sim.injectFault({ kind: 'status', status: 500 });
    const a = await call('GET', '/predictions/x');
    const b = await call('GET', '/predictions/x');
    const c = await call('GET', '/predictions/x');
    const d = await call('GET', '/predictions/x');
    expect([a.status, b.status, c.status, d.status]).toEqual([503, 503, 500, 404]);
    expect(a.json).toEqual({ error: 'custom' });
    expect(a.headers['retry-after']).toBe('1');
  });

  it('delays, sends a slow body, resets and hangs', async () => {
    sim.injectFault({ kind: 'delay', delayMs: 60 });
    let t0 = Date.now();
    expect((await call('GET', '/predictions/x')).status).toBe(404);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(55);

    sim.injectFault({ kind: 'slowBody', delayMs: 80 });
    t0 = Date.now();
    const res = await request(`${base}/predictions/x`, { headers: auth });
    const headersAt = Date.now() - t0;
    expect(res.statusCode).toBe(404);
    const body = await res.body.json();
    expect(body).toMatchObject({ status: 404 });
    expect(headersAt).toBeLessThan(60);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(75);

    sim.injectFault({ kind: 'reset' });
    await expect(request(`${base}/predictions/x`, { headers: auth })).rejects.toThrow();

    sim.injectFault({ kind: 'hang' });
    // AbortSignal rather than headersTimeout: undici's coarse timers would add ~500 ms
    t0 = Date.now();
    await expect(request(`${base}/predictions/x`, { headers: auth, signal: AbortSignal.timeout(100) })).rejects.toThrow();
    expect(Date.now() - t0).toBeGreaterThanOrEqual(95);
    expect(sim.requests).toHaveLength(4);
  });

  it('with latencyMs, answers every API request only after that delay, as a distant upstream would', async () => {
    const slow = createSimulator({ apiKey: KEY, stepMs: 40, latencyMs: 120 });
    const url = await slow.listen();
    try {
      const timed = async (path: string, init: { method?: 'POST'; body?: string } = {}) => {
        const t0 = Date.now();
        const res = await request(`${url}${path}`, { headers: auth, ...init });
        await res.body.dump();
        return { status: res.statusCode, ms: Date.now() - t0 };
      };
      const [get, create] = await Promise.all([
        timed('/predictions/x'),
        timed('/models/black-forest-labs/flux-schnell/predictions', { method: 'POST', body: '{"input":{}}' }),
      ]);
      expect([get.status, create.status]).toEqual([404, 201]);
      expect(get.ms).toBeGreaterThanOrEqual(115);
      expect(create.ms).toBeGreaterThanOrEqual(115);
    } finally {
      await slow.close();
    }
  });

  it('closes promptly with hung and waiting requests in flight', async () => {
    const other = createSimulator({ apiKey: KEY, stepMs: 60_000 });
    const url = await other.listen();
    other.injectFault({ kind: 'hang' });
    const hung = request(`${url}/predictions/x`, { headers: auth }).catch((e: unknown) => e);
    const waiting = request(`${url}/models/a/b/predictions`, { method: 'POST', headers: { ...auth, prefer: 'wait' }, body: '{"input":{}}' }).catch((e: unknown) => e);
    await delay(30);
    const t0 = Date.now();
    await other.close();
    expect(Date.now() - t0).toBeLessThan(500);
    expect(await hung).toBeInstanceOf(Error);
    expect(await waiting).toBeInstanceOf(Error);
  });
});

describe('misbehaving modes', () => {
  const MODEL_PATH = '/models/black-forest-labs/flux-schnell/predictions';
  // Helpers of their own (they shadow the ones above): fetch, which these modes need for streaming and aborting,
  // and answers with the text as well as the JSON.

  interface Answer {
    status: number;
    headers: Headers;
    text: string;
    json: any;
  }

  async function call(method: 'GET' | 'POST', path: string, body?: unknown, init: { headers?: Record<string, string>; key?: string; signal?: AbortSignal; url?: string } = {}): Promise<Answer> {
    const res = await fetch(`${init.url ?? base}${path}`, {
      method,
      headers: { authorization: `Bearer ${init.key ?? KEY}`, 'content-type': 'application/json', ...init.headers },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: init.signal,
    });
    const text = await res.text();
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    return { status: res.status, headers: res.headers, text, json };
  }

  async function create(input: Record<string, unknown>, init?: Parameters<typeof call>[3]): Promise<Prediction> {
    const r = await call('POST', MODEL_PATH, { input }, init);
    expect(r.status).toBe(201);
    return r.json as Prediction;
  }

  /** A copy of the stored prediction, refreshed, to compare with later. */
  function stored(id: string): Prediction {
    const p = sim.predictions.get(id);
    if (p === undefined) throw new Error(`no prediction ${id}`);
    return structuredClone(p);
  }

  describe('replaceId', () => {
    it('answers a get of any id with the other prediction, refreshed', async () => {
      const mine = await create({ duration_ms: 60_000 });
      const other = await create({ duration_ms: 30 });
      await delay(45); // `other` is due to succeed; nothing has read it since
      sim.injectFault({ kind: 'replaceId', id: other.id });
      const r = await call('GET', `/predictions/${mine.id}`);
      expect(r.status).toBe(200);
      expect(r.json).toMatchObject({ id: other.id, status: 'succeeded' });
      // one use only
      expect((await call('GET', `/predictions/${mine.id}`)).json).toMatchObject({ id: mine.id });
    });

    it('answers a cancel with the other prediction and cancels neither', async () => {
      const mine = await create({ duration_ms: 60_000 });
      const other = await create({ duration_ms: 60_000 });
      sim.injectFault({ kind: 'replaceId', id: other.id });
      const r = await call('POST', `/predictions/${mine.id}/cancel`);
      expect(r.status).toBe(200);
      expect(r.json).toMatchObject({ id: other.id });
      expect(r.json.status).not.toBe('canceled');
      expect(sim.predictions.get(mine.id)?.status).not.toBe('canceled');
      expect(sim.predictions.get(other.id)?.status).not.toBe('canceled');
    });

    it('answers a create with the existing prediction, unchanged, and creates nothing', async () => {
      const other = await create({ prompt: 'someone else', duration_ms: 0 });
      const before = sim.predictions.size;
      sim.injectFault({ kind: 'replaceId', id: other.id });
      const r = await call('POST', MODEL_PATH, { input: { prompt: 'mine' } });
      expect(r.status).toBe(201);
      expect(r.json).toEqual(stored(other.id));
      expect(r.json.input).toEqual({ prompt: 'someone else', duration_ms: 0 });
      expect(sim.predictions.size).toBe(before);
      // by version too
      sim.injectFault({ kind: 'replaceId', id: other.id });
      const byVersion = await call('POST', '/predictions', { version: 'acme/model:abc', input: {} });
      expect([byVersion.status, byVersion.json.id]).toEqual([201, other.id]);
      expect(sim.predictions.size).toBe(before);
    });

    it('404s for an unknown id and still wants the key', async () => {
      const mine = await create({});
      sim.injectFault({ kind: 'replaceId', id: 'nosuchpredictionid' }, { times: 2 });
      expect((await call('GET', `/predictions/${mine.id}`)).status).toBe(404);
      expect((await call('POST', MODEL_PATH, { input: {} })).status).toBe(404);
      sim.injectFault({ kind: 'replaceId', id: mine.id });
      expect((await call('GET', `/predictions/${mine.id}`, undefined, { key: 'wrong' })).status).toBe(401);
    });
  });

  describe('embed', () => {
    it('plants the text in logs, error and urls.stream of the answer only', async () => {
      const p = await create({ duration_ms: 0 });
      const before = stored(p.id);
      sim.injectFault({ kind: 'embed', text: 'sk-upstream-secret' });
      const r = await call('GET', `/predictions/${p.id}`);
      expect(r.status).toBe(200);
      expect(r.json.id).toBe(p.id);
      expect(r.json.logs).toBe(`${before.logs}upstream key: sk-upstream-secret\n`);
      expect(r.json.error).toContain('sk-upstream-secret');
      expect(r.json.urls.stream).toBe('https://stream.example/sk-upstream-secret');
      // untouched fields and the stored prediction
      expect(r.json.output).toEqual(before.output);
      expect(r.json.urls.web).toBe(before.urls.web);
      expect(stored(p.id)).toEqual(before);
      expect(Number(r.headers.get('content-length'))).toBe(Buffer.byteLength(r.text));
    });

    it('works on creates, lists and cancels, with chosen fields', async () => {
      sim.injectFault({ kind: 'embed', text: 'KEY', fields: ['output', 'urls.web'] });
      const created = await call('POST', MODEL_PATH, { input: { duration_ms: 0 } });
      expect(created.status).toBe(201);
      const outputUrl = `https://replicate.delivery/xezq/${created.json.id}/out-0.webp`;
      expect(created.json.output).toEqual([outputUrl, 'KEY']);
      expect(created.json.urls.web).toBe('https://web.example/KEY');
      expect(created.json.logs).not.toContain('KEY');
      expect(stored(created.json.id).output).toEqual([outputUrl]);

      sim.injectFault({ kind: 'embed', text: 'KEY', fields: ['output'] });
      const p = (await call('POST', MODEL_PATH, { input: { duration_ms: 60_000 } })).json as Prediction;
      expect(p.output).toEqual(['KEY']); // a null output becomes a list of the text
      expect(stored(p.id).output).toBeNull();

      sim.injectFault({ kind: 'embed', text: 'LISTED' });
      const list = await call('GET', '/predictions');
      expect(list.json.results.length).toBeGreaterThan(1);
      for (const item of list.json.results) expect(item.urls.stream).toBe('https://stream.example/LISTED');

      sim.injectFault({ kind: 'embed', text: 'CANCELED' });
      const canceled = await call('POST', `/predictions/${p.id}/cancel`);
      expect(canceled.json).toMatchObject({ id: p.id, status: 'canceled' });
      expect(canceled.json.logs).toContain('upstream key: CANCELED');
      expect(stored(p.id).logs).not.toContain('CANCELED');
    });

    it('leaves error answers alone', async () => {
      sim.injectFault({ kind: 'embed', text: 'KEY' });
      const r = await call('GET', '/predictions/nope');
      expect(r.status).toBe(404);
      expect(r.json).toEqual({ title: 'Not found', detail: 'The requested resource could not be found.', status: 404 });
    });
  });

  describe('hugeBody', () => {
    const MB = 1024 * 1024;

    it('sends a 20 MB prediction that arrives complete and parses', async () => {
      const p = await create({ duration_ms: 0 });
      sim.injectFault({ kind: 'hugeBody', bytes: 20 * MB });
      const r = await call('GET', `/predictions/${p.id}`);
      expect(r.status).toBe(200);
      expect(r.headers.get('content-type')).toContain('application/json');
      const length = Number(r.headers.get('content-length'));
      expect(length).toBeGreaterThanOrEqual(20 * MB);
      expect(length).toBeLessThan(20 * MB + 1024);
      expect(Buffer.byteLength(r.text)).toBe(length);
      const { logs, ...rest } = r.json as Prediction;
      const { logs: storedLogs, ...storedRest } = stored(p.id);
      expect(rest).toEqual(storedRest);
      expect(logs.startsWith(storedLogs)).toBe(true);
      expect(logs.length).toBeGreaterThan(20 * MB - 1024);
    });

    it('answers a create with 201 and an unstored prediction, or the given status', async () => {
      const before = sim.predictions.size;
      sim.injectFault({ kind: 'hugeBody', bytes: 100_000 });
      const created = await call('POST', MODEL_PATH, { input: { prompt: 'big' } });
      expect(created.status).toBe(201);
      expect(created.json).toMatchObject({ model: 'black-forest-labs/flux-schnell', status: 'starting', input: { prompt: 'big' } });
      expect(created.text.length).toBeGreaterThanOrEqual(100_000);
      expect(sim.predictions.size).toBe(before);

      sim.injectFault({ kind: 'hugeBody', bytes: 10, status: 502 });
      const small = await call('GET', '/predictions/whatever');
      expect(small.status).toBe(502);
      expect(small.json).toMatchObject({ status: 'starting' }); // bytes is a minimum: the object itself is larger
    });

    it('streams 100 MB in 64 KiB chunks without building the body', async () => {
      const body = new HugePredictionBody(stored((await create({ duration_ms: 0 })).id), 100 * MB);
      let total = 0;
      let largest = 0;
      // 'data' sees each pushed chunk (an async iterator would join buffered ones)
      body.on('data', (chunk: Buffer) => {
        total += chunk.length;
        largest = Math.max(largest, chunk.length);
      });
      await new Promise((resolve) => body.once('end', resolve));
      expect(total).toBe(body.length);
      expect(largest).toBeLessThanOrEqual(HUGE_BODY_CHUNK_BYTES);

      sim.injectFault({ kind: 'hugeBody', bytes: 100 * MB });
      const res = await fetch(`${base}/predictions/x`, { headers: { authorization: `Bearer ${KEY}` } });
      let received = 0;
      for await (const chunk of res.body!) received += chunk.length;
      expect(received).toBe(Number(res.headers.get('content-length')));
      expect(received).toBeGreaterThanOrEqual(100 * MB);
    });

    it('stays healthy when the client aborts after 1 MB', async () => {
      sim.injectFault({ kind: 'hugeBody', bytes: 100 * MB }, { times: 3 });
      for (let i = 0; i < 3; i++) {
        const ac = new AbortController();
        const res = await fetch(`${base}/predictions/x`, { headers: { authorization: `Bearer ${KEY}` }, signal: ac.signal });
        const reader = res.body!.getReader();
        let received = 0;
        while (received < MB) {
          const { value, done } = await reader.read();
          if (done) break;
          received += value.length;
        }
        ac.abort();
        await reader.cancel().catch(() => undefined);
        expect(received).toBeGreaterThanOrEqual(MB);
      }
      const t0 = Date.now();
      const next = await create({});
      expect(next.id).toMatch(/^[a-z2-7]{26}$/);
      expect(Date.now() - t0).toBeLessThan(1000);
    });

    it('rejects a size that is not a finite number', () => {
      expect(() => sim.injectFault({ kind: 'hugeBody', bytes: Number.NaN })).toThrow(RangeError);
      expect(() => sim.injectFault({ kind: 'hugeBody', bytes: Infinity })).toThrow(RangeError);
    });
  });

  describe('match on the request', () => {
    it("hangs only one tenant's creates, picked by body, until cleared", async () => {
      sim.injectFault({ kind: 'hang' }, { match: (_m, _p, req) => (req.body as { input?: { tenant?: string } } | undefined)?.input?.tenant === 'a', times: Infinity });
      for (let i = 0; i < 2; i++) {
        await expect(call('POST', MODEL_PATH, { input: { tenant: 'a' } }, { signal: AbortSignal.timeout(150) })).rejects.toThrow();
        expect((await call('POST', MODEL_PATH, { input: { tenant: 'b' } })).status).toBe(201);
        expect((await call('GET', '/predictions/x')).status).toBe(404); // a GET has no body
      }
      sim.clearFaults();
      expect((await call('POST', MODEL_PATH, { input: { tenant: 'a' } })).status).toBe(201);
    });

    it('matches on a header, and passes the parsed body', async () => {
      const seen: unknown[] = [];
      sim.injectFault({ kind: 'status', status: 503 }, {
        match: (method, path, req) => {
          seen.push({ method, path, body: req.body });
          return req.headers['x-tenant'] === 'a';
        },
        times: Infinity,
      });
      expect((await call('POST', `${MODEL_PATH}?x=1`, { input: { n: 1 } }, { headers: { 'x-tenant': 'a' } })).status).toBe(503);
      expect((await call('POST', MODEL_PATH, { input: { n: 2 } }, { headers: { 'x-tenant': 'b' } })).status).toBe(201);
      expect(seen).toEqual([
        { method: 'POST', path: `/replicate/v1${MODEL_PATH}`, body: { input: { n: 1 } } },
        { method: 'POST', path: `/replicate/v1${MODEL_PATH}`, body: { input: { n: 2 } } },
      ]);
    });
  });

  describe('times', () => {
    it('Infinity applies until clearFaults(), and later faults queue behind it', async () => {
      sim.injectFault({ kind: 'status', status: 503 }, { times: Infinity });
      sim.injectFault({ kind: 'status', status: 500 });
      const statuses: number[] = [];
      for (let i = 0; i < 6; i++) statuses.push((await call('GET', '/predictions/x')).status);
      expect(statuses).toEqual([503, 503, 503, 503, 503, 503]);
      sim.clearFaults();
      expect((await call('GET', '/predictions/x')).status).toBe(404);
    });

    it('rejects counts that are not positive integers', () => {
      for (const times of [0, -1, 1.5, Number.NaN]) {
        expect(() => sim.injectFault({ kind: 'hang' }, { times })).toThrow(RangeError);
      }
      expect(() => sim.injectFault({ kind: 'hang' }, { times: 2 })).not.toThrow();
    });
  });

  describe('hold_ms', () => {
    it('holds that one create back, with the prediction already stored', async () => {
      const t0 = Date.now();
      let answered = false;
      const held = create({ prompt: 'slow', hold_ms: 400, duration_ms: 60_000 }).finally(() => {
        answered = true;
      });
      await delay(50);
      const id = [...sim.predictions.keys()].at(-1)!;
      expect(sim.predictions.get(id)?.input).toMatchObject({ prompt: 'slow' });
      // other requests are not held
      await create({ prompt: 'fast' });
      expect(answered).toBe(false);
      const p = await held;
      expect(p.id).toBe(id);
      expect(Date.now() - t0).toBeGreaterThanOrEqual(395);
    });

    it('answers the state as of when it leaves, after the longer of hold_ms and Prefer: wait', async () => {
      const p = await create({ hold_ms: 120, duration_ms: 60 });
      expect(p.status).toBe('succeeded');
      for (const input of [{ hold_ms: 200, duration_ms: 60 }, { hold_ms: 50, duration_ms: 200 }]) {
        const t0 = Date.now();
        const waited = await create(input, { headers: { prefer: 'wait=5' } });
        expect(waited.status).toBe('succeeded');
        expect(Date.now() - t0).toBeGreaterThanOrEqual(195);
      }
    });

    it('ignores values that are not positive numbers', async () => {
      for (const hold_ms of ['2000', -5, null, true]) {
        const t0 = Date.now();
        await create({ hold_ms });
        expect(Date.now() - t0).toBeLessThan(1000);
      }
    });

    it('survives a client leaving while held', async () => {
      await expect(create({ hold_ms: 300 }, { signal: AbortSignal.timeout(50) })).rejects.toThrow();
      expect((await call('GET', '/predictions/x')).status).toBe(404);
      await delay(300); // the hold ends with nobody to answer
      expect((await call('GET', '/predictions/x')).status).toBe(404);
    });
  });

  describe('close', () => {
    it('ends held creates, hangs, delays and huge bodies promptly and drops endless faults', async () => {
      const other = createSimulator({ apiKey: KEY, stepMs: 60_000 });
      const url = await other.listen(0, '127.0.0.1');
      other.injectFault({ kind: 'hugeBody', bytes: 100 * 1024 * 1024 }, { match: (_m, path) => path.endsWith('/huge') });
      other.injectFault({ kind: 'hang' }, { match: (m) => m === 'GET', times: Infinity });
      other.injectFault({ kind: 'delay', delayMs: 60_000 }, { match: (_m, path) => path.endsWith('/cancel'), times: Infinity });
      const held = create({ hold_ms: 60_000 }, { url }).catch((e: unknown) => e);
      const hung = call('GET', '/predictions/x', undefined, { url }).catch((e: unknown) => e);
      const delayed = call('POST', '/predictions/x/cancel', undefined, { url }).catch((e: unknown) => e);
      const huge = await fetch(`${url}/predictions/huge`, { headers: { authorization: `Bearer ${KEY}` } });
      const reader = huge.body!.getReader();
      expect((await reader.read()).done).toBe(false);
      await delay(50);
      const t0 = Date.now();
      await other.close();
      expect(Date.now() - t0).toBeLessThan(500);
      expect(await held).toBeInstanceOf(Error);
      expect(await hung).toBeInstanceOf(Error);
      expect(await delayed).toBeInstanceOf(Error);
      await expect((async () => {
        for (;;) if ((await reader.read()).done) return 'complete';
      })()).rejects.toThrow();
    });
  });
});
