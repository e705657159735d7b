// Redis store (ioredis): everything replicas must agree on. Multi-step updates are single Lua scripts, so two
// replicas can never interleave between a check and an update.
import { Redis } from 'ioredis';
import { storeUnavailable } from '../errors.js';
import type { CreateRecord, IdempotencyRecord, IndexEntry, ListQuery, Store, StoreOptions, TerminalRecord, UsageDay } from './store.js';
import { USAGE_TTL_SECONDS } from './store.js';

// Caching a terminal prediction, and counting its usage the first time an id is seen terminal (once across
// replicas): a Lua function both scripts below share.
const TERMINAL_FN = `
local function terminal(term, seen, usage, json, cacheTtl, predictionTtl, status, predictTime, usageTtl)
  redis.call('SET', term, json, 'EX', cacheTtl)
  if redis.call('SET', seen, '1', 'NX', 'EX', predictionTtl) then
    redis.call('HINCRBY', usage, status, 1)
    if tonumber(predictTime) > 0 then redis.call('HINCRBYFLOAT', usage, 'predict_time', predictTime) end
    redis.call('EXPIRE', usage, usageTtl)
  end
end
`;

// KEYS: term, seen, usage. ARGV: json, cacheTtl, predictionTtl, status, predictTime, usageTtl.
const RECORD_TERMINAL = `${TERMINAL_FN}
terminal(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
return 1`;

// KEYS: own, rec, idx, usage, term, seen, idem.
// ARGV: tenant, json, score, id, predictionTtl, usageTtl, oldestScore, terminal status ('' if not terminal),
// predictTime, cacheTtl, idem record ('' for none), idem ttl.
// One script for the whole create path: the owner is set only if absent (0 and nothing written when another tenant
// has it), so a retry after a lost answer is harmless and a reused id never changes hands.
const RECORD_CREATE = `${TERMINAL_FN}
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[5]) then
  if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
end
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[5])
if redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4]) == 1 then
  redis.call('HINCRBY', KEYS[4], 'creates', 1)
  redis.call('EXPIRE', KEYS[4], ARGV[6])
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. ARGV[7])
redis.call('EXPIRE', KEYS[3], ARGV[5])
if ARGV[8] ~= '' then terminal(KEYS[5], KEYS[6], KEYS[4], ARGV[2], ARGV[10], ARGV[5], ARGV[8], ARGV[9], ARGV[6]) end
if ARGV[11] ~= '' then redis.call('SET', KEYS[7], ARGV[11], 'EX', ARGV[12]) end
return 1`;

// KEYS: idem. ARGV: pending record, lease ms, holder. Returns nil when claimed (now, or earlier by the same holder),
// else the record that holds the key.
const IDEM_BEGIN = `
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
local v = redis.call('GET', KEYS[1])
if v then
  local ok, r = pcall(cjson.decode, v)
  if ok and r.state == 'pending' and r.holder == ARGV[3] then return false end
end
return v`;

// KEYS: counter. ARGV: ttl ms. A fixed window: the expiry is set by the first increment only.
const INCR_COUNTER = `
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n`;

interface ScriptedRedis extends Redis {
  fgwRecordTerminal(...args: (string | number)[]): Promise<number>;
  fgwRecordCreate(...args: (string | number)[]): Promise<number>;
  fgwIdemBegin(...args: (string | number)[]): Promise<string | null>;
  fgwIncr(...args: (string | number)[]): Promise<number>;
}

/** Every Redis failure becomes one 503 the client can act on; the cause stays for the log. */
function unavailable(err: unknown): never {
  throw storeUnavailable(err);
}

/** Longest a single Redis command may take; every script the gateway runs is a few keys and microseconds. */
export const COMMAND_TIMEOUT_MS = 2000;

export function createRedisClient(url: string, keyPrefix: string, onEvent?: (event: string, detail?: string) => void): Redis {
  const client = new Redis(url, {
    keyPrefix,
    // Fail fast while disconnected (503 + Retry-After) instead of queueing requests behind an outage.
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    // A Redis that holds the connection open but stops answering (paused, swapping, a network black hole) would
    // otherwise hold every request forever: each command fails after this long instead, and the request gets 503.
    commandTimeout: COMMAND_TIMEOUT_MS,
    enableAutoPipelining: true,
    connectTimeout: 5000,
    // Reconnect forever with backoff capped at 5 s: recovery after an outage needs no restart.
    retryStrategy: (times) => Math.min(100 * 2 ** Math.min(times, 6), 5000),
    lazyConnect: false,
  });
  client.on('ready', () => onEvent?.('ready'));
  client.on('error', (err: Error) => onEvent?.('error', err.message));
  client.on('close', () => onEvent?.('error', 'connection closed'));
  return client;
}

export class RedisStore implements Store {
  readonly kind = 'redis' as const;
  readonly #client: ScriptedRedis;
  readonly #opts: StoreOptions;
  readonly #owned: boolean;

  /** `owned`: this store created the client and so closes it. */
  constructor(client: Redis, opts: StoreOptions, owned = true) {
    this.#client = client as ScriptedRedis;
    this.#opts = opts;
    this.#owned = owned;
    const define = (name: string, numberOfKeys: number, lua: string) => {
      if (!(name in client)) client.defineCommand(name, { numberOfKeys, lua });
    };
    define('fgwRecordTerminal', 3, RECORD_TERMINAL);
    define('fgwRecordCreate', 7, RECORD_CREATE);
    define('fgwIdemBegin', 1, IDEM_BEGIN);
    define('fgwIncr', 1, INCR_COUNTER);
  }

  isReady(): boolean {
    return this.#client.status === 'ready';
  }

  async lookup(id: string) {
    const [owner, terminal] = await this.#client.mget(`own:${id}`, `term:${id}`).catch(unavailable);
    return { owner: owner ?? null, terminal: terminal ?? null };
  }

  async recordCreate(r: CreateRecord): Promise<boolean> {
    const ttl = this.#opts.predictionTtlSeconds;
    const oldest = (Date.now() - ttl * 1000) * 1000;
    const idemKey = r.idem ? `idem:${r.idem.key}` : `idem:-`;
    const written = await this.#client
      .fgwRecordCreate(
        `own:${r.id}`, `rec:${r.id}`, `idx:${r.tenant}`, `usage:${r.tenant}:${r.day}`, `term:${r.id}`, `seen:${r.id}`, idemKey,
        r.tenant, r.json, r.score, r.id, ttl, USAGE_TTL_SECONDS, oldest,
        r.terminal?.status ?? '', r.terminal?.predictTime ?? 0, this.#opts.cacheTtlSeconds,
        r.idem ? JSON.stringify(r.idem.record) : '', r.idem?.ttlSeconds ?? 0,
      )
      .catch(unavailable);
    return Number(written) === 1;
  }

  async recordTerminal(rec: TerminalRecord): Promise<void> {
    await this.#client
      .fgwRecordTerminal(
        `term:${rec.id}`, `seen:${rec.id}`, `usage:${rec.tenant}:${rec.day}`,
        rec.json, this.#opts.cacheTtlSeconds, this.#opts.predictionTtlSeconds, rec.status, rec.predictTime, USAGE_TTL_SECONDS,
      )
      .catch(unavailable);
  }

  async listPage(tenant: string, q: ListQuery): Promise<{ entries: IndexEntry[]; hasMore: boolean }> {
    const key = `idx:${tenant}`;
    const n = q.limit + 1;
    let flat: string[];
    if (q.after !== undefined) {
      flat = await this.#client.zrangebyscore(key, `(${q.after}`, '+inf', 'WITHSCORES', 'LIMIT', 0, n).catch(unavailable);
    } else {
      const max = q.before !== undefined ? `(${q.before}` : '+inf';
      flat = await this.#client.zrevrangebyscore(key, max, '-inf', 'WITHSCORES', 'LIMIT', 0, n).catch(unavailable);
    }
    let pairs: { id: string; score: number }[] = [];
    for (let i = 0; i < flat.length; i += 2) pairs.push({ id: flat[i]!, score: Number(flat[i + 1]) });
    const hasMore = pairs.length > q.limit;
    pairs = pairs.slice(0, q.limit);
    if (q.after !== undefined) pairs.reverse();
    if (pairs.length === 0) return { entries: [], hasMore: false };
    const values = await this.#client
      .mget(...pairs.flatMap((p) => [`term:${p.id}`, `rec:${p.id}`]))
      .catch(unavailable);
    const entries: IndexEntry[] = [];
    const expired: string[] = [];
    pairs.forEach((p, i) => {
      const json = values[2 * i] ?? values[2 * i + 1];
      if (json) entries.push({ id: p.id, score: p.score, json });
      else expired.push(p.id);
    });
    // An index entry whose record expired is dead weight: drop it so later pages stay full.
    if (expired.length) this.#client.zrem(key, ...expired).catch(() => {});
    return { entries, hasMore };
  }

  async idemBegin(key: string, fingerprint: string, leaseMs: number, holder: string): Promise<IdempotencyRecord | null> {
    const pending: IdempotencyRecord = { state: 'pending', fingerprint, holder };
    const existing = await this.#client.fgwIdemBegin(`idem:${key}`, JSON.stringify(pending), leaseMs, holder).catch(unavailable);
    return existing ? (JSON.parse(existing) as IdempotencyRecord) : null;
  }

  async idemGet(key: string): Promise<IdempotencyRecord | null> {
    const v = await this.#client.get(`idem:${key}`).catch(unavailable);
    return v ? (JSON.parse(v) as IdempotencyRecord) : null;
  }

  async idemComplete(key: string, rec: IdempotencyRecord, ttlSeconds: number): Promise<void> {
    await this.#client.set(`idem:${key}`, JSON.stringify(rec), 'EX', ttlSeconds).catch(unavailable);
  }

  async idemRelease(key: string): Promise<void> {
    await this.#client.del(`idem:${key}`).catch(unavailable);
  }

  async versionModel(version: string): Promise<string | null> {
    return (await this.#client.get(`ver:${version}`).catch(unavailable)) ?? null;
  }

  async learnVersions(pairs: readonly (readonly [string, string])[]): Promise<void> {
    if (!pairs.length) return;
    const m = this.#client.multi();
    for (const [v, model] of pairs) m.set(`ver:${v}`, model, 'EX', USAGE_TTL_SECONDS, 'NX');
    await m.exec().catch(unavailable);
  }

  async incrCounter(key: string, ttlMs: number): Promise<number> {
    return Number(await this.#client.fgwIncr(`cnt:${key}`, ttlMs).catch(unavailable));
  }

  async usageGet(tenant: string, days: string[]): Promise<Record<string, UsageDay>> {
    const pipe = this.#client.pipeline();
    for (const day of days) pipe.hgetall(`usage:${tenant}:${day}`);
    const results = (await pipe.exec().catch(unavailable)) ?? [];
    const out: Record<string, UsageDay> = {};
    results.forEach(([err, value], i) => {
      if (err) unavailable(err);
      const h = value as Record<string, string>;
      if (h && Object.keys(h).length) {
        out[days[i]!] = Object.fromEntries(Object.entries(h).map(([k, v]) => [k, Number(v)]));
      }
    });
    return out;
  }

  async close(): Promise<void> {
    if (!this.#owned) return;
    await this.#client.quit().catch(() => this.#client.disconnect());
  }
}
