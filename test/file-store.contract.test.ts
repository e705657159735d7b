// One contract, every file store: in memory, and Redis as one server, behind Sentinel and as a Cluster.
import { randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FileMeta, FileStore } from '../src/store/file-store.js';
import { MemoryFileStore } from '../src/store/memory-file-store.js';
import { keys } from '../src/store/keys.js';
import { RedisFileStore } from '../src/store/redis-file-store.js';
import { storeFactories } from './helpers/stack.js';

/** The Redis client behind each Redis file store, to break a write on purpose. */
const clientOf = new WeakMap<FileStore, Redis>();
const { factories, close } = storeFactories<FileStore>('files-contract', () => new MemoryFileStore({ maxBytes: 64 * 1024 * 1024 }), (client) => {
  const store = new RedisFileStore(client);
  clientOf.set(store, client);
  return store;
});
afterAll(close);

let n = 0;
function meta(tenant: string, size: number, extra: Partial<FileMeta> = {}): FileMeta {
  const now = Date.now();
  n++;
  return {
    id: `file${String(n).padStart(12, '0')}${randomBytes(4).toString('hex')}`,
    tenant,
    uploader: 'key',
    name: `f${n}.bin`,
    contentType: 'application/octet-stream',
    size,
    sha256: 's',
    md5: 'm',
    metadata: { n },
    createdAt: now + n,
    expiresAt: now + 3_600_000,
    ...extra,
  };
}

describe.each(factories)('%s file store', (_kind, make) => {
  let files: FileStore;
  beforeAll(async () => {
    files = await make();
  });

  it('keeps the exact bytes and the metadata, and finds nothing for unknown ids', async () => {
    const bytes = randomBytes(70_000);
    const m = meta('t-round', bytes.length);
    expect(await files.put(m, bytes, 1e9)).toEqual({ stored: true });
    expect(await files.meta(m.id)).toEqual(m);
    const got = await files.content(m.id);
    expect(got!.meta).toEqual(m);
    expect(Buffer.compare(got!.bytes, bytes)).toBe(0);
    expect(await files.meta('nope'.repeat(5))).toBeNull();
    expect(await files.content('nope'.repeat(5))).toBeNull();
  });

  it('refuses an upload past the tenant\'s quota, naming the bytes in use; other tenants are not counted', async () => {
    expect(await files.put(meta('t-quota', 600), Buffer.alloc(600), 1000)).toEqual({ stored: true });
    expect(await files.put(meta('t-quota', 500), Buffer.alloc(500), 1000)).toEqual({ stored: false, usedBytes: 600 });
    expect(await files.put(meta('t-quota-other', 900), Buffer.alloc(900), 1000)).toEqual({ stored: true });
    expect(await files.put(meta('t-quota', 400), Buffer.alloc(400), 1000)).toEqual({ stored: true });
  });

  it('admits exactly what fits when uploads race', async () => {
    const results = await Promise.all(Array.from({ length: 20 }, () => files.put(meta('t-race', 100), Buffer.alloc(100), 1000)));
    expect(results.filter((r) => r.stored)).toHaveLength(10);
  });

  it('forgets expired files: not served, not listed, and their bytes leave the quota', async () => {
    const soon = meta('t-exp', 800, { expiresAt: Date.now() + 150 });
    await files.put(soon, Buffer.alloc(800), 1000);
    expect(await files.meta(soon.id)).not.toBeNull();
    await new Promise((r) => setTimeout(r, 250));
    expect(await files.meta(soon.id)).toBeNull();
    expect(await files.content(soon.id)).toBeNull();
    expect((await files.list('t-exp', { limit: 10 })).files).toEqual([]);
    expect(await files.put(meta('t-exp', 900), Buffer.alloc(900), 1000)).toEqual({ stored: true });
  });

  it('deletes only for the file\'s tenant, and the bytes leave the quota', async () => {
    const m = meta('t-del', 700);
    await files.put(m, Buffer.alloc(700), 1000);
    expect(await files.delete(m.id, 't-other')).toBe(false);
    expect(await files.meta(m.id)).not.toBeNull();
    expect(await files.delete(m.id, 't-del')).toBe(true);
    expect(await files.delete(m.id, 't-del')).toBe(false);
    expect(await files.meta(m.id)).toBeNull();
    expect(await files.put(meta('t-del', 900), Buffer.alloc(900), 1000)).toEqual({ stored: true });
  });

  it('lists a tenant\'s files newest first, in pages', async () => {
    const made = [];
    for (let i = 0; i < 5; i++) {
      const m = meta('t-list', 10);
      await files.put(m, Buffer.alloc(10), 1e9);
      made.push(m);
    }
    await files.put(meta('t-list-other', 10), Buffer.alloc(10), 1e9);
    const first = await files.list('t-list', { limit: 3 });
    expect(first.files.map((f) => f.id)).toEqual(made.slice(2).reverse().map((f) => f.id));
    expect(first.hasMore).toBe(true);
    const second = await files.list('t-list', { limit: 3, before: first.files.at(-1)!.createdAt });
    expect(second.files.map((f) => f.id)).toEqual(made.slice(0, 2).reverse().map((f) => f.id));
    expect(second.hasMore).toBe(false);
  });
});

describe.each(factories.filter(([kind]) => kind !== 'memory'))('%s file store, when the write fails', (_kind, make) => {
  it('gives back the quota it claimed for a file it could not store, and says so', async () => {
    const files = await make();
    const m = meta('t-broken', 800);
    // The file's own key already holds something else: the write after the claim fails (WRONGTYPE).
    await clientOf.get(files)!.set(keys.file(m.id), 'not a hash', 'PX', 60_000);
    await expect(files.put(m, Buffer.alloc(800), 1000)).rejects.toThrow();
    expect(await files.list('t-broken', { limit: 10 })).toEqual({ files: [], hasMore: false });
    expect(await files.put(meta('t-broken', 1000), Buffer.alloc(1000), 1000)).toEqual({ stored: true });
  });
});
