// The simulator's misbehaving-upstream modes, over real HTTP: a hang that picks its requests by body or header, and
// faults that last until cleared.
import { setTimeout as delay } from 'node:timers/promises';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createSimulator } from '../src/simulator/simulator.js';
import type { Prediction, Simulator } from '../src/simulator/simulator.js';

const KEY = 'test-key';
const MODEL_PATH = '/models/black-forest-labs/flux-schnell/predictions';

let sim: Simulator;
let base: string;

beforeAll(async () => {
  sim = createSimulator({ apiKey: KEY, stepMs: 40 });
  base = await sim.listen(0, '127.0.0.1');
});

afterAll(async () => {
  await sim.close();
});

beforeEach(() => {
  sim.clearFaults();
  sim.clearRequests();
});

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
