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
  body?: string;
}

export interface TerminalRecord {
  id: string;
  tenant: string;
  json: string;
  status: string;
  predictTime: number;
  /** What the prediction cost by the price table (0 without one): settles its budget reservation, if any. */
  cost?: number;
  day: string;
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
  /** The budget reservation this create made: now bound to the prediction id, its create spent, until `expiresAt`. */
  reservation?: { rid: string; expiresAt: number };
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
  /** Owner and cached terminal prediction in one round trip: the hot path of GET and cancel. */
  lookup(id: string): Promise<{ owner: string | null; terminal: string | null }>;
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
   * Caches a terminal prediction. The first time an id is seen terminal, its usage (status count and predict time)
   * is added to the tenant's day, exactly once across replicas.
   */
  recordTerminal(rec: TerminalRecord): Promise<void>;
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
