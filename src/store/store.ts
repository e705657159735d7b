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
  day: string;
}

export interface CreateRecord {
  tenant: string;
  id: string;
  /** Index order: creation time in microseconds. */
  score: number;
  json: string;
  day: string;
  terminal?: { status: string; predictTime: number };
  idem?: { key: string; record: IdempotencyRecord; ttlSeconds: number };
}

export type UsageDay = Record<string, number>;

export interface Store {
  readonly kind: 'redis' | 'memory';
  /** True once the backing store can serve requests. */
  isReady(): boolean;
  /** Owner and cached terminal prediction in one round trip: the hot path of GET and cancel. */
  lookup(id: string): Promise<{ owner: string | null; terminal: string | null }>;
  /**
   * At create, in one atomic step: the owner (only if the id has none yet), the tenant's index entry, the
   * create-time record and the create count, all with the prediction TTL; with `terminal`, what recordTerminal
   * does too; with `idem`, the finished idempotency record. False when another tenant owns the id already: then
   * nothing is written (an upstream that answers a create with an existing id must not move it to a new owner).
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
  close(): Promise<void>;
}

export interface StoreOptions {
  predictionTtlSeconds: number;
  cacheTtlSeconds: number;
}

/** Usage hashes outlive a year of monthly chargeback runs. */
export const USAGE_TTL_SECONDS = 400 * 86400;
