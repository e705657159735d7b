// One contract, every store: in memory, and Redis as one server, behind Sentinel and as a 3-master Cluster.
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inject } from 'vitest';
import { MemoryStore } from '../src/store/memory-store.js';
import { createRedisClient } from '../src/store/redis-client.js';
import { RedisStore } from '../src/store/redis-store.js';
import { keys } from '../src/store/keys.js';
import type { Store } from '../src/store/store.js';
import { redisTargets, waitFor } from './helpers/stack.js';

const opts = { predictionTtlSeconds: 3600, cacheTtlSeconds: 3600 };
const factories: [string, () => Promise<Store>][] = [
  ['memory', async () => new MemoryStore({ ...opts, maxEntries: 1000 })],
  ...redisTargets().map(([kind, target]): [string, () => Promise<Store>] => [
    kind,
    async () => {
      const store = new RedisStore(createRedisClient(target, `contract:${randomUUID()}:`), opts);
      await waitFor(() => store.isReady(), 10_000, kind);
      return store;
    },
  ]),
];

const pred = (id: string, status = 'starting', extra: Record<string, unknown> = {}) => JSON.stringify({ id, status, ...extra });
const DAY = '2026-11-26';
// Index scores are creation times in microseconds; entries older than the prediction TTL are dropped.
const NOW = Date.now() * 1000;

describe.each(factories)('%s store', (_kind, make) => {
  let store: Store;
  beforeAll(async () => {
    store = await make();
  });
  afterAll(async () => {
    await store.close();
  });

  it('records the owner at create and finds nothing for unknown ids', async () => {
    await store.recordCreate({ tenant: 'team-a', id: 'p1', score: NOW, json: pred('p1'), day: DAY });
    expect(await store.lookup('p1')).toEqual({ owner: 'team-a', terminal: null, upstream: null });
    expect(await store.lookup('nope')).toEqual({ owner: null, terminal: null, upstream: null });
  });

  it('caches a terminal prediction and counts its usage exactly once', async () => {
    await store.recordCreate({ tenant: 'team-u', id: 'u1', score: NOW, json: pred('u1'), day: DAY });
    const done = pred('u1', 'succeeded', { metrics: { predict_time: 1.5 } });
    await store.recordTerminal({ id: 'u1', tenant: 'team-u', json: done, status: 'succeeded', predictTime: 1.5, day: DAY });
    await store.recordTerminal({ id: 'u1', tenant: 'team-u', json: done, status: 'succeeded', predictTime: 1.5, day: DAY });
    expect((await store.lookup('u1')).terminal).toBe(done);
    expect(await store.usageGet('team-u', [DAY, '2026-11-25'])).toEqual({ [DAY]: { creates: 1, succeeded: 1, predict_time: 1.5 } });
  });

  it('rewrites a terminal body over the cache and the record, keeps the cache at least as asked, and leaves a gone record alone', async () => {
    await store.recordCreate({ tenant: 'team-w', id: 'w1', score: NOW, json: pred('w1'), day: DAY });
    await store.recordTerminal({ id: 'w1', tenant: 'team-w', json: pred('w1', 'succeeded', { output: ['https://cdn.example/a.png'] }), status: 'succeeded', predictTime: 0, day: DAY });
    const kept = pred('w1', 'succeeded', { output: ['/gateway/v1/outputs/w1/0'] });
    expect(await store.rewriteTerminal('w1', kept, 90 * 86400)).toBe(true);
    expect((await store.lookup('w1')).terminal).toBe(kept);
    expect((await store.current('w1')).record).toBe(kept);
    expect((await store.listPage('team-w', { limit: 10 })).entries.map((e) => e.json)).toEqual([kept]);
    // Counted once still: the rewrite is no second end.
    expect(await store.usageGet('team-w', [DAY])).toEqual({ [DAY]: { creates: 1, succeeded: 1 } });
    expect(await store.rewriteTerminal('never-created', kept, 60)).toBe(false);
    expect(await store.lookup('never-created')).toMatchObject({ owner: null, terminal: null });
  });

  it('lists a tenant\'s predictions newest first, with cursors both ways, preferring cached terminal records', async () => {
    for (let i = 1; i <= 7; i++) await store.recordCreate({ tenant: 'team-l', id: `l${i}`, score: NOW + i, json: pred(`l${i}`), day: DAY });
    await store.recordCreate({ tenant: 'team-other', id: 'o1', score: NOW + 99, json: pred('o1'), day: DAY });
    await store.recordTerminal({ id: 'l6', tenant: 'team-l', json: pred('l6', 'failed'), status: 'failed', predictTime: 0, day: DAY });
    const p1 = await store.listPage('team-l', { limit: 3 });
    expect(p1.entries.map((e) => e.id)).toEqual(['l7', 'l6', 'l5']);
    expect(p1.hasMore).toBe(true);
    expect(JSON.parse(p1.entries[1]!.json).status).toBe('failed');
    const p2 = await store.listPage('team-l', { limit: 3, before: p1.entries.at(-1)!.score });
    expect(p2.entries.map((e) => e.id)).toEqual(['l4', 'l3', 'l2']);
    expect(p2.hasMore).toBe(true);
    const p3 = await store.listPage('team-l', { limit: 3, before: p2.entries.at(-1)!.score });
    expect(p3.entries.map((e) => e.id)).toEqual(['l1']);
    expect(p3.hasMore).toBe(false);
    const back = await store.listPage('team-l', { limit: 3, after: p3.entries[0]!.score });
    expect(back.entries.map((e) => e.id)).toEqual(['l4', 'l3', 'l2']);
    expect(back.hasMore).toBe(true);
    expect((await store.listPage('team-nobody', { limit: 3 })).entries).toEqual([]);
  });

  it('claims an idempotency key once, then replays, and releases on request', async () => {
    expect(await store.idemBegin('k1', 'fp', 10_000, 'h1')).toBeNull();
    expect(await store.idemBegin('k1', 'fp', 10_000, 'h0')).toEqual({ state: 'pending', fingerprint: 'fp', holder: 'h1' });
    await store.idemComplete('k1', { state: 'done', fingerprint: 'fp', status: 201, body: '{}' }, 60);
    expect(await store.idemGet('k1')).toEqual({ state: 'done', fingerprint: 'fp', status: 201, body: '{}' });
    expect(await store.idemBegin('k2', 'fp', 10_000, 'h2')).toBeNull();
    await store.idemRelease('k2');
    expect(await store.idemGet('k2')).toBeNull();
    expect(await store.idemBegin('k2', 'fp2', 10_000, 'h3')).toBeNull();
  });

  it('lets a holder find its own pending claim again, but nobody else', async () => {
    expect(await store.idemBegin('own', 'fp', 10_000, 'me')).toBeNull();
    expect(await store.idemBegin('own', 'fp', 10_000, 'me')).toBeNull();
    expect(await store.idemBegin('own', 'fp', 10_000, 'someone-else')).toEqual({ state: 'pending', fingerprint: 'fp', holder: 'me' });
    await store.idemComplete('own', { state: 'done', fingerprint: 'fp', status: 201, body: '{}' }, 60);
    // Once done, the record is replayed to everyone, the first holder included.
    expect((await store.idemBegin('own', 'fp', 10_000, 'me'))?.state).toBe('done');
  });

  it('lets exactly one of many concurrent claims win', async () => {
    const results = await Promise.all(Array.from({ length: 20 }, () => store.idemBegin('race', 'fp', 10_000, randomUUID())));
    expect(results.filter((r) => r === null)).toHaveLength(1);
  });

  it('counts atomically in a fixed window that expires', async () => {
    const counts = await Promise.all(Array.from({ length: 10 }, () => store.incrCounter('c1', 200)));
    expect([...counts].sort((a, b) => a - b)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    await new Promise((r) => setTimeout(r, 300));
    expect(await store.incrCounter('c1', 200)).toBe(1);
  });

  it('expires idempotency leases', async () => {
    expect(await store.idemBegin('lease', 'fp', 100, randomUUID())).toBeNull();
    await new Promise((r) => setTimeout(r, 250));
    expect(await store.idemBegin('lease', 'fp', 100, randomUUID())).toBeNull();
  });

  it('records a create that is already terminal, and its idempotency record, in the same step, counting it once', async () => {
    const done = pred('t1', 'succeeded', { metrics: { predict_time: 0.25 } });
    const idem = { key: 'team-x:k-create', record: { state: 'done' as const, fingerprint: 'fp', status: 201, id: 't1' }, ttlSeconds: 60 };
    const rec = { tenant: 'team-x', id: 't1', score: NOW, json: done, day: DAY, terminal: { status: 'succeeded', predictTime: 0.25 }, idem };
    expect(await store.recordCreate(rec)).toBe(true);
    // A retry of the same write (its answer was lost) changes nothing.
    expect(await store.recordCreate(rec)).toBe(true);
    expect(await store.lookup('t1')).toEqual({ owner: 'team-x', terminal: done, upstream: null });
    expect(await store.idemGet('team-x:k-create')).toEqual(idem.record);
    expect(await store.usageGet('team-x', [DAY])).toEqual({ [DAY]: { creates: 1, succeeded: 1, predict_time: 0.25 } });
    expect((await store.listPage('team-x', { limit: 10 })).entries.map((e) => e.id)).toEqual(['t1']);
  });

  it('keeps one body per prediction: the end written over its record is what the cache, the list and current() serve', async () => {
    await store.recordCreate({ tenant: 'team-o', id: 'one1', score: NOW, json: pred('one1'), day: DAY });
    expect((await store.current('one1')).record).toBe(pred('one1'));
    const done = pred('one1', 'succeeded');
    await store.recordTerminal({ id: 'one1', tenant: 'team-o', json: done, status: 'succeeded', predictTime: 0, day: DAY });
    expect(await store.lookup('one1')).toMatchObject({ owner: 'team-o', terminal: done });
    expect((await store.current('one1')).record).toBe(done);
    expect((await store.listPage('team-o', { limit: 10 })).entries.map((e) => e.json)).toEqual([done]);
    // A running state that arrives late never steps back over the end.
    expect(await store.observe({ id: 'one1', json: pred('one1', 'processing'), rank: 1, logs: 0, digest: 'late' })).toBe(0);
    expect((await store.lookup('one1')).terminal).toBe(done);
  });

  it('never moves an owned id to another tenant, and writes nothing for the second one', async () => {
    expect(await store.recordCreate({ tenant: 'team-a', id: 'dup', score: NOW, json: pred('dup'), day: DAY })).toBe(true);
    expect(await store.recordCreate({ tenant: 'team-b', id: 'dup', score: NOW + 1, json: pred('dup', 'succeeded'), day: DAY })).toBe(false);
    expect(await store.lookup('dup')).toEqual({ owner: 'team-a', terminal: null, upstream: null });
    expect((await store.listPage('team-b', { limit: 10 })).entries).toEqual([]);
    expect(await store.usageGet('team-b', [DAY])).toEqual({});
  });

  it('keeps the upstream that created a prediction with its owner, in the create\'s own step, and never moves it', async () => {
    const open = { due: Date.now() + 3_600_000, meta: { tenant: 'team-p', createdAt: Date.now(), upstream: 'acct-b' } };
    expect(await store.recordCreate({ tenant: 'team-p', id: 'pin1', score: NOW, json: pred('pin1'), day: DAY, upstream: 'acct-b', open })).toBe(true);
    expect(await store.lookup('pin1')).toEqual({ owner: 'team-p', terminal: null, upstream: 'acct-b' });
    // A retried write (or a deduplicating upstream answering with the same id) keeps the first account.
    expect(await store.recordCreate({ tenant: 'team-p', id: 'pin1', score: NOW, json: pred('pin1'), day: DAY, upstream: 'acct-a' })).toBe(true);
    expect((await store.lookup('pin1')).upstream).toBe('acct-b');
    // Another tenant's create with that id writes nothing, its account included.
    expect(await store.recordCreate({ tenant: 'team-q', id: 'pin2', score: NOW, json: pred('pin2'), day: DAY })).toBe(true);
    expect(await store.recordCreate({ tenant: 'team-p', id: 'pin2', score: NOW, json: pred('pin2'), day: DAY, upstream: 'acct-b' })).toBe(false);
    expect(await store.lookup('pin2')).toEqual({ owner: 'team-q', terminal: null, upstream: null });
    // A create that came back terminal is pinned too (the Cluster writes it step by step).
    const done = pred('pin3', 'succeeded');
    await store.recordCreate({ tenant: 'team-p', id: 'pin3', score: NOW, json: done, day: DAY, upstream: 'acct-c', terminal: { status: 'succeeded', predictTime: 0 } });
    expect(await store.lookup('pin3')).toEqual({ owner: 'team-p', terminal: done, upstream: 'acct-c' });
  });
});

describe('memory store bounds', () => {
  it('evicts the oldest entries past its size', async () => {
    const store = new MemoryStore({ ...opts, maxEntries: 100 });
    for (let i = 0; i < 250; i++) await store.recordCreate({ tenant: 't', id: `id${i}`, score: NOW + i, json: pred(`id${i}`), day: DAY });
    expect((await store.lookup('id0')).owner).toBeNull();
    expect((await store.lookup('id249')).owner).toBe('t');
    const page = await store.listPage('t', { limit: 1000 });
    expect(page.entries.length).toBeLessThanOrEqual(100);
  });

  it('the memory store is bounded by bytes as well as entries (finding 9)', async () => {
    const store = new MemoryStore({ predictionTtlSeconds: 3600, cacheTtlSeconds: 3600, maxEntries: 100_000, maxBytes: 12 * 1024 * 1024 });
    const big = 'x'.repeat(1024 * 1024);
    for (let i = 0; i < 40; i++) {
      const json = JSON.stringify({ id: `m${i}`, status: 'succeeded', input: { big } });
      await store.recordCreate({ tenant: 't', id: `m${i}`, score: i, json, day: '2026-12-02', terminal: { status: 'succeeded', predictTime: 0 } });
    }
    // One body per prediction, in about 9 MB for records: the newest few stay, the oldest bodies are gone.
    expect((await store.lookup('m39')).terminal).not.toBeNull();
    expect((await store.lookup('m0')).terminal).toBeNull();
    const page = await store.listPage('t', { limit: 100 });
    expect(page.entries.length).toBeLessThanOrEqual(9);
    expect(page.entries[0]!.id).toBe('m39');
  });
});

// Issue 14: budget reservations, the same in both stores.
describe.each(factories)('%s store: budget reservations', (_kind, make) => {
  let store: Store;
  beforeAll(async () => {
    store = await make();
  });
  afterAll(async () => {
    await store.close();
  });
  const now = Date.now();
  const line = (key: string, field: 'creates' | 'seconds' | 'cost', max: number, amount: number) => ({ key, field, max, amount, ttlSeconds: 3600 });
  // Budget hashes are the tenant's (one hash slot with its reservations, as src/budget/ names them).
  const reserve = (rid: string, lines: ReturnType<typeof line>[], extra: Partial<Parameters<Store['reserve']>[0]> = {}) =>
    store.reserve({ tenant: extra.running?.tenant ?? extra.share?.tenant ?? 'team-c', rid, now, expiresAt: now + 60_000, lines, ...extra });
  const bc = keys.budgetTenant('team-c', 'p');
  const bs = keys.budgetTenant('team-s', 'p');

  it('admits exactly max of many concurrent reservations, and a refusal changes nothing', async () => {
    const rs = await Promise.all(Array.from({ length: 50 }, (_, i) => reserve(`c${i}`, [line(bc, 'creates', 10, 1), line(bc, 'cost', 100, 0.5)])));
    expect(rs.filter((r) => r.ok)).toHaveLength(10);
    const refused = rs.find((r) => !r.ok);
    expect(refused).toEqual({ ok: false, reason: 'budget', line: 0, spent: 0, reserved: 10 });
    const remaining = rs.flatMap((r) => (r.ok ? [r.remaining[0]] : [])).sort((x, y) => x! - y!);
    expect(remaining).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(await store.budgetGet([bc])).toEqual([{ 'creates:r': 10, 'cost:r': 5 }]);
  });

  it('binds at create (the create is spent), settles once to the real amounts, and releases a failed create', async () => {
    const lines = [line(bs, 'creates', 5, 1), line(bs, 'seconds', 100, 10), line(bs, 'cost', 100, 2)];
    expect((await reserve('s1', lines, { running: { tenant: 'team-s', ttlSeconds: 60 } })).ok).toBe(true);
    expect(await store.runningGet(['team-s'])).toEqual([1]);
    await store.recordCreate({ tenant: 'team-s', id: 'bs1', score: NOW, json: pred('bs1'), day: DAY, reservation: { rid: 's1', expiresAt: now + 3_600_000 } });
    let [h] = await store.budgetGet([bs]);
    expect(h).toMatchObject({ 'creates:s': 1, 'creates:r': 0, 'seconds:r': 10, 'cost:r': 2 });
    const done = pred('bs1', 'succeeded');
    for (let i = 0; i < 2; i++) await store.recordTerminal({ id: 'bs1', tenant: 'team-s', json: done, status: 'succeeded', predictTime: 3.5, cost: 0.7, day: DAY });
    [h] = await store.budgetGet([bs]);
    expect(h).toMatchObject({ 'creates:s': 1, 'creates:r': 0, 'seconds:s': 3.5, 'seconds:r': 0, 'cost:s': 0.7, 'cost:r': 0 });
    expect(await store.runningGet(['team-s'])).toEqual([0]);
    // A create that reached nothing gives everything back; a second release is a no-op.
    expect((await reserve('s2', lines, { running: { tenant: 'team-s', ttlSeconds: 60 } })).ok).toBe(true);
    await store.releaseReservation('team-s', 's2');
    await store.releaseReservation('team-s', 's2');
    [h] = await store.budgetGet([bs]);
    expect(h).toMatchObject({ 'creates:s': 1, 'creates:r': 0, 'seconds:s': 3.5, 'seconds:r': 0 });
    expect(await store.runningGet(['team-s'])).toEqual([0]);
    // A timed-out create is spent at its estimate.
    expect((await reserve('s3', lines, { tenant: 'team-s' })).ok).toBe(true);
    await store.settleReservation('team-s', 's3', { seconds: 10, cost: 2 });
    [h] = await store.budgetGet([bs]);
    expect(h).toMatchObject({ 'creates:s': 2, 'creates:r': 0, 'seconds:s': 13.5, 'cost:s': 2.7, 'cost:r': 0 });
  });

  it('refuses past maxRunning, and sweeps reservations past their expiry before it checks', async () => {
    const run = { tenant: 'team-r', max: 2, ttlSeconds: 60 };
    expect((await reserve('r1', [], { running: run, expiresAt: now + 1000 })).ok).toBe(true);
    expect((await reserve('r2', [], { running: run })).ok).toBe(true);
    expect(await reserve('r3', [], { running: run })).toEqual({ ok: false, reason: 'running', running: 2 });
    // Later, r1's lease is over: the next reserve releases it first.
    expect((await store.reserve({ tenant: 'team-r', rid: 'r4', now: now + 2000, expiresAt: now + 60_000, lines: [], running: run })).ok).toBe(true);
    expect(await store.runningGet(['team-r'])).toEqual([2]);
  });

  it('splits a shared create rate by weight: under its share a tenant gets through, over it only into what nobody active is owed', async () => {
    const share = (tenant: string) => ({ tenant, windowKey: keys.shareWindow('w1'), previousKey: keys.shareWindow('w0'), windowTtlMs: 60_000, limit: 10, weights: { big: 3 }, defaultWeight: 1, totalWeight: 5 });
    // Shares: big 6, a 2, b 2. b is active (one create); big bursts.
    expect((await reserve('f0', [], { share: share('b') })).ok).toBe(true);
    const big = await Promise.all(Array.from({ length: 12 }, (_, i) => reserve(`f${i + 1}`, [], { share: share('big') })));
    // big: its 6, then into what is not held for b (1 more owed to it) and not for a (inactive, lent): 10 - 1 - 1 = 8.
    expect(big.filter((r) => r.ok)).toHaveLength(8);
    expect(big.find((r) => !r.ok)).toMatchObject({ ok: false, reason: 'share', used: 8, total: 9, share: 6 });
    expect((await reserve('f20', [], { share: share('b') })).ok).toBe(true);
    expect(await reserve('f21', [], { share: share('a') })).toMatchObject({ ok: false, reason: 'account', total: 10 });
  });
});

describe.each(factories)('%s store: the open set, what a prediction last showed, and slots', (_kind, make) => {
  let store: Store;
  beforeAll(async () => {
    store = await make();
  });
  afterAll(async () => {
    await store.close();
  });
  const now = Date.now();
  const claim = (max = 10, window = 1, windowLimit = 100, at = now) => store.openClaim({ now: at, max, leaseMs: 5000, window, windowLimit });

  it('enters a create into the open set with its metadata, leases what is due, oldest due first, and leaves it exactly once', async () => {
    const meta = (tenant: string) => ({ tenant, createdAt: now, webhook: '{"url":"https://x.example/h"}', upstream: 'acct-o' });
    await store.recordCreate({ tenant: 'team-o', id: 'o2', score: NOW, json: pred('o2'), day: DAY, open: { due: now - 1000, meta: meta('team-o') } });
    await store.recordCreate({ tenant: 'team-o', id: 'o1', score: NOW, json: pred('o1'), day: DAY, open: { due: now - 2000, meta: meta('team-o') } });
    await store.recordCreate({ tenant: 'team-o', id: 'o3', score: NOW, json: pred('o3'), day: DAY, open: { due: now + 60_000, meta: meta('team-o') } });
    // A create that came back terminal never enters.
    await store.recordCreate({ tenant: 'team-o', id: 'o4', score: NOW, json: pred('o4', 'succeeded'), day: DAY, terminal: { status: 'succeeded', predictTime: 0 } });
    expect(await store.openStats(now)).toEqual({ open: 3, oldestDue: now - 2000 });
    const got = await claim();
    expect(got.map((e) => e.id)).toEqual(['o1', 'o2']);
    expect(got[0]).toMatchObject({ tenant: 'team-o', createdAt: now, webhook: '{"url":"https://x.example/h"}', upstream: 'acct-o', strikes: 0 });
    // Leased: not due again for anyone until the lease ends.
    expect(await claim()).toEqual([]);
    expect((await claim(10, 2, 100, now + 6000)).map((e) => e.id).sort()).toEqual(['o1', 'o2']);
    // A client's look only postpones; a stream only brings forward.
    await store.openSchedule('o3', now + 1000, 'later');
    await store.openSchedule('o3', now - 1, 'earlier');
    expect((await claim(10, 3)).map((e) => e.id)).toEqual(['o3']);
    expect(await store.openStrike('o3')).toBe(1);
    expect(await store.openStrike('o3')).toBe(2);
    expect(await store.openStrike('gone')).toBe(0);
    // Leaving: the first end counts, a second does not; then nothing about it is scheduled again.
    expect(await store.recordTerminal({ id: 'o1', tenant: 'team-o', json: pred('o1', 'succeeded'), status: 'succeeded', predictTime: 1, day: DAY })).toBe(true);
    expect(await store.recordTerminal({ id: 'o1', tenant: 'team-o', json: pred('o1', 'succeeded'), status: 'succeeded', predictTime: 1, day: DAY })).toBe(false);
    await store.openSchedule('o1', now - 5000);
    expect((await claim(10, 4, 100, now + 20_000)).map((e) => e.id).sort()).toEqual(['o2', 'o3']);
    // An expired one leaves without a body, counted as expired.
    expect(await store.recordTerminal({ id: 'o2', tenant: 'team-o', status: 'expired', predictTime: 0, spendReserved: true, day: DAY })).toBe(true);
    expect((await store.openStats(now + 30_000)).open).toBe(1);
    expect((await store.usageGet('team-o', [DAY]))[DAY]).toMatchObject({ succeeded: 2, expired: 1 });
    expect(await store.current('o2')).toMatchObject({ record: pred('o2'), open: false });
  });

  it('claims no more in a window than its read budget allows, whoever asks', async () => {
    for (let i = 0; i < 5; i++) await store.recordCreate({ tenant: 'team-b', id: `b${i}`, score: NOW, json: pred(`b${i}`), day: DAY, open: { due: now - 100_000 + i, meta: { tenant: 'team-b', createdAt: now } } });
    const w = 1_000_000;
    expect(await claim(3, w, 4)).toHaveLength(3);
    expect(await claim(3, w, 4)).toHaveLength(1);
    expect(await claim(3, w, 4)).toHaveLength(0);
    expect((await claim(3, w + 1, 4, now + 10_000)).length).toBeGreaterThan(0);
  });

  it('writes what a running prediction shows over its record only when it is news, with a version that grows', async () => {
    await store.recordCreate({ tenant: 'team-v', id: 'v1', score: NOW, json: pred('v1'), day: DAY });
    const see = (status: string, rank: number, logs = 0, output = '') =>
      store.observe({ id: 'v1', json: pred('v1', status, { logs: 'x'.repeat(logs), output }), rank, logs, digest: `${status}|${logs}|${output}` });
    expect(await see('starting', 0)).toBe(1);
    expect(await see('starting', 0)).toBe(0);
    expect(await see('processing', 1, 5)).toBe(2);
    // Older answers arriving late change nothing.
    expect(await see('starting', 0)).toBe(0);
    expect(await see('processing', 1, 3)).toBe(0);
    expect(await see('processing', 1, 5, 'img')).toBe(3);
    expect(await store.current('v1')).toMatchObject({ version: 3, record: pred('v1', 'processing', { logs: 'xxxxx', output: 'img' }) });
    await store.recordTerminal({ id: 'v1', tenant: 'team-v', json: pred('v1', 'succeeded'), status: 'succeeded', predictTime: 1, day: DAY });
    expect(await store.current('v1')).toMatchObject({ version: 4, record: pred('v1', 'succeeded') });
    // After the end, a late running state is never written over it.
    expect(await see('processing', 1, 9)).toBe(0);
    // No record, nothing to write.
    expect(await store.observe({ id: 'nope', json: pred('nope'), rank: 0, logs: 0, digest: 'd' })).toBe(0);
  });

  it('hands out at most max slots of a set, gives them back, and lets lapsed ones go', async () => {
    const set = keys.streams('team-s');
    const now = Date.now();
    expect(await store.slotAcquire(set, 'a', 2, now, now + 1000)).toBe(true);
    expect(await store.slotAcquire(set, 'b', 2, now, now + 1000)).toBe(true);
    expect(await store.slotAcquire(set, 'c', 2, now, now + 1000)).toBe(false);
    await store.slotRelease(set, 'a');
    expect(await store.slotAcquire(set, 'c', 2, now, now + 1000)).toBe(true);
    await store.slotRefresh(set, ['b'], now + 60_000);
    // 'c' lapsed (its replica stopped refreshing it); 'b' was refreshed.
    expect(await store.slotAcquire(set, 'd', 2, now + 2000, now + 60_000)).toBe(true);
    expect(await store.slotAcquire(set, 'e', 2, now + 2000, now + 60_000)).toBe(false);
  });
});

describe('REDIS_WAIT_REPLICAS when the primary has no replica (as after a failover)', () => {
  it('sends one WAIT for a burst of writes, not one each (a WAIT blocks the connection and everything behind it)', async () => {
    const { RedisServer } = await import('./support/redis.js');
    const server = await RedisServer.start();
    const prefix = `wait:${randomUUID()}:`;
    const store = new RedisStore(createRedisClient(server.url, prefix), opts, true, 1);
    try {
      // Recorded without waiting, so the burst below is the first write that asks for a replica.
      const plain = new RedisStore(createRedisClient(server.url, prefix), opts);
      await waitFor(() => store.isReady() && plain.isReady(), 10_000, 'redis');
      for (let i = 0; i < 20; i++) await plain.recordCreate({ tenant: 'team-w', id: `wb${i}`, score: NOW, json: pred(`wb${i}`), day: DAY });
      await plain.close();
      const raw = new (await import('ioredis')).Redis(server.url);
      await raw.config('RESETSTAT');
      const firsts = await Promise.all(
        Array.from({ length: 20 }, (_, i) => store.recordTerminal({ id: `wb${i}`, tenant: 'team-w', json: pred(`wb${i}`, 'succeeded'), status: 'succeeded', predictTime: 0, day: DAY })),
      );
      expect(firsts.every(Boolean)).toBe(true);
      const calls = Number(/cmdstat_wait:calls=(\d+)/.exec(await raw.info('commandstats'))?.[1] ?? 0);
      expect(calls).toBeGreaterThanOrEqual(1);
      expect(calls).toBeLessThanOrEqual(2);
      await raw.quit();
    } finally {
      await store.close();
      await server.destroy();
    }
  });
});
