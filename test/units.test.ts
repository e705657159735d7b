// The pure pieces, alone: the bounded map, URL rewriting and rendering, list cursors, Prefer, upstream answers,
// the watcher's schedule, the in-process webhook queue and per-key usage.
import { afterEach, describe, expect, it, vi } from 'vitest';
import { GatewayError } from '../src/errors.js';
import { BoundedMap } from '../src/lib/bounded-map.js';
import { deeperThan } from '../src/lib/json-depth.js';
import { decodeCursor, encodeCursor, neighbours } from '../src/predictions/paging.js';
import { PredictionBody, rewriteUrls, sameId } from '../src/predictions/prediction.js';
import { normalizePrefer } from '../src/predictions/prefer.js';
import { fromUpstreamStatus, parseRetryAfter, scrub } from '../src/upstream/answers.js';
import { Deliverer, refuseUrl } from '../src/webhooks/deliver.js';

const codeOf = (fn: () => unknown) => {
  try {
    fn();
  } catch (err) {
    return (err as GatewayError).code;
  }
  return undefined;
};

describe('BoundedMap', () => {
  afterEach(() => vi.useRealTimers());

  it('forgets the least recently used entries past maxEntries; get counts as a use, peek does not', () => {
    const m = new BoundedMap<number>({ maxEntries: 4 });
    for (const k of ['a', 'b', 'c', 'd']) m.set(k, 1);
    m.peek('a');
    m.get('b');
    m.set('e', 1);
    expect(m.has('a')).toBe(false);
    expect(m.has('b')).toBe(true);
    expect(m.size).toBe(4);
  });

  it('keeps within maxBytes, refuses a value larger than the whole budget, and accounts bytes on delete', () => {
    const m = new BoundedMap<string>({ maxEntries: 100, maxBytes: 10, sizeOf: (v) => v.length });
    expect(m.set('a', 'xxxx')).toBe(true);
    expect(m.set('b', 'xxxx')).toBe(true);
    expect(m.set('c', 'xxxx')).toBe(true);
    expect(m.has('a')).toBe(false);
    expect(m.bytes).toBe(8);
    expect(m.set('huge', 'x'.repeat(11))).toBe(false);
    expect(m.has('huge')).toBe(false);
    m.delete('b');
    expect(m.bytes).toBe(4);
  });

  it('expires entries by their own ttl or the default one', () => {
    vi.useFakeTimers();
    const m = new BoundedMap<number>({ maxEntries: 10, ttlMs: 1000 });
    m.set('default', 1);
    m.set('short', 1, 100);
    expect(m.expiresIn('short')).toBe(100);
    vi.advanceTimersByTime(150);
    expect(m.get('short')).toBeUndefined();
    expect(m.get('default')).toBe(1);
    vi.advanceTimersByTime(1000);
    expect(m.has('default')).toBe(false);
    expect(m.expiresIn('default')).toBe(0);
  });
});

describe('prediction bodies', () => {
  it('rewrites urls.get and urls.cancel to the gateway and keeps stream and web', () => {
    const p = rewriteUrls({ id: 'p/1', urls: { get: 'https://api.replicate.com/x', stream: 's', web: 'w' } }, 'https://gw');
    expect(p.urls).toEqual({ get: 'https://gw/replicate/v1/predictions/p%2F1', cancel: 'https://gw/replicate/v1/predictions/p%2F1/cancel', stream: 's', web: 'w' });
    expect(rewriteUrls({ urls: { get: 'x' } }, 'https://gw').urls).toEqual({ get: 'x' });
  });

  it('reads only prediction-shaped upstream answers, and renders once per base', () => {
    for (const raw of ['not json', '[1]', '{"status":"starting"}', `${'['.repeat(100)}${']'.repeat(100)}`]) {
      expect(codeOf(() => PredictionBody.fromUpstream(raw))).toBe('UPSTREAM_ERROR');
    }
    const raw = '{"id":"a","status":"succeeded","urls":{}}';
    const b = PredictionBody.fromUpstream(raw);
    expect(b.terminal).toBe(true);
    const one = b.render('https://one');
    expect(b.render('https://one')).toBe(one);
    expect(JSON.parse(b.render('https://two')).urls.get).toBe('https://two/replicate/v1/predictions/a');
    expect(b.raw).toBe(raw);
    expect(codeOf(() => sameId(b, 'b'))).toBe('UPSTREAM_ERROR');
    expect(sameId(b, 'a')).toBe(b);
  });

  it('measures JSON depth without parsing, skipping brackets inside strings', () => {
    expect(deeperThan('{"a":[[1]]}', 3)).toBe(false);
    expect(deeperThan('{"a":[[[1]]]}', 3)).toBe(true);
    expect(deeperThan('{"a":"[[[[\\"[[[["}', 1)).toBe(false);
    // A string that ends in an escaped backslash ends at the next quote; an escaped quote does not end it.
    expect(deeperThan('{"a":"x\\\\","b":[[[1]]]}', 3)).toBe(true);
    expect(deeperThan('{"a":"\\\\\\"[[[[","b":1}', 1)).toBe(false);
    expect(deeperThan(`{"a":"${'x'.repeat(1000)}","b":${'['.repeat(70)}${']'.repeat(70)}}`, 64)).toBe(true);
  });
});

describe('list cursors', () => {
  it('round-trip both ways, and refuse anything the gateway did not issue with a 422', () => {
    expect(decodeCursor(encodeCursor('n', 123))).toEqual({ limit: 100, before: 123 });
    expect(decodeCursor(encodeCursor('p', 7), 5)).toEqual({ limit: 5, after: 7 });
    expect(decodeCursor(undefined)).toEqual({ limit: 100 });
    expect(codeOf(() => decodeCursor(Buffer.from('x1').toString('base64url')))).toBe('VALIDATION');
  });

  it('point at older and newer pages only where there are some', () => {
    const e = [3, 2, 1].map((score) => ({ id: String(score), score, json: '{}' }));
    expect(neighbours({ limit: 3 }, e, true)).toEqual({ next: 1, previous: undefined });
    expect(neighbours({ limit: 3, before: 4 }, e, false)).toEqual({ next: undefined, previous: 3 });
    expect(neighbours({ limit: 3, after: 0 }, e, true)).toEqual({ next: 1, previous: 3 });
    expect(neighbours({ limit: 3 }, [], false)).toEqual({ next: undefined, previous: undefined });
  });
});

describe('Prefer', () => {
  it.each([
    [undefined, { waitSeconds: 0 }],
    ['wait', { header: 'wait', waitSeconds: 60 }],
    ['wait=5', { header: 'wait=5', waitSeconds: 5 }],
    ['wait=90', { header: 'wait=60', waitSeconds: 60 }],
    ['wait=0', { header: 'wait=1', waitSeconds: 1 }],
    ['respond-async', { header: 'respond-async', waitSeconds: 0 }],
  ])('%s → %o', (value, expected) => {
    expect(normalizePrefer(value)).toEqual(expected);
  });

  it('refuses wait=<not a number> with a 400', () => {
    expect(codeOf(() => normalizePrefer('wait=abc'))).toBe('BAD_REQUEST');
  });
});

describe('upstream answers', () => {
  it('reads Retry-After as seconds or an HTTP date', () => {
    expect(parseRetryAfter('7')).toBe(7000);
    const ms = parseRetryAfter(new Date(Date.now() + 5000).toUTCString())!;
    expect(ms).toBeGreaterThan(3000);
    expect(ms).toBeLessThanOrEqual(5000);
    expect(parseRetryAfter('soon')).toBeUndefined();
    expect(parseRetryAfter(undefined)).toBeUndefined();
  });

  it('maps statuses the way the README says, never passing the key on', () => {
    const key = 'sk-secret-0123456789';
    expect(fromUpstreamStatus(401, '{}', undefined, [key]).message).toMatch(/UPSTREAM_API_KEY/);
    const limited = fromUpstreamStatus(429, '{"error":{"message":"busy"}}', undefined, [key]);
    expect([limited.statusCode, limited.headers['retry-after']]).toEqual([429, '1']);
    expect(fromUpstreamStatus(429, '{}', new Date(Date.now() + 3000).toUTCString(), [key]).headers['retry-after']).toMatch(/^[1-3]$/);
    expect(fromUpstreamStatus(503, '{}', undefined, [key]).statusCode).toBe(502);
    expect(fromUpstreamStatus(524, '{}', undefined, [key]).statusCode).toBe(504);
    const leaky = fromUpstreamStatus(400, JSON.stringify({ detail: `bad key ${key}, Bearer abc` }), undefined, [key]);
    expect(leaky.message).toBe('upstream: bad key [redacted], Bearer [redacted]');
    expect(scrub(`{"logs":"${key}"}`, [key])).toBe('{"logs":"[redacted]"}');
  });
});

describe('webhook addresses', () => {
  const policy = { allowHttpHosts: [], allowPrivateHosts: [] };
  // IPv4-compatible (::/96), v4-mapped, NAT64 and 6to4 forms of private IPv4, and IPv6 outside global unicast.
  const refused = [
    'https://[::127.0.0.1]/', 'https://[::10.0.0.1]/', 'https://[::169.254.169.254]/', 'https://[::8.8.8.8]/',
    'https://[::ffff:127.0.0.1]/', 'https://[::ffff:10.0.0.1]/', 'https://[64:ff9b::10.0.0.1]/', 'https://[64:ff9b::169.254.169.254]/',
    'https://[64:ff9b:1::8.8.8.8]/', 'https://[2002:a00:1::1]/', 'https://[2002:c0a8:101::]/', 'https://[2002:7f00:1::1]/',
    'https://[fec0::1]/', 'https://[100::1]/', 'https://[4000::1]/', 'https://[2001:db8::1]/', 'https://[fd00::1]/', 'https://0x7f.1/',
  ];
  const allowed = ['https://[2606:4700:4700::1111]/', 'https://[64:ff9b::8.8.8.8]/', 'https://[2002:808:808::1]/', 'https://[::ffff:8.8.8.8]/', 'https://8.8.8.8/'];

  it('refuses every literal that is not global unicast, judging embedded IPv4 by itself', () => {
    for (const url of refused) expect(refuseUrl(url, policy), url).toMatch(/private, loopback or reserved/);
    for (const url of allowed) expect(refuseUrl(url, policy), url).toBeUndefined();
  });

  it('refuses such a literal again when delivering (no lookup sees it), without a retry', async () => {
    const deliverer = new Deliverer(policy, 1000);
    try {
      for (const url of ['https://[::127.0.0.1]:1/hook', 'https://[64:ff9b::7f00:1]:1/hook']) {
        expect(await deliverer.send(url, { id: 'msg_1', secret: `whsec_${Buffer.alloc(24).toString('base64')}`, body: '{}' }), url).toEqual({
          ok: false,
          retry: false,
          reason: expect.stringMatching(/private, loopback or reserved/),
        });
      }
    } finally {
      await deliverer.close();
    }
  });
});

describe('the watcher\'s schedule and budget', () => {
  it('looks about the prediction\'s age from now, within WATCH_MIN_MS and WATCH_MAX_MS, and slowly when the upstream calls back', async () => {
    const { nextDelay } = await import('../src/lifecycle/watcher.js');
    const c = { WATCH_MIN_MS: 1000, WATCH_MAX_MS: 30_000 };
    expect([0, 1000, 2000, 4000, 16_000, 45_000, 600_000].map((age) => nextDelay(age, c))).toEqual([1000, 1000, 2000, 4000, 16_000, 30_000, 30_000]);
    expect(nextDelay(0, c, true)).toBe(30_000);
  });

  it('spreads a per-minute budget over one-second windows that add up to it exactly', async () => {
    const { windowLimit } = await import('../src/lifecycle/watcher.js');
    for (const perMinute of [1, 7, 60, 600, 1500, 1999]) {
      const sum = Array.from({ length: 60 }, (_, i) => windowLimit(1_000_000 + i, perMinute)).reduce((a, b) => a + b, 0);
      expect(sum).toBe(perMinute);
    }
  });
});

describe('the in-process webhook queue', () => {
  it('never starts a finished watch again (a late change asks for it)', async () => {
    const { MemoryWatchQueue } = await import('../src/webhooks/queue.js');
    let steps = 0;
    const q = new MemoryWatchQueue<{ n: number }>(async (s) => ((steps += 1), { state: s, againInMs: null }), { onError: () => {} });
    await q.add('p1', { n: 1 }, 0);
    await vi.waitFor(() => expect(steps).toBe(1));
    await q.add('p1', { n: 2 }, 0);
    expect(await q.promote('p1')).toBe('none');
    await new Promise((r) => setTimeout(r, 50));
    expect(steps).toBe(1);
    await q.close();
  });
});

describe('per-key usage', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('keeps counts under the day they were made when saving them fails across midnight', async () => {
    const { KeyUsage } = await import('../src/admin/key-usage.js');
    const saved: Record<string, Record<string, number>> = {};
    let failing = true;
    const store = {
      async addKeyUsage(day: string, counts: Record<string, number>) {
        if (failing) throw new Error('store away');
        for (const [f, n] of Object.entries(counts)) (saved[day] ??= {})[f] = (saved[day]![f] ?? 0) + n;
      },
    };
    const log = { warn() {} };
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(new Date('2026-12-06T23:59:59.500Z'));
    const usage = new KeyUsage(store as never, log as never);
    usage.count('k1', true);
    usage.count('k1', false);
    await usage.flush(); // fails: the store is away
    vi.setSystemTime(new Date('2026-12-07T00:00:01Z'));
    usage.count('k1', false);
    failing = false;
    await usage.flush();
    expect(saved).toEqual({ '2026-12-06': { 'k1:requests': 2, 'k1:creates': 1 }, '2026-12-07': { 'k1:requests': 1 } });
  });
});
