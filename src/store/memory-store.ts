// In-process store for a single gateway on a laptop: same contract as Redis, bounded by TTL, entry count and
// bytes (the prediction bodies, which can carry whole images as data: URIs, share MEMORY_STORE_MAX_BYTES).
import { BoundedMap } from '../lib/bounded-map.js';
import type { CreateRecord, IdempotencyRecord, IndexEntry, ListQuery, Store, StoreOptions, TerminalRecord, UsageDay } from './store.js';
import { USAGE_TTL_SECONDS } from './store.js';

export class MemoryStore implements Store {
  readonly kind = 'memory' as const;
  readonly #opts: StoreOptions;
  readonly #owners: BoundedMap<string>;
  readonly #records: BoundedMap<string>;
  readonly #terminal: BoundedMap<string>;
  readonly #seen: BoundedMap<true>;
  readonly #idem: BoundedMap<IdempotencyRecord>;
  readonly #counters: BoundedMap<number>;
  readonly #usage: BoundedMap<UsageDay>;
  readonly #versions: BoundedMap<string>;
  /** Per tenant, entries sorted by score descending (newest first). */
  readonly #index = new Map<string, { id: string; score: number }[]>();
  readonly #maxEntries: number;

  constructor(opts: StoreOptions & { maxEntries: number; maxBytes?: number }) {
    this.#opts = opts;
    this.#maxEntries = opts.maxEntries;
    // The three maps that hold bodies get a third of the byte budget each; JSON text is about a byte a character.
    const third = Math.floor((opts.maxBytes ?? 256 * 1024 * 1024) / 3);
    const bodies = { maxEntries: opts.maxEntries, maxBytes: third, sizeOf: (v: string, k: string) => v.length + k.length };
    this.#owners = new BoundedMap({ maxEntries: opts.maxEntries });
    this.#records = new BoundedMap(bodies);
    this.#terminal = new BoundedMap(bodies);
    this.#seen = new BoundedMap({ maxEntries: opts.maxEntries });
    this.#idem = new BoundedMap({ ...bodies, sizeOf: (v: IdempotencyRecord, k: string) => (v.body?.length ?? 0) + k.length + 100 });
    this.#counters = new BoundedMap({ maxEntries: opts.maxEntries });
    this.#usage = new BoundedMap({ maxEntries: opts.maxEntries });
    this.#versions = new BoundedMap({ maxEntries: opts.maxEntries });
  }

  isReady(): boolean {
    return true;
  }

  async lookup(id: string) {
    return { owner: this.#owners.get(id) ?? null, terminal: this.#terminal.get(id) ?? null };
  }

  async recordCreate(r: CreateRecord): Promise<boolean> {
    const owner = this.#owners.get(r.id);
    if (owner !== undefined && owner !== r.tenant) return false;
    const ttl = this.#opts.predictionTtlSeconds * 1000;
    this.#owners.set(r.id, r.tenant, ttl);
    this.#records.set(r.id, r.json, ttl);
    let list = this.#index.get(r.tenant);
    if (!list) this.#index.set(r.tenant, (list = []));
    // An id this tenant already owns is a retried write: recorded and counted once.
    if (owner === undefined) {
      // Creates arrive almost in order, so the insertion point is nearly always the front.
      let i = 0;
      while (i < list.length && list[i]!.score > r.score) i++;
      list.splice(i, 0, { id: r.id, score: r.score });
      if (list.length > this.#maxEntries) list.length = this.#maxEntries;
      this.#addUsage(r.tenant, r.day, 'creates', 1);
    }
    if (r.terminal) this.#terminalSeen({ id: r.id, tenant: r.tenant, json: r.json, day: r.day, ...r.terminal });
    if (r.idem) this.#idem.set(r.idem.key, r.idem.record, r.idem.ttlSeconds * 1000);
    return true;
  }

  async recordTerminal(rec: TerminalRecord): Promise<void> {
    this.#terminalSeen(rec);
  }

  #terminalSeen(rec: TerminalRecord): void {
    this.#terminal.set(rec.id, rec.json, this.#opts.cacheTtlSeconds * 1000);
    if (this.#seen.get(rec.id)) return;
    this.#seen.set(rec.id, true, this.#opts.predictionTtlSeconds * 1000);
    this.#addUsage(rec.tenant, rec.day, rec.status, 1);
    if (rec.predictTime > 0) this.#addUsage(rec.tenant, rec.day, 'predict_time', rec.predictTime);
  }

  async listPage(tenant: string, q: ListQuery): Promise<{ entries: IndexEntry[]; hasMore: boolean }> {
    const list = this.#index.get(tenant) ?? [];
    // Drop entries whose records expired, as Redis would have.
    const live = list.filter((e) => this.#records.has(e.id));
    if (live.length !== list.length) this.#index.set(tenant, live);
    let slice: { id: string; score: number }[];
    let hasMore: boolean;
    if (q.after !== undefined) {
      const newer = live.filter((e) => e.score > q.after!);
      slice = newer.slice(Math.max(0, newer.length - q.limit));
      hasMore = newer.length > q.limit;
    } else {
      const older = q.before !== undefined ? live.filter((e) => e.score < q.before!) : live;
      slice = older.slice(0, q.limit);
      hasMore = older.length > q.limit;
    }
    const entries = slice.map((e) => ({ id: e.id, score: e.score, json: this.#terminal.get(e.id) ?? this.#records.get(e.id)! }));
    return { entries, hasMore };
  }

  async idemBegin(key: string, fingerprint: string, leaseMs: number, holder: string): Promise<IdempotencyRecord | null> {
    const existing = this.#idem.get(key);
    if (existing) return existing.state === 'pending' && existing.holder === holder ? null : existing;
    this.#idem.set(key, { state: 'pending', fingerprint, holder }, leaseMs);
    return null;
  }

  async idemGet(key: string): Promise<IdempotencyRecord | null> {
    return this.#idem.get(key) ?? null;
  }

  async idemComplete(key: string, rec: IdempotencyRecord, ttlSeconds: number): Promise<void> {
    this.#idem.set(key, rec, ttlSeconds * 1000);
  }

  async idemRelease(key: string): Promise<void> {
    this.#idem.delete(key);
  }

  async versionModel(version: string): Promise<string | null> {
    return this.#versions.get(version) ?? null;
  }

  async learnVersions(pairs: readonly (readonly [string, string])[]): Promise<void> {
    for (const [v, model] of pairs) if (!this.#versions.has(v)) this.#versions.set(v, model, USAGE_TTL_SECONDS * 1000);
  }

  async incrCounter(key: string, ttlMs: number): Promise<number> {
    const current = this.#counters.get(key);
    if (current === undefined) {
      this.#counters.set(key, 1, ttlMs);
      return 1;
    }
    // Keep the original expiry: this is a fixed window.
    this.#counters.set(key, current + 1, this.#counters.expiresIn(key));
    return current + 1;
  }

  async usageGet(tenant: string, days: string[]): Promise<Record<string, UsageDay>> {
    const out: Record<string, UsageDay> = {};
    for (const day of days) {
      const u = this.#usage.get(`${tenant}:${day}`);
      if (u) out[day] = { ...u };
    }
    return out;
  }

  async close(): Promise<void> {}

  #addUsage(tenant: string, day: string, field: string, by: number): void {
    const key = `${tenant}:${day}`;
    const u = this.#usage.get(key) ?? {};
    u[field] = (u[field] ?? 0) + by;
    this.#usage.set(key, u, USAGE_TTL_SECONDS * 1000);
  }
}
