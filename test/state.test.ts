// Issue 24: each prediction stored once and small. A gateway file URL in the input stays that URL in every answer
// and stored copy (the upstream got the bytes), so a prediction with a file input costs what one without it costs,
// in Redis and in list answers; and every key the gateway writes expires or belongs to a named bounded set.
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { KEY_A, MODEL_PATH, type Gateway, type SimHandle, call, startGateway, startSimulator, upstreamCalls, waitFor } from './helpers/stack.js';

const TERMINAL = new Set(['succeeded', 'failed', 'canceled', 'aborted']);
const MB = 1024 * 1024;

async function upload(base: string, bytes: Buffer): Promise<{ id: string; url: string }> {
  const form = new FormData();
  form.append('content', new Blob([new Uint8Array(bytes)], { type: 'image/png' }), 'in.png');
  const res = await fetch(`${base}/replicate/v1/files`, { method: 'POST', body: form, headers: { authorization: `Bearer ${KEY_A}` } });
  expect(res.status).toBe(201);
  const body = (await res.json()) as { id: string; urls: { get: string } };
  return { id: body.id, url: body.urls.get };
}

async function untilEnded(base: string, id: string): Promise<Record<string, any>> {
  let last: Record<string, any> = {};
  await waitFor(async () => {
    last = (await call(base, 'GET', `/replicate/v1/predictions/${id}`, { key: KEY_A })).body;
    return TERMINAL.has(last.status);
  }, 15_000, `prediction ${id} to end`);
  return last;
}

/** Every key of the gateway (its prefix) that names this prediction, and their MEMORY USAGE summed. */
async function bytesOf(redis: Redis, prefix: string, id: string): Promise<{ bytes: number; keys: string[] }> {
  const found: string[] = [];
  let cursor = '0';
  do {
    const [next, batch] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
    cursor = next;
    found.push(...batch.filter((k) => k.includes(id)));
  } while (cursor !== '0');
  let bytes = 0;
  for (const k of found) bytes += Number(await redis.call('MEMORY', 'USAGE', k, 'SAMPLES', '0'));
  return { bytes, keys: found };
}

describe('a prediction with a file input', () => {
  let s: SimHandle;
  let gw: Gateway;
  let redis: Redis;

  beforeAll(async () => {
    s = await startSimulator(50);
    gw = await startGateway({ sim: s, env: { DEFAULT_RATE_LIMIT_MAX: '100000' } });
    redis = new Redis(inject('redisUrl'));
  });
  afterAll(async () => {
    redis.disconnect();
    await gw.close();
    await s.sim.close();
  });

  it('answers and stores its gateway file URL, not the 1 MB the upstream got: about what a create without it costs', async () => {
    const file = await upload(gw.url, Buffer.alloc(MB, 7));
    const plain = await call(gw.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: { prompt: 'a cat', image: 'https://example.com/cat.png' } }, headers: { 'idempotency-key': 'plain-1' } });
    s.sim.clearRequests();
    const withFile = await call(gw.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: { prompt: 'a cat', image: file.url } }, headers: { 'idempotency-key': 'file-1' } });
    expect(withFile.status).toBe(201);
    // The upstream got the bytes...
    const sent = upstreamCalls(s.sim, /predictions$/).at(-1)!.body as { input: { image: string } };
    expect(sent.input.image).toMatch(/^data:image\/png;base64,/);
    expect(sent.input.image.length).toBeGreaterThan(MB);
    // ...the client gets back what it sent, in the create's answer, every read, the list and a replay.
    expect(withFile.body.input).toEqual({ prompt: 'a cat', image: file.url });
    expect(withFile.text.length).toBeLessThan(plain.text.length + 200);
    const ended = await untilEnded(gw.url, withFile.body.id);
    expect(ended.input.image).toBe(file.url);
    await untilEnded(gw.url, plain.body.id);
    const cached = await call(gw.url, 'GET', `/replicate/v1/predictions/${withFile.body.id}`, { key: KEY_A });
    expect(cached.headers.get('x-cache')).toBe('HIT');
    expect(cached.body.input.image).toBe(file.url);
    const list = await call(gw.url, 'GET', '/replicate/v1/predictions', { key: KEY_A });
    expect(list.body.results.find((p: { id: string }) => p.id === withFile.body.id).input.image).toBe(file.url);
    const replay = await call(gw.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: { prompt: 'a cat', image: file.url } }, headers: { 'idempotency-key': 'file-1' } });
    expect(replay.headers.get('idempotent-replayed')).toBe('true');
    expect(replay.body.input.image).toBe(file.url);
    // In Redis: the same handful of small keys as the prediction without a file (the idempotency record too).
    const prefix = gw.config.REDIS_KEY_PREFIX;
    const a = await bytesOf(redis, prefix, plain.body.id);
    const b = await bytesOf(redis, prefix, withFile.body.id);
    expect(b.keys.length).toBe(a.keys.length);
    expect(b.bytes).toBeLessThan(a.bytes + 1024);
    // The idempotency record names the prediction instead of holding a copy of it.
    for (const k of await redis.keys(`${prefix}idem:*`)) {
      expect(JSON.parse((await redis.get(k))!)).toEqual({ state: 'done', fingerprint: expect.any(String), status: 201, id: expect.any(String) });
    }
  });

  it('lists 40 predictions with a 1 MB file input each in an answer about as small as 40 without', async () => {
    // A gateway of its own: this tenant's list holds only these 40.
    const own = await startGateway({ sim: s, env: { DEFAULT_RATE_LIMIT_MAX: '100000' } });
    try {
      const file = await upload(own.url, Buffer.alloc(MB, 9));
      const ids: string[] = [];
      for (let i = 0; i < 40; i++) {
        const r = await call(own.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: { prompt: `cat ${i}`, image: file.url } } });
        expect(r.status).toBe(201);
        ids.push(r.body.id);
      }
      for (const id of ids) await untilEnded(own.url, id);
      const list = await call(own.url, 'GET', '/replicate/v1/predictions', { key: KEY_A });
      expect(list.status).toBe(200);
      expect(list.body.results).toHaveLength(40);
      for (const p of list.body.results) expect(p.input.image).toBe(file.url);
      // 40 entries of about 1 KB each: nothing of the 40 MB the upstream was sent.
      expect(list.text.length).toBeLessThan(40 * 2048);
    } finally {
      await own.close();
    }
  });
});
