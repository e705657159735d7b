// The leased rate-limit store on a real Redis: how many permits it hands out, what Redis counts, and when windows
// end or limits change. Gateway-level behaviour (429s, headers, two processes) is in limits.test.ts.
import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createRedisClient } from '../src/store/redis-store.js';
import { keys } from '../src/store/keys.js';
import { leasedRedisStore } from '../src/store/rate-limit-store.js';
import { waitFor } from './helpers/stack.js';

type Result = { current: number; ttl: number };

let redis: Redis;
let prefix: string;

beforeAll(async () => {
  prefix = `rls:${randomUUID()}:`;
  redis = createRedisClient(inject('redisUrl'), prefix);
  await waitFor(() => redis.status === 'ready', 5000, 'redis');
});
afterAll(async () => {
  await redis.quit();
});

function storeWith(leaseMax: number) {
  const Store = leasedRedisStore(redis, leaseMax);
  const store = new Store();
  const incr = (key: string, windowMs: number, max: number) =>
    new Promise<Result>((resolve, reject) => store.incr(key, (err, r) => (err ? reject(err) : resolve(r!)), windowMs, max));
  return { incr };
}

/** What Redis has counted for a key: the permits granted to every process together. */
const counted = async (key: string) => Number((await redis.get(keys.rate(key))) ?? 0);

describe('leased rate-limit store', () => {
  it('takes permits from Redis in leases: 100 requests cost Redis two grants of 64, not 100 increments', async () => {
    const { incr } = storeWith(64);
    const results: Result[] = [];
    for (let i = 0; i < 100; i++) results.push(await incr('lease', 60_000, 1_000_000));
    expect(results.map((r) => r.current)).toEqual(Array.from({ length: 100 }, (_, i) => i + 1));
    expect(await counted('lease')).toBe(128);
    expect(results.every((r) => r.ttl > 55_000 && r.ttl <= 60_000)).toBe(true);
  });

  it('with RATE_LIMIT_LEASE_MAX=1, counts every request in Redis', async () => {
    const { incr } = storeWith(1);
    for (let i = 0; i < 10; i++) await incr('single', 60_000, 1_000_000);
    expect(await counted('single')).toBe(10);
  });

  it('hands out exactly max permits to 500 concurrent requests, and Redis never counts past max', async () => {
    const { incr } = storeWith(64);
    const results = await Promise.all(Array.from({ length: 500 }, () => incr('burst', 60_000, 300)));
    const allowed = results.filter((r) => r.current <= 300).map((r) => r.current);
    expect(allowed.sort((a, b) => a - b)).toEqual(Array.from({ length: 300 }, (_, i) => i + 1));
    expect(results.filter((r) => r.current > 300)).toHaveLength(200);
    expect(await counted('burst')).toBe(300);
  });

  it('two stores (two replicas) sharing the traffic pass exactly max together', async () => {
    const a = storeWith(64);
    const b = storeWith(64);
    let allowed = 0;
    for (let i = 0; i < 400; i++) if ((await (i % 2 ? b : a).incr('two', 60_000, 320)).current <= 320) allowed++;
    // Both keep getting requests after Redis runs dry, so each uses up what it holds: exactly the limit passes.
    expect(allowed).toBe(320);
    expect(await counted('two')).toBe(320);
  });

  it('a store that stops getting requests keeps its lease: the other replica gets at most the rest', async () => {
    const a = storeWith(64);
    const b = storeWith(64);
    // A takes one lease (1/16 of 320 = 20 permits) and uses one of them; then all traffic goes to B.
    expect((await a.incr('idle', 60_000, 320)).current).toBe(1);
    let allowed = 0;
    for (let i = 0; i < 400; i++) if ((await b.incr('idle', 60_000, 320)).current <= 320) allowed++;
    expect(allowed).toBe(300);
    expect(await counted('idle')).toBe(320);
  });

  it('refuses a spent window without asking Redis again, and grants again once the window has ended', async () => {
    const { incr } = storeWith(64);
    for (let i = 0; i < 5; i++) expect((await incr('spent', 2000, 5)).current).toBeLessThanOrEqual(5);
    expect((await incr('spent', 2000, 5)).current).toBe(6);
    // Gone from Redis, the local memory of the spent window still refuses until that window's end.
    await redis.del(keys.rate('spent'));
    const refused = await incr('spent', 2000, 5);
    expect(refused.current).toBe(6);
    expect(refused.ttl).toBeGreaterThan(0);
    await waitFor(async () => (await incr('spent', 2000, 5)).current <= 5, 6000, 'the window to reopen');
  });

  it('a limit raised mid-window applies at once, to permits not yet granted', async () => {
    const { incr } = storeWith(64);
    for (let i = 0; i < 3; i++) await incr('raised', 60_000, 3);
    expect((await incr('raised', 60_000, 3)).current).toBe(4);
    expect((await incr('raised', 60_000, 5)).current).toBe(4);
    expect((await incr('raised', 60_000, 5)).current).toBe(5);
    expect((await incr('raised', 60_000, 5)).current).toBe(6);
  });

  it('checks requests that arrive during a trip against their own limit, when a reload changed it meanwhile', async () => {
    const { incr } = storeWith(64);
    // One request under max 1 is in flight; then one more under max 1, and two under a raised max of 10.
    const results = await Promise.all([incr('changed', 60_000, 1), incr('changed', 60_000, 1), incr('changed', 60_000, 10), incr('changed', 60_000, 10)]);
    expect(results.map((r) => r.current)).toEqual([1, 2, 2, 3]);
    // Refused under max 1 (2 > 1), admitted under max 10 (2 and 3): and Redis counted each admitted one.
    expect(await counted('changed')).toBe(3);
  });

  it('passes a Redis failure to every waiting request', async () => {
    const client = createRedisClient(inject('redisUrl'), prefix);
    await waitFor(() => client.status === 'ready', 5000, 'redis');
    const Store = leasedRedisStore(client, 64);
    const store = new Store();
    client.disconnect();
    const incr = () => new Promise<Result>((resolve, reject) => store.incr('down', (err, r) => (err ? reject(err) : resolve(r!)), 60_000, 100));
    const results = await Promise.allSettled([incr(), incr(), incr()]);
    expect(results.map((r) => r.status)).toEqual(['rejected', 'rejected', 'rejected']);
  });
});
