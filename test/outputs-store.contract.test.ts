// One contract, every store of what is known about kept outputs (manifests, copy claims, bytes per tenant, the ends
// of retention): in memory, and Redis as one server, behind Sentinel and as a Cluster.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryOutputsStore, type OutputManifest, type OutputsStore, RedisOutputsStore } from '../src/store/outputs-store.js';
import { storeFactories } from './helpers/stack.js';

const { factories, close } = storeFactories<OutputsStore>('outputs-contract', () => new MemoryOutputsStore(), (client) => new RedisOutputsStore(client));
afterAll(close);

const manifest = (id: string, tenant: string, expiresAt: number, sizes: number[]): OutputManifest => ({
  id,
  tenant,
  keptAt: expiresAt - 1000,
  expiresAt,
  objects: sizes.map((size, n) => ({ n, key: `${tenant}/${id}/${n}`, size, contentType: 'image/png', etag: `"e${n}"` })),
});

describe.each(factories)('%s outputs store', (_kind, make) => {
  let store: OutputsStore;
  beforeAll(async () => {
    store = await make();
  });

  it('lets exactly one of racing claims of an attempt win, and a later attempt be claimed again', async () => {
    const wins = await Promise.all(Array.from({ length: 12 }, () => store.claim('p1', 0, 60_000)));
    expect(wins.filter(Boolean)).toHaveLength(1);
    expect(await store.claim('p1', 1, 60_000)).toBe(true);
    expect(await store.claim('p1', 1, 60_000)).toBe(false);
  });

  it('counts a tenant\'s bytes up to its quota, refusing what would pass it, across racing adds', async () => {
    const adds = await Promise.all(Array.from({ length: 10 }, () => store.addBytes('t-quota', 300, 1000)));
    expect(adds.filter((a) => a.ok)).toHaveLength(3);
    expect(adds.find((a) => !a.ok)).toMatchObject({ ok: false });
    expect(await store.bytes('t-quota')).toBe(900);
    expect(await store.addBytes('t-quota', 5000)).toEqual({ ok: true, used: 5900 });
    expect(await store.bytes('nobody')).toBe(0);
  });

  it('keeps manifests, names the ones whose retention ended, and gives each to exactly one taker, its bytes then uncounted', async () => {
    const now = Date.now();
    await store.addBytes('t-ret', 30);
    await store.save(manifest('old', 't-ret', now - 5000, [10, 20]));
    await store.save(manifest('older', 't-ret', now - 9000, []));
    await store.save(manifest('new', 't-ret', now + 60_000, [5]));
    expect((await store.manifest('old'))?.objects.map((o) => o.size)).toEqual([10, 20]);
    expect(await store.manifest('missing')).toBeNull();
    expect(await store.due(now, 10)).toEqual(['older', 'old']);
    expect(await store.due(now, 1)).toEqual(['older']);
    const takers = await Promise.all(Array.from({ length: 6 }, () => store.take('old')));
    expect(takers.filter(Boolean)).toHaveLength(1);
    expect(takers.find(Boolean)?.id).toBe('old');
    expect(await store.manifest('old')).toBeNull();
    expect(await store.bytes('t-ret')).toBe(0);
    expect(await store.due(now, 10)).toEqual(['older']);
    expect(await store.manifest('new')).not.toBeNull();
  });
});
