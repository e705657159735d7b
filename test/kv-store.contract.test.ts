// One contract, every key-value store (webhook secrets and receivers, delivery failures, dashboard sessions): in
// memory, and Redis as one server, behind Sentinel and as a Cluster.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type KvStore, MemoryKvStore, RedisKvStore } from '../src/store/kv-store.js';
import { storeFactories } from './helpers/stack.js';

const { factories, close } = storeFactories<KvStore>('kv-contract', () => new MemoryKvStore(), (client) => new RedisKvStore(client));
afterAll(close);

describe.each(factories)('%s kv store', (_kind, make) => {
  let kv: KvStore;
  beforeAll(async () => {
    kv = await make();
  });

  it('sets, reads, and lets exactly one of racing setIfAbsent calls win', async () => {
    expect(await kv.get('nope')).toBeNull();
    await kv.set('a', '1');
    expect(await kv.get('a')).toBe('1');
    const wins = await Promise.all(Array.from({ length: 20 }, (_, i) => kv.setIfAbsent('race', String(i))));
    expect(wins.filter(Boolean)).toHaveLength(1);
    expect(await kv.get('race')).toBe(String(wins.indexOf(true)));
    expect(await kv.setIfAbsent('a', '2')).toBe(false);
    expect(await kv.get('a')).toBe('1');
  });

  it('forgets entries with an expiry, and keeps those without one', async () => {
    await kv.set('short', 'x', 100);
    await kv.setIfAbsent('short-nx', 'y', 100);
    await kv.set('lasting', 'z');
    await new Promise((r) => setTimeout(r, 250));
    expect(await kv.get('short')).toBeNull();
    expect(await kv.get('short-nx')).toBeNull();
    expect(await kv.get('lasting')).toBe('z');
    expect(await kv.setIfAbsent('short', 'again', 1000)).toBe(true);
  });

  it('keeps capped lists newest first', async () => {
    for (let i = 0; i < 8; i++) await kv.pushCapped('list', `v${i}`, 5, 60_000);
    expect(await kv.list('list')).toEqual(['v7', 'v6', 'v5', 'v4', 'v3']);
    expect(await kv.list('empty')).toEqual([]);
  });
});

describe('memory kv store', () => {
  it('never lets short-lived entries push out a lasting one (a tenant\'s webhook secret)', async () => {
    const kv = new MemoryKvStore();
    await kv.set('whsec:team-a', 'whsec_keep');
    for (let i = 0; i < 101_000; i++) await kv.set(`whseen:${i}`, '1', 600_000);
    expect(await kv.get('whsec:team-a')).toBe('whsec_keep');
  });
});
