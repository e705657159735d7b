// Exercises the FuhuAPI simulator over real HTTP: auth, lifecycle, cancel, sync mode, faults and request recording.
import { setTimeout as delay } from 'node:timers/promises';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { request } from 'undici';
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
