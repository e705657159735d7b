// Redis store (ioredis): everything replicas must agree on. Multi-step updates are single Lua scripts, so two
// replicas can never interleave between a check and an update.
import { Redis } from 'ioredis';
import { storeUnavailable } from '../errors.js';
import type { BudgetTotals, CreateRecord, IdempotencyRecord, IndexEntry, ListQuery, ReserveRequest, ReserveResult, Store, StoreOptions, TerminalRecord, UsageDay } from './store.js';
import { USAGE_TTL_SECONDS } from './store.js';

// Budget reservations. A record (JSON) lists its lines as {hash key, field, amount, create spent?} and the running
// counter it holds a slot of; `rsvx` orders every record by expiry. Release takes the reserved amounts back; settle
// does the same and adds what was really spent; a record is deleted by the first of them, so a second is a no-op.
// Key names inside records are full names (KEYS as Lua sees them, prefix included). Only a reserve sweeps, up to 20
// records a call, so a reservation is released at the first reserve after its expiry.
const BUDGET_FN = `
-- A record outlives its expiry by a week, so the sweep (run by every reserve) finds it before Redis drops it.
local RECORD_MARGIN = 604800
local function release(rk, zkey, actual)
  redis.call('ZREM', zkey, rk)
  local v = redis.call('GET', rk)
  if not v then return 0 end
  redis.call('DEL', rk)
  local rec = cjson.decode(v)
  for _, l in ipairs(rec.l) do
    local a = tonumber(l[3])
    if a ~= 0 then redis.call('HINCRBYFLOAT', l[1], l[2] .. ':r', -a) end
    if actual then
      local add = actual[l[2]]
      if l[2] == 'creates' then add = (l[4] == 1) and 0 or 1 end
      if add and add > 0 then redis.call('HINCRBYFLOAT', l[1], l[2] .. ':s', add) end
    end
  end
  if rec.run ~= '' and redis.call('DECR', rec.run) < 0 then redis.call('SET', rec.run, '0') end
  return 1
end
local function sweep(zkey, now)
  for _, rk in ipairs(redis.call('ZRANGEBYSCORE', zkey, '-inf', now, 'LIMIT', 0, 20)) do release(rk, zkey, nil) end
end
local function bind(from, to, zkey, expiresAt, ttl)
  local v = redis.call('GET', from)
  if not v then return end
  local rec = cjson.decode(v)
  for _, l in ipairs(rec.l) do
    if l[2] == 'creates' and l[4] ~= 1 then
      redis.call('HINCRBYFLOAT', l[1], 'creates:r', -l[3])
      redis.call('HINCRBYFLOAT', l[1], 'creates:s', l[3])
      l[3] = 0
      l[4] = 1
    end
  end
  redis.call('DEL', from)
  redis.call('ZREM', zkey, from)
  redis.call('SET', to, cjson.encode(rec), 'EX', ttl)
  redis.call('ZADD', zkey, expiresAt, to)
end
`;

// Caching a terminal prediction, counting its usage the first time an id is seen terminal (once across replicas),
// and settling its budget reservation if it still has one: a Lua function both scripts below share.
const TERMINAL_FN = `${BUDGET_FN}
local function terminal(term, seen, usage, json, cacheTtl, predictionTtl, status, predictTime, usageTtl, rsv, rsvx, cost)
  redis.call('SET', term, json, 'EX', cacheTtl)
  if redis.call('SET', seen, '1', 'NX', 'EX', predictionTtl) then
    redis.call('HINCRBY', usage, status, 1)
    if tonumber(predictTime) > 0 then redis.call('HINCRBYFLOAT', usage, 'predict_time', predictTime) end
    redis.call('EXPIRE', usage, usageTtl)
  end
  release(rsv, rsvx, { seconds = tonumber(predictTime), cost = tonumber(cost) })
end
`;

// KEYS: term, seen, usage, rsv, rsvx. ARGV: json, cacheTtl, predictionTtl, status, predictTime, usageTtl, cost.
const RECORD_TERMINAL = `${TERMINAL_FN}
terminal(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], KEYS[4], KEYS[5], ARGV[7])
return 1`;

// KEYS: own, rec, idx, usage, term, seen, idem, reservation (by rid), reservation (by id), rsvx.
// ARGV: tenant, json, score, id, predictionTtl, usageTtl, oldestScore, terminal status ('' if not terminal),
// predictTime, cacheTtl, idem record ('' for none), idem ttl, reservation expiry ('' for none), cost.
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
if ARGV[13] ~= '' then bind(KEYS[8], KEYS[9], KEYS[10], ARGV[13], tonumber(ARGV[5]) + RECORD_MARGIN) end
if ARGV[8] ~= '' then terminal(KEYS[5], KEYS[6], KEYS[4], ARGV[2], ARGV[10], ARGV[5], ARGV[8], ARGV[9], ARGV[6], KEYS[9], KEYS[10], ARGV[14]) end
if ARGV[11] ~= '' then redis.call('SET', KEYS[7], ARGV[11], 'EX', ARGV[12]) end
return 1`;

// KEYS: reservation, rsvx, running counter, share window, previous share window, then one hash per line.
// ARGV: now, spec (JSON: lines {f, max, a, ttl}, count, run (max, -1 none), runTtl, recTtl, share), expiresAt.
// Every check comes before any write, so a refusal changes nothing (but the sweep of expired reservations).
const RESERVE = `${BUDGET_FN}
sweep(KEYS[2], ARGV[1])
local spec = cjson.decode(ARGV[2])
local rem = {}
for i, l in ipairs(spec.lines) do
  local s = tonumber(redis.call('HGET', KEYS[5 + i], l.f .. ':s') or '0')
  local r = tonumber(redis.call('HGET', KEYS[5 + i], l.f .. ':r') or '0')
  if s + r + l.a > l.max + 1e-9 or (l.a == 0 and s + r >= l.max - 1e-9) then
    return cjson.encode({ ok = false, reason = 'budget', line = i - 1, spent = s, reserved = r })
  end
  rem[i] = l.max - s - r - l.a
end
local running = 0
if spec.count == 1 then
  running = tonumber(redis.call('GET', KEYS[3]) or '0')
  if spec.run >= 0 and running >= spec.run then return cjson.encode({ ok = false, reason = 'running', running = running }) end
end
local sh = spec.share
if sh then
  local cur, prev = redis.call('HGETALL', KEYS[4]), redis.call('HGETALL', KEYS[5])
  local used, active, total = {}, {}, 0
  for i = 1, #cur, 2 do
    local n = tonumber(cur[i + 1])
    used[cur[i]] = n
    active[cur[i]] = true
    total = total + n
  end
  for i = 1, #prev, 2 do active[prev[i]] = true end
  local function shareOf(t) return sh.limit * (sh.w[t] or sh.d) / sh.W end
  local mine = used[sh.me] or 0
  if total >= sh.limit then return cjson.encode({ ok = false, reason = 'account', used = mine, total = total, share = shareOf(sh.me) }) end
  if mine >= shareOf(sh.me) then
    -- Over its share: only what is not held for the other recently active tenants still under theirs.
    local held = 0
    for t in pairs(active) do
      if t ~= sh.me then
        local gap = shareOf(t) - (used[t] or 0)
        if gap > 0 then held = held + math.ceil(gap - 1e-9) end
      end
    end
    if total + held >= sh.limit then return cjson.encode({ ok = false, reason = 'share', used = mine, total = total, share = shareOf(sh.me) }) end
  end
  redis.call('HINCRBY', KEYS[4], sh.me, 1)
  redis.call('PEXPIRE', KEYS[4], sh.ttl)
end
local lines = {}
for i, l in ipairs(spec.lines) do
  redis.call('HINCRBYFLOAT', KEYS[5 + i], l.f .. ':r', l.a)
  redis.call('EXPIRE', KEYS[5 + i], l.ttl)
  lines[i] = { KEYS[5 + i], l.f, l.a, 0 }
end
if spec.count == 1 then
  redis.call('INCR', KEYS[3])
  redis.call('EXPIRE', KEYS[3], spec.runTtl)
end
if #lines > 0 or spec.count == 1 then
  redis.call('SET', KEYS[1], cjson.encode({ l = lines, run = (spec.count == 1) and KEYS[3] or '' }), 'EX', spec.recTtl)
  redis.call('ZADD', KEYS[2], ARGV[3], KEYS[1])
end
return cjson.encode({ ok = true, remaining = rem, running = running + spec.count })`;

// KEYS: reservation, rsvx. ARGV: '' (release) or the spent amounts as JSON.
const SETTLE = `${BUDGET_FN}
local actual = nil
if ARGV[1] ~= '' then actual = cjson.decode(ARGV[1]) end
return release(KEYS[1], KEYS[2], actual)`;

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
  fgwReserve(...args: (string | number)[]): Promise<string>;
  fgwSettle(...args: (string | number)[]): Promise<number>;
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
    define('fgwRecordTerminal', 5, RECORD_TERMINAL);
    define('fgwRecordCreate', 10, RECORD_CREATE);
    define('fgwSettle', 2, SETTLE);
    define('fgwIdemBegin', 1, IDEM_BEGIN);
    define('fgwIncr', 1, INCR_COUNTER);
    // The key count varies (one hash per budget line): given with each call.
    if (!('fgwReserve' in client)) client.defineCommand('fgwReserve', { lua: RESERVE });
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
        `rsv:r:${r.reservation?.rid ?? '-'}`, `rsv:p:${r.id}`, 'rsvx',
        r.tenant, r.json, r.score, r.id, ttl, USAGE_TTL_SECONDS, oldest,
        r.terminal?.status ?? '', r.terminal?.predictTime ?? 0, this.#opts.cacheTtlSeconds,
        r.idem ? JSON.stringify(r.idem.record) : '', r.idem?.ttlSeconds ?? 0,
        r.reservation?.expiresAt ?? '', r.terminal?.cost ?? 0,
      )
      .catch(unavailable);
    return Number(written) === 1;
  }

  async recordTerminal(rec: TerminalRecord): Promise<void> {
    await this.#client
      .fgwRecordTerminal(
        `term:${rec.id}`, `seen:${rec.id}`, `usage:${rec.tenant}:${rec.day}`, `rsv:p:${rec.id}`, 'rsvx',
        rec.json, this.#opts.cacheTtlSeconds, this.#opts.predictionTtlSeconds, rec.status, rec.predictTime, USAGE_TTL_SECONDS, rec.cost ?? 0,
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

  async reserve(r: ReserveRequest): Promise<ReserveResult> {
    const spec = {
      lines: r.lines.map((l) => ({ f: l.field, max: l.max, a: l.amount, ttl: l.ttlSeconds })),
      count: r.running ? 1 : 0,
      run: r.running?.max ?? -1,
      runTtl: r.running?.ttlSeconds ?? 1,
      recTtl: Math.max(1, Math.ceil((r.expiresAt - r.now) / 1000)) + 604_800,
      share: r.share && { me: r.share.tenant, limit: r.share.limit, w: r.share.weights, d: r.share.defaultWeight, W: r.share.totalWeight, ttl: r.share.windowTtlMs },
    };
    const keys = [`rsv:r:${r.rid}`, 'rsvx', `run:${r.running?.tenant ?? '-'}`, r.share?.windowKey ?? 'fs:-', r.share?.previousKey ?? 'fs:-', ...r.lines.map((l) => l.key)];
    const raw = await this.#client.fgwReserve(keys.length, ...keys, r.now, JSON.stringify(spec), r.expiresAt).catch(unavailable);
    const out = JSON.parse(raw) as ReserveResult & { remaining?: unknown };
    // cjson writes an empty array as {}.
    if (out.ok) out.remaining = Array.isArray(out.remaining) ? out.remaining : [];
    return out;
  }

  async releaseReservation(rid: string): Promise<void> {
    await this.#client.fgwSettle(`rsv:r:${rid}`, 'rsvx', '').catch(unavailable);
  }

  async settleReservation(rid: string, actual: { seconds: number; cost: number }): Promise<void> {
    await this.#client.fgwSettle(`rsv:r:${rid}`, 'rsvx', JSON.stringify(actual)).catch(unavailable);
  }

  async budgetGet(keys: string[]): Promise<BudgetTotals[]> {
    if (!keys.length) return [];
    const pipe = this.#client.pipeline();
    for (const k of keys) pipe.hgetall(k);
    const results = (await pipe.exec().catch(unavailable)) ?? [];
    return results.map(([err, value]) => {
      if (err) unavailable(err);
      return Object.fromEntries(Object.entries(value as Record<string, string>).map(([k, v]) => [k, Number(v)]));
    });
  }

  async runningGet(tenants: string[]): Promise<number[]> {
    if (!tenants.length) return [];
    const values = await this.#client.mget(...tenants.map((t) => `run:${t}`)).catch(unavailable);
    return values.map((v) => Math.max(0, Number(v ?? 0)));
  }

  async close(): Promise<void> {
    if (!this.#owned) return;
    await this.#client.quit().catch(() => this.#client.disconnect());
  }
}
