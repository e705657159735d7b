// The state the gateway shares between replicas, behind one small interface (Redis or in-memory).

/** One entry of a tenant's prediction index; `json` is the cached terminal prediction, else the create-time record. */
export interface IndexEntry {
  id: string;
  score: number;
  json: string;
}

export interface ListQuery {
  limit: number;
  /** Entries strictly older than this score (the `next` page). */
  before?: number;
  /** Entries strictly newer than this score (the `previous` page). */
  after?: number;
}

export interface IdempotencyRecord {
  state: 'pending' | 'done';
  fingerprint: string;
  /** Who claimed a pending key (one request). */
  holder?: string;
  status?: number;
  /** The prediction the create made: a replay answers its record (one stored body per prediction). */
  id?: string;
  /** What an older gateway stored instead of `id`: the answer itself, replayed as it is. */
  body?: string;
}

export interface TerminalRecord {
  id: string;
  tenant: string;
  /** The terminal prediction, cached and written over its record; absent for a prediction settled as expired. */
  json?: string;
  /** The status usage counts it under: the prediction's own, or `expired` when the gateway gave up on it. */
  status: string;
  predictTime: number;
  /** What the prediction cost by the price table (0 without one): settles its budget reservation, if any. */
  cost?: number;
  /** Spend what the reservation holds (the estimate) instead of the actual figures: an expired prediction's. */
  spendReserved?: boolean;
  day: string;
}

/** What the watcher needs of an open prediction, kept with it in the open set. */
export interface OpenMeta {
  tenant: string;
  /** When the create was answered (ms since the epoch). */
  createdAt: number;
  /** The tenant's webhook for it, as src/webhooks/ keeps it (JSON), if the create had one. */
  webhook?: string;
  /** The upstream calls the gateway back about it (WEBHOOK_MODE=upstream): polling is only the fallback. */
  hinted?: boolean;
  /** The upstream account that created it (absent: the first one listed, as before there were several). */
  upstream?: string;
}

/** One open prediction leased to this replica by openClaim. */
export interface OpenEntry extends OpenMeta {
  id: string;
  /** How many looks found the upstream answering 404 for it. */
  strikes: number;
}

export interface CreateRecord {
  tenant: string;
  id: string;
  /** Index order: creation time in microseconds. */
  score: number;
  json: string;
  day: string;
  terminal?: { status: string; predictTime: number; cost?: number };
  idem?: { key: string; record: IdempotencyRecord; ttlSeconds: number };
  /** The upstream account that created it: stored with the owner (same step), so every replica sends its reads there. */
  upstream?: string;
  /**
   * The budget reservation this create made: now bound to the prediction id, its create spent, until `expiresAt`.
   * An id the tenant already has (a deduplicating upstream) keeps its first reservation; this one is released.
   */
  reservation?: { rid: string; expiresAt: number };
  /** A create that did not come back terminal enters the open set, first due at `due` (only if the id is new). */
  open?: { due: number; meta: OpenMeta };
}

/** The watcher's claim of due predictions: at most `max`, within what is left of the shared upstream read budget. */
export interface OpenClaim {
  now: number;
  max: number;
  /** A claimed prediction is not due again (for any replica) before this long, unless rescheduled. */
  leaseMs: number;
  /** The read budget's current window (a number naming it) and how many reads it allows in all. */
  window: number;
  windowLimit: number;
}

/** A non-terminal prediction as last seen: written over its record only when it is newer than what is there. */
export interface Observation {
  id: string;
  json: string;
  /** 0 starting, 1 processing: a later status never steps back to an earlier one. */
  rank: number;
  /** The length of its logs, which only grow. */
  logs: number;
  /** Names what a client would see change (status, logs, output). */
  digest: string;
}

/** What a budget counts: creates, seconds of predict_time, and money by the price table. */
export type BudgetField = 'creates' | 'seconds' | 'cost';

/** One ceiling a create must fit under: a field of a budget hash (one per tenant or token, per period). */
export interface BudgetLine {
  key: string;
  field: BudgetField;
  max: number;
  /** What this create reserves: 1 create, the expected seconds or cost. */
  amount: number;
  ttlSeconds: number;
}

/** The tenant's place in the split of the upstream account's create rate (UPSTREAM_CREATE_LIMIT). */
export interface ShareRequest {
  tenant: string;
  /** Keys of this fixed window's and the previous window's per-tenant create counts. */
  windowKey: string;
  previousKey: string;
  windowTtlMs: number;
  limit: number;
  /** Weights that are not `defaultWeight`, and the sum over every tenant. */
  weights: Record<string, number>;
  defaultWeight: number;
  totalWeight: number;
}

export interface ReserveRequest {
  /** Whose reservation it is: every key it holds is under this tenant's hash tag. */
  tenant: string;
  /** The reservation's own id until the upstream names the prediction (recordCreate binds it). */
  rid: string;
  now: number;
  /** Released at this time if nothing binds or settles it first (a process that died mid-create). */
  expiresAt: number;
  lines: BudgetLine[];
  /** Count the create as running for this tenant; with `max`, refuse past it. */
  running?: { tenant: string; max?: number; ttlSeconds: number };
  share?: ShareRequest;
}

export type ReserveResult =
  | { ok: true; remaining: number[]; running: number }
  | { ok: false; reason: 'budget'; line: number; spent: number; reserved: number }
  | { ok: false; reason: 'running'; running: number }
  | { ok: false; reason: 'share' | 'account'; used: number; total: number; share: number };

/** A budget hash: `<field>:s` spent and `<field>:r` reserved. */
export type BudgetTotals = Record<string, number>;

export type UsageDay = Record<string, number>;

export interface Store {
  readonly kind: 'redis' | 'memory';
  /** True once the backing store can serve requests. */
  isReady(): boolean;
  /** Owner, cached terminal prediction and upstream account in one round trip: the hot path of GET and cancel. */
  lookup(id: string): Promise<{ owner: string | null; terminal: string | null; upstream: string | null }>;
  /**
   * At create: the owner (only if the id has none yet), the tenant's index entry, the create-time record and the
   * create count, all with the prediction TTL; with `terminal`, what recordTerminal does too; with `idem`, the
   * finished idempotency record. False when another tenant owns the id already: then nothing is written (an
   * upstream that answers a create with an existing id must not move it to a new owner). One atomic step, except
   * on a Redis Cluster: there the prediction's part comes first, and the tenant's part, idempotent, after it, so a
   * retry of the whole call after a failure between them completes it.
   */
  recordCreate(rec: CreateRecord): Promise<boolean>;
  /**
   * A prediction ended: caches the terminal body and writes it over the record, settles the budget reservation (once:
   * the first settle deletes it), frees its running slot, and takes it out of the open set. The first time an id is
   * seen terminal, its usage (status count and predict time) is added to the tenant's day, exactly once across
   * replicas: then the answer is true, and the caller runs what must happen once (events, webhooks).
   */
  recordTerminal(rec: TerminalRecord): Promise<boolean>;
  /**
   * Writes a terminal body over the cached one and the record (which keeps its expiry), after something of the
   * gateway's own changed it (kept outputs: src/outputs/); the cache then lasts at least `keepSeconds`. Nothing is
   * written once the record is gone; true if it was written.
   */
  rewriteTerminal(id: string, json: string, keepSeconds: number): Promise<boolean>;
  /**
   * The prediction as the gateway last saw it (its record: the end is written over it), whether it is open, and its
   * version: a number that grows with every state written over the record (browser streams resume from it).
   */
  current(id: string): Promise<{ record: string | null; open: boolean; version: number }>;
  /** Writes a running prediction over its record if it shows something newer: its new version, or 0 if it did not. */
  observe(o: Observation): Promise<number>;
  /** The open predictions due now, oldest due first, leased to the caller (they are not due again for `leaseMs`). */
  openClaim(c: OpenClaim): Promise<OpenEntry[]>;
  /**
   * When an open prediction is next due. `later`: only if that is later than now scheduled (a client's look
   * postpones the watcher's, never brings it forward); `earlier`: only if sooner (a browser stream wants it looked at
   * often). Nothing happens to a prediction no longer open.
   */
  openSchedule(id: string, due: number, mode?: 'later' | 'earlier'): Promise<void>;
  /**
   * Takes one of `max` slots in a set (the open streams of a tenant or an address), until `expiresAt` unless
   * refreshed: slots of a replica that died lapse by themselves. False when the set is full.
   */
  slotAcquire(set: string, member: string, max: number, now: number, expiresAt: number): Promise<boolean>;
  /** Moves the expiry of slots this replica still holds. */
  slotRefresh(set: string, members: string[], expiresAt: number): Promise<void>;
  slotRelease(set: string, member: string): Promise<void>;
  /** Counts a look that found the upstream answering 404; the count so far. */
  openStrike(id: string): Promise<number>;
  /** How many predictions are open, and when the most overdue of them was due (null: none is due). */
  openStats(now: number): Promise<{ open: number; oldestDue: number | null }>;
  /** A page of the tenant's index, newest first. `hasMore` says whether more entries lie beyond the page. */
  listPage(tenant: string, q: ListQuery): Promise<{ entries: IndexEntry[]; hasMore: boolean }>;
  /**
   * Atomically claims an idempotency key for `holder`, or returns the record that already holds it. A pending claim
   * by the same holder counts as claimed: a request retrying after its answer was lost finds its own claim.
   */
  idemBegin(key: string, fingerprint: string, leaseMs: number, holder: string): Promise<IdempotencyRecord | null>;
  idemGet(key: string): Promise<IdempotencyRecord | null>;
  idemComplete(key: string, rec: IdempotencyRecord, ttlSeconds: number): Promise<void>;
  idemRelease(key: string): Promise<void>;
  /** The model a version hash belongs to, as learned from model reads and predictions; null when unknown. */
  versionModel(version: string): Promise<string | null>;
  /** Remembers version → model pairs; the first mapping learned for a version stays (a version never moves). */
  learnVersions(pairs: readonly (readonly [version: string, model: string])[]): Promise<void>;
  /** Atomic counter with an expiry set on first use; returns the new count. */
  incrCounter(key: string, ttlMs: number): Promise<number>;
  usageGet(tenant: string, days: string[]): Promise<Record<string, UsageDay>>;
  /**
   * Admission: first releases the tenant's reservations past their expiry; then refuses if any line would pass
   * its max (spent + reserved + amount), the running count is at its max, or the tenant is over its share of the
   * upstream create rate while the rest is held for others; else reserves every line, counts the create as running
   * and in the share window, and keeps a reservation record for the settle. The tenant's part is one atomic step;
   * the share (gateway-wide, its own hash slot) is checked after it, and a refusal there releases the tenant's part.
   * Every line's key is the tenant's (src/store/keys.ts), so the tenant's part stays within one slot.
   */
  reserve(r: ReserveRequest): Promise<ReserveResult>;
  /** A create that reached no prediction: its reservation is dropped as if never made. */
  releaseReservation(tenant: string, rid: string): Promise<void>;
  /** A create whose outcome is unknown (timed out): its reservation becomes spent, at the amounts given. */
  settleReservation(tenant: string, rid: string, actual: { seconds: number; cost: number }): Promise<void>;
  budgetGet(keys: string[]): Promise<BudgetTotals[]>;
  runningGet(tenants: string[]): Promise<number[]>;
  close(): Promise<void>;
}

export interface StoreOptions {
  predictionTtlSeconds: number;
  cacheTtlSeconds: number;
}

/** Usage hashes outlive a year of monthly chargeback runs. */
export const USAGE_TTL_SECONDS = 400 * 86400;

/** An open prediction's metadata as stored (JSON); a missing or broken one still names no tenant rather than throw. */
export function parseMeta(raw: string): OpenMeta {
  try {
    const m = JSON.parse(raw) as Partial<OpenMeta>;
    return { tenant: String(m.tenant ?? ''), createdAt: Number(m.createdAt ?? 0), webhook: m.webhook, hinted: m.hinted, upstream: m.upstream };
  } catch {
    return { tenant: '', createdAt: 0 };
  }
}
