// Files in this process (no REDIS_URL): bounded by the same byte budget as the memory store, so a laptop gateway
// cannot be made to hold more than MEMORY_STORE_MAX_BYTES of uploads. Past it, the least recently used go first.
import { BoundedMap } from '../lib/bounded-map.js';
import type { FileMeta, FilePage, FileStore } from './file-store.js';

export class MemoryFileStore implements FileStore {
  readonly #files: BoundedMap<{ meta: FileMeta; bytes: Buffer }>;
  /** Per tenant: its file ids in upload order (oldest first). */
  readonly #byTenant = new Map<string, Set<string>>();

  constructor(opts: { maxBytes: number; maxEntries?: number }) {
    this.#files = new BoundedMap({ maxEntries: opts.maxEntries ?? 100_000, maxBytes: opts.maxBytes, sizeOf: (v) => v.bytes.length + 512 });
  }

  /** The tenant's live files, dropping ids that expired or were evicted. */
  #live(tenant: string): FileMeta[] {
    const ids = this.#byTenant.get(tenant);
    if (!ids) return [];
    const out: FileMeta[] = [];
    for (const id of ids) {
      const f = this.#files.peek(id);
      if (f) out.push(f.meta);
      else ids.delete(id);
    }
    if (ids.size === 0) this.#byTenant.delete(tenant);
    return out;
  }

  async put(meta: FileMeta, bytes: Buffer, quotaBytes: number) {
    const usedBytes = this.#live(meta.tenant).reduce((n, f) => n + f.size, 0);
    if (usedBytes + meta.size > quotaBytes) return { stored: false as const, usedBytes };
    // A file larger than the whole budget is not kept: say so rather than answer 201 for nothing.
    if (!this.#files.set(meta.id, { meta, bytes }, Math.max(1, meta.expiresAt - Date.now()))) return { stored: false as const, usedBytes };
    let ids = this.#byTenant.get(meta.tenant);
    if (!ids) this.#byTenant.set(meta.tenant, (ids = new Set()));
    ids.add(meta.id);
    return { stored: true as const };
  }

  async meta(id: string) {
    return this.#files.peek(id)?.meta ?? null;
  }

  async content(id: string) {
    return this.#files.get(id) ?? null;
  }

  async delete(id: string, tenant: string) {
    const f = this.#files.peek(id);
    if (!f || f.meta.tenant !== tenant) return false;
    this.#files.delete(id);
    this.#byTenant.get(tenant)?.delete(id);
    return true;
  }

  async list(tenant: string, q: { limit: number; before?: number }): Promise<FilePage> {
    const newest = this.#live(tenant)
      .filter((f) => q.before === undefined || f.createdAt < q.before)
      .sort((a, b) => b.createdAt - a.createdAt);
    return { files: newest.slice(0, q.limit), hasMore: newest.length > q.limit };
  }
}
