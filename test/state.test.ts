// Issue 24: each prediction stored once and small. A gateway file URL in the input stays that URL in every answer
// and stored copy (the upstream got the bytes), so a prediction with a file input costs what one without it costs,
// in Redis and in list answers; and every key the gateway writes expires or belongs to a named bounded set.
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { QUEUE_EVENTS_KEPT } from '../src/webhooks/queue.js';
import { KEY_A, KEY_B, MODEL_PATH, type Gateway, type SimHandle, call, startGateway, startSimulator, upstreamCalls, waitFor } from './helpers/stack.js';

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

  it('with FILES_DELIVERY=url, answers with the file URL the client sent, not the signed link the upstream got', async () => {
    const publicBase = 'http://gateway.test:8080';
    const own = await startGateway({ sim: s, env: { FILES_DELIVERY: 'url', PUBLIC_BASE_URL: publicBase, FILES_URL_SECRET: 'state-test-files-secret-0123456789abcdef' } });
    try {
      const file = await upload(own.url, Buffer.alloc(2048, 5));
      s.sim.clearRequests();
      const created = await call(own.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: { image: file.url } } });
      expect(created.status).toBe(201);
      expect((upstreamCalls(s.sim, /predictions$/).at(-1)!.body as { input: { image: string } }).input.image).toContain('/gateway/v1/files/');
      expect(created.body.input.image).toBe(file.url);
      // Another replica, which never saw the create, reads the running prediction from the upstream (which echoes the
      // signed link) and puts the client's input back from the record.
      const running = await call(own.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: { image: file.url, duration_ms: 5000 } } });
      const replica = await startGateway({ sim: s, prefix: own.config.REDIS_KEY_PREFIX, env: { FILES_DELIVERY: 'url', PUBLIC_BASE_URL: publicBase, FILES_URL_SECRET: 'state-test-files-secret-0123456789abcdef' } });
      try {
        const polled = await call(replica.url, 'GET', `/replicate/v1/predictions/${running.body.id}`, { key: KEY_A });
        expect(polled.body.status).not.toBe('succeeded');
        expect(polled.body.input).toEqual({ image: file.url, duration_ms: 5000 });
      } finally {
        await replica.close();
      }
      // Every later answer, read from the upstream or from the store.
      expect((await untilEnded(own.url, created.body.id)).input.image).toBe(file.url);
      const list = await call(own.url, 'GET', '/replicate/v1/predictions', { key: KEY_A });
      expect(list.body.results.map((p: { input: { image: string } }) => p.input.image)).toEqual([file.url, file.url]);
    } finally {
      await own.close();
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

/**
 * The keys that may live without a TTL, and why each set stays bounded whatever the traffic (README "State").
 * Everything else the gateway writes must expire.
 */
const BOUNDED: [RegExp, string][] = [
  [/^open(m|s)?:\{o\}$/, 'the open set: predictions created and not yet seen ending, each for PREDICTION_MAX_OPEN_SECONDS at most'],
  [/^kv:whsec(-shown)?:[A-Za-z0-9._-]+$/, 'a webhook secret per tenant, and when it was shown'],
  [/^bull:webhooks:(meta|id)$/, 'BullMQ\'s queue settings and job counter: one small key each (a TTL on meta would reset its settings)'],
  [/^bull:webhooks:events$/, 'BullMQ\'s event stream, capped at QUEUE_EVENTS_KEPT'],
  [/^bull:webhooks:(wait|active|delayed|prioritized|paused|marker|completed|failed|stalled|w-[A-Za-z0-9_-]+(:lock)?)$/, 'the webhook watches in flight: one job per prediction with a webhook, gone when its events are sent (failed ones kept a day, 1000 at most)'],
];

/** The keys under `prefix` that have no expiry, without the prefix. */
async function withoutTtl(redis: Redis, prefix: string): Promise<string[]> {
  const out: string[] = [];
  let cursor = '0';
  do {
    const [next, batch] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
    cursor = next;
    for (const k of batch) if ((await redis.pttl(k)) === -1) out.push(k.slice(prefix.length));
  } while (cursor !== '0');
  return out;
}

describe('every key the gateway writes', () => {
  let s: SimHandle;
  let gw: Gateway;
  let redis: Redis;
  let hooks = 0;
  const receiver = createServer((req, res) => {
    req.resume().on('end', () => {
      hooks++;
      res.end('ok');
    });
  });

  beforeAll(async () => {
    s = await startSimulator(50);
    await new Promise<void>((r) => receiver.listen(0, '127.0.0.1', r));
    gw = await startGateway({
      sim: s,
      tenants: [{ id: 'team-a', keys: [KEY_A], budget: { creates: { max: 1000, period: 'day' } }, maxRunning: 100 }, { id: 'team-b', keys: [KEY_B] }],
      env: { WEBHOOK_ALLOW_HTTP_HOSTS: '127.0.0.1', WEBHOOK_ALLOW_PRIVATE_HOSTS: '127.0.0.1', WATCH_MIN_MS: '50', WATCH_MAX_MS: '200', TOKEN_SIGNING_SECRET: 'state-test-signing-secret-0123456789abcdef', ADMIN_API_KEY: 'state-test-admin-key-0123456789abcdef' },
    });
    redis = new Redis(inject('redisUrl'));
  });
  afterAll(async () => {
    redis.disconnect();
    await gw.close();
    await s.sim.close();
    receiver.close();
  });

  it('expires, or belongs to a named set that does not grow with traffic, after creates, webhooks, files and tokens', async () => {
    const hook = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/hook`;
    const file = await upload(gw.url, Buffer.alloc(4096, 3));
    const token = (await call(gw.url, 'POST', '/gateway/v1/tokens', { key: KEY_A, body: { ttl_seconds: 300, max_creates: 10 } })).body.token as string;
    const ids: string[] = [];
    for (let i = 0; i < 12; i++) {
      const r = await call(gw.url, 'POST', MODEL_PATH, {
        key: i % 4 === 3 ? token : i % 2 ? KEY_B : KEY_A,
        body: { input: { prompt: `cat ${i}`, ...(i % 6 === 0 ? { image: file.url } : {}) }, ...(i % 2 === 0 ? { webhook: hook } : {}) },
        headers: i % 2 === 0 ? { 'idempotency-key': `keyspace-${i}` } : {},
      });
      expect(r.status, r.text).toBe(201);
      ids.push(r.body.id);
    }
    // While they run: the open set and the webhook jobs are there.
    const during = await withoutTtl(redis, gw.config.REDIS_KEY_PREFIX);
    await call(gw.url, 'POST', `/replicate/v1/predictions/${ids[1]}/cancel`, { key: KEY_B });
    await call(gw.url, 'GET', `/replicate/v1/predictions/${ids[0]}`, { key: KEY_A });
    await waitFor(async () => (await gw.app.store.openStats(Date.now())).open === 0, 15_000, 'every prediction to be settled');
    await waitFor(() => hooks >= 4, 15_000, 'the webhooks');
    await call(gw.url, 'GET', '/replicate/v1/predictions', { key: KEY_A });
    await call(gw.url, 'GET', '/gateway/v1/webhooks/secret', { key: KEY_A });

    const after = await withoutTtl(redis, gw.config.REDIS_KEY_PREFIX);
    for (const k of [...during, ...after]) expect(BOUNDED.find(([re]) => re.test(k)), `${k} has no TTL and is in no named bounded set`).toBeDefined();
    expect(during.some((k) => k.startsWith('open:'))).toBe(true);
    // BullMQ keeps the stream of its events short (the gateway never reads it), and the setting survives in its meta.
    expect(await redis.hget(`${gw.config.REDIS_KEY_PREFIX}bull:webhooks:meta`, 'opts.maxLenEvents')).toBe(String(QUEUE_EVENTS_KEPT));
  });
});
