// In-process store for a single gateway on a laptop: same contract as Redis, bounded by TTL, entry count and
// bytes (the prediction records, one body per prediction, share MEMORY_STORE_MAX_BYTES with idempotency records).
import { BoundedMap } from '../lib/bounded-map.js';
import type {
  BudgetTotals, CreateRecord, IdempotencyRecord, IndexEntry, ListQuery, Observation, OpenClaim, OpenEntry, OpenMeta, ReserveRequest, ReserveResult, Store, StoreOptions, TerminalRecord, UsageDay,
} from './store.js';
import { USAGE_TTL_SECONDS } from './store.js';

interface Reservation {
  lines: { key: string; field: 'creates' | 'seconds' | 'cost'; amount: number; committed: boolean }[];
  run: string | undefined;
  expiresAt: number;
}

export class MemoryStore implements Store {
  readonly kind = 'memory' as const;
  readonly #opts: StoreOptions;
  readonly #owners: BoundedMap<string>;
  /** Each prediction's upstream account, as the create named it. */
  readonly #pins: BoundedMap<string>;
  readonly #records: BoundedMap<string>;
  /** "The record is the end": served from the record for CACHE_TTL_SECONDS, as Redis's `term:` flag. */
  readonly #terminal: BoundedMap<true>;
  readonly #seen: BoundedMap<true>;
  readonly #idem: BoundedMap<IdempotencyRecord>;
  readonly #counters: BoundedMap<number>;
  readonly #usage: BoundedMap<UsageDay>;
  readonly #versions: BoundedMap<string>;
  /** Per tenant, entries sorted by score descending (newest first). */
  readonly #index = new Map<string, { id: string; score: number }[]>();
  readonly #maxEntries: number;
  // Budgets: hashes per tenant/token and period, running counts, share windows, and reservations by key
  // (`r:<rid>` until bound, then `p:<id>`), as redis-store.ts keeps them.
  readonly #budgets: BoundedMap<BudgetTotals>;
  readonly #running = new Map<string, number>();
  readonly #share: BoundedMap<Record<string, number>>;
  readonly #reservations = new Map<string, Reservation>();
  /** The earliest expiry among the reservations: a create sweeps them only when one is due, not on every call. */
  #nextExpiry = Infinity;
  /** The open set: every prediction created and not yet seen ending (bounded by the creates that are running). */
  readonly #open = new Map<string, { due: number; meta: OpenMeta; strikes: number }>();
  readonly #life: BoundedMap<{ r: number; l: number; d: string; v: number }>;
  readonly #slots = new Map<string, Map<string, number>>();
  #reads = { window: -1, used: 0 };

  constructor(opts: StoreOptions & { maxEntries: number; maxBytes?: number }) {
    this.#opts = opts;
    this.#maxEntries = opts.maxEntries;
    // The records get most of the byte budget, idempotency records (small: they name the prediction) the rest; JSON
    // text is about a byte a character.
    const maxBytes = opts.maxBytes ?? 256 * 1024 * 1024;
    const bodies = { maxEntries: opts.maxEntries, maxBytes: Math.floor(maxBytes * 0.75), sizeOf: (v: string, k: string) => v.length + k.length };
    this.#owners = new BoundedMap({ maxEntries: opts.maxEntries });
    this.#pins = new BoundedMap({ maxEntries: opts.maxEntries });
    this.#records = new BoundedMap(bodies);
    this.#terminal = new BoundedMap({ maxEntries: opts.maxEntries });
    this.#seen = new BoundedMap({ maxEntries: opts.maxEntries });
    this.#idem = new BoundedMap({ ...bodies, maxBytes: Math.floor(maxBytes * 0.25), sizeOf: (v: IdempotencyRecord, k: string) => (v.body?.length ?? 0) + k.length + 100 });
    this.#counters = new BoundedMap({ maxEntries: opts.maxEntries });
    this.#usage = new BoundedMap({ maxEntries: opts.maxEntries });
    this.#versions = new BoundedMap({ maxEntries: opts.maxEntries });
    this.#budgets = new BoundedMap({ maxEntries: opts.maxEntries });
    this.#share = new BoundedMap({ maxEntries: 16 });
    this.#life = new BoundedMap({ maxEntries: opts.maxEntries });
  }

  isReady(): boolean {
    return true;
  }

  async lookup(id: string) {
    return { owner: this.#owners.get(id) ?? null, terminal: this.#terminal.get(id) ? (this.#records.get(id) ?? null) : null, upstream: this.#pins.get(id) ?? null };
  }

  async recordCreate(r: CreateRecord): Promise<boolean> {
    const owner = this.#owners.get(r.id);
    if (owner !== undefined && owner !== r.tenant) return false;
    const ttl = this.#opts.predictionTtlSeconds * 1000;
    this.#owners.set(r.id, r.tenant, ttl);
    // The first upstream named stays, as in redis-store.ts.
    if (r.upstream && this.#pins.get(r.id) === undefined) this.#pins.set(r.id, r.upstream, ttl);
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
    // One reservation per prediction: an id the tenant has already keeps its own, and this create's goes back.
    if (r.reservation) {
      if (owner === undefined) this.#bind(r.reservation.rid, r.id, r.reservation.expiresAt);
      else this.#release(`r:${r.reservation.rid}`, undefined);
    }
    if (r.open && !this.#open.has(r.id)) this.#open.set(r.id, { due: r.open.due, meta: r.open.meta, strikes: 0 });
    if (r.terminal) this.#terminalSeen({ id: r.id, tenant: r.tenant, json: r.json, day: r.day, ...r.terminal });
    if (r.idem) this.#idem.set(r.idem.key, r.idem.record, r.idem.ttlSeconds * 1000);
    return true;
  }

  async recordTerminal(rec: TerminalRecord): Promise<boolean> {
    return this.#terminalSeen(rec);
  }

  #terminalSeen(rec: TerminalRecord): boolean {
    this.#release(`p:${rec.id}`, rec.spendReserved ? 'reserved' : { seconds: rec.predictTime, cost: rec.cost ?? 0 });
    if (rec.json !== undefined) {
      this.#terminal.set(rec.id, true, this.#opts.cacheTtlSeconds * 1000);
      const ttl = this.#records.has(rec.id) ? this.#records.expiresIn(rec.id) : this.#opts.cacheTtlSeconds * 1000;
      this.#records.set(rec.id, rec.json, ttl);
      // Rank 2: a late running state (a read that started before the end) is never written over the end.
      this.#life.set(rec.id, { r: 2, l: 0, d: '', v: (this.#life.get(rec.id)?.v ?? 0) + 1 }, this.#opts.predictionTtlSeconds * 1000);
    }
    this.#open.delete(rec.id);
    if (this.#seen.get(rec.id)) return false;
    this.#seen.set(rec.id, true, this.#opts.predictionTtlSeconds * 1000);
    this.#addUsage(rec.tenant, rec.day, rec.status, 1);
    if (rec.predictTime > 0) this.#addUsage(rec.tenant, rec.day, 'predict_time', rec.predictTime);
    return true;
  }

  async rewriteTerminal(id: string, json: string, keepSeconds: number): Promise<boolean> {
    if (!this.#records.has(id)) return false;
    this.#records.set(id, json, this.#records.expiresIn(id));
    this.#terminal.set(id, true, Math.max(keepSeconds * 1000, this.#terminal.expiresIn(id)));
    return true;
  }

  async current(id: string): Promise<{ record: string | null; open: boolean; version: number }> {
    return { record: this.#records.get(id) ?? null, open: this.#open.has(id), version: this.#life.get(id)?.v ?? 0 };
  }

  async observe(o: Observation): Promise<number> {
    const last = this.#life.get(o.id);
    if (last && (o.rank < last.r || (o.rank === last.r && o.logs < last.l) || last.d === o.digest)) return 0;
    if (!this.#records.has(o.id)) return 0;
    this.#records.set(o.id, o.json, this.#records.expiresIn(o.id));
    const v = (last?.v ?? 0) + 1;
    this.#life.set(o.id, { r: o.rank, l: o.logs, d: o.digest, v }, this.#opts.predictionTtlSeconds * 1000);
    return v;
  }

  async slotAcquire(set: string, member: string, max: number, now: number, expiresAt: number): Promise<boolean> {
    let slots = this.#slots.get(set);
    if (!slots) this.#slots.set(set, (slots = new Map()));
    for (const [m, until] of slots) if (until <= now) slots.delete(m);
    if (slots.has(member)) return true;
    if (slots.size >= max) return false;
    slots.set(member, expiresAt);
    return true;
  }

  async slotRefresh(set: string, members: string[], expiresAt: number): Promise<void> {
    const slots = this.#slots.get(set);
    for (const m of members) if (slots?.has(m)) slots.set(m, expiresAt);
  }

  async slotRelease(set: string, member: string): Promise<void> {
    const slots = this.#slots.get(set);
    slots?.delete(member);
    if (slots?.size === 0) this.#slots.delete(set);
  }

  async openClaim(c: OpenClaim): Promise<OpenEntry[]> {
    if (this.#reads.window !== c.window) this.#reads = { window: c.window, used: 0 };
    const n = Math.min(c.max, c.windowLimit - this.#reads.used);
    if (n <= 0) return [];
    const due = [...this.#open].filter(([, e]) => e.due <= c.now).sort((a, b) => a[1].due - b[1].due).slice(0, n);
    this.#reads.used += due.length;
    return due.map(([id, e]) => {
      e.due = c.now + c.leaseMs;
      return { id, strikes: e.strikes, ...e.meta };
    });
  }

  async openSchedule(id: string, due: number, mode?: 'later' | 'earlier'): Promise<void> {
    const e = this.#open.get(id);
    if (e && (mode === undefined || (mode === 'later' ? due > e.due : due < e.due))) e.due = due;
  }

  async openStrike(id: string): Promise<number> {
    const e = this.#open.get(id);
    return e ? ++e.strikes : 0;
  }

  async openStats(now: number): Promise<{ open: number; oldestDue: number | null }> {
    let oldest: number | null = null;
    for (const e of this.#open.values()) if (e.due <= now && (oldest === null || e.due < oldest)) oldest = e.due;
    return { open: this.#open.size, oldestDue: oldest };
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
    const entries = slice.map((e) => ({ id: e.id, score: e.score, json: this.#records.get(e.id)! }));
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

  async reserve(r: ReserveRequest): Promise<ReserveResult> {
    if (r.now >= this.#nextExpiry) {
      this.#nextExpiry = Infinity;
      for (const [k, v] of this.#reservations) {
        if (v.expiresAt <= r.now) this.#release(k, undefined);
        else this.#nextExpiry = Math.min(this.#nextExpiry, v.expiresAt);
      }
    }
    const remaining: number[] = [];
    for (const [i, l] of r.lines.entries()) {
      const h = this.#budgets.get(l.key) ?? {};
      const spent = h[`${l.field}:s`] ?? 0;
      const reserved = h[`${l.field}:r`] ?? 0;
      if (spent + reserved + l.amount > l.max + 1e-9 || (l.amount === 0 && spent + reserved >= l.max - 1e-9)) {
        return { ok: false, reason: 'budget', line: i, spent, reserved };
      }
      remaining.push(l.max - spent - reserved - l.amount);
    }
    const running = r.running ? this.#running.get(r.running.tenant) ?? 0 : 0;
    if (r.running?.max !== undefined && running >= r.running.max) return { ok: false, reason: 'running', running };
    const sh = r.share;
    if (sh) {
      const used = this.#share.get(sh.windowKey) ?? {};
      const active = new Set([...Object.keys(used), ...Object.keys(this.#share.get(sh.previousKey) ?? {})]);
      const total = Object.values(used).reduce((a, b) => a + b, 0);
      const shareOf = (t: string) => (sh.limit * (sh.weights[t] ?? sh.defaultWeight)) / sh.totalWeight;
      const mine = used[sh.tenant] ?? 0;
      const refuse = (reason: 'share' | 'account') => ({ ok: false as const, reason, used: mine, total, share: shareOf(sh.tenant) });
      if (total >= sh.limit) return refuse('account');
      if (mine >= shareOf(sh.tenant)) {
        let held = 0;
        for (const t of active) if (t !== sh.tenant && shareOf(t) > (used[t] ?? 0)) held += Math.ceil(shareOf(t) - (used[t] ?? 0) - 1e-9);
        if (total + held >= sh.limit) return refuse('share');
      }
      this.#share.set(sh.windowKey, { ...used, [sh.tenant]: mine + 1 }, this.#share.has(sh.windowKey) ? this.#share.expiresIn(sh.windowKey) : sh.windowTtlMs);
    }
    for (const l of r.lines) this.#addBudget(l.key, `${l.field}:r`, l.amount, l.ttlSeconds * 1000);
    if (r.running) this.#running.set(r.running.tenant, running + 1);
    if (r.lines.length || r.running) {
      this.#reservations.set(`r:${r.rid}`, {
        lines: r.lines.map((l) => ({ key: l.key, field: l.field, amount: l.amount, committed: false })),
        run: r.running?.tenant,
        expiresAt: r.expiresAt,
      });
      this.#nextExpiry = Math.min(this.#nextExpiry, r.expiresAt);
    }
    return { ok: true, remaining, running: running + (r.running ? 1 : 0) };
  }

  async releaseReservation(_tenant: string, rid: string): Promise<void> {
    this.#release(`r:${rid}`, undefined);
  }

  async settleReservation(_tenant: string, rid: string, actual: { seconds: number; cost: number }): Promise<void> {
    this.#release(`r:${rid}`, actual);
  }

  async budgetGet(keys: string[]): Promise<BudgetTotals[]> {
    return keys.map((k) => ({ ...this.#budgets.get(k) }));
  }

  async runningGet(tenants: string[]): Promise<number[]> {
    return tenants.map((t) => this.#running.get(t) ?? 0);
  }

  async close(): Promise<void> {}

  #addBudget(key: string, field: string, by: number, ttlMs?: number): void {
    const h = this.#budgets.get(key) ?? {};
    h[field] = (h[field] ?? 0) + by;
    this.#budgets.set(key, h, ttlMs ?? (this.#budgets.has(key) ? this.#budgets.expiresIn(key) : USAGE_TTL_SECONDS * 1000));
  }

  /** The create is now a prediction: its create counts as spent, the rest stays reserved until it ends. */
  #bind(rid: string, id: string, expiresAt: number): void {
    const rec = this.#reservations.get(`r:${rid}`);
    if (!rec) return;
    this.#reservations.delete(`r:${rid}`);
    for (const l of rec.lines) {
      if (l.field !== 'creates' || l.committed) continue;
      this.#addBudget(l.key, 'creates:r', -l.amount);
      this.#addBudget(l.key, 'creates:s', l.amount);
      l.amount = 0;
      l.committed = true;
    }
    this.#reservations.set(`p:${id}`, { ...rec, expiresAt });
    this.#nextExpiry = Math.min(this.#nextExpiry, expiresAt);
  }

  /**
   * Release (no `actual`) or settle a reservation (`reserved`: spend what it holds, the estimate of an expired
   * prediction); the first call deletes it, so a second one does nothing.
   */
  #release(key: string, actual: { seconds: number; cost: number } | 'reserved' | undefined): void {
    const rec = this.#reservations.get(key);
    if (!rec) return;
    this.#reservations.delete(key);
    for (const l of rec.lines) {
      if (l.amount !== 0) this.#addBudget(l.key, `${l.field}:r`, -l.amount);
      if (!actual) continue;
      const add = l.field === 'creates' ? (l.committed ? 0 : 1) : actual === 'reserved' ? l.amount : actual[l.field];
      if (add > 0) this.#addBudget(l.key, `${l.field}:s`, add);
    }
    if (rec.run !== undefined) this.#running.set(rec.run, Math.max(0, (this.#running.get(rec.run) ?? 0) - 1));
  }

  #addUsage(tenant: string, day: string, field: string, by: number): void {
    const key = `${tenant}:${day}`;
    const u = this.#usage.get(key) ?? {};
    u[field] = (u[field] ?? 0) + by;
    this.#usage.set(key, u, USAGE_TTL_SECONDS * 1000);
  }
}
