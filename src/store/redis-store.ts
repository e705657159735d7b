// Redis store (ioredis): everything replicas must agree on. Multi-step updates are Lua scripts, so two replicas can
// never interleave between a check and an update; each script touches one hash slot (src/store/keys.ts), so the same
// code runs on one Redis, behind Sentinel and on a Cluster.
import { Redis } from 'ioredis';
import { rethrowUnavailable } from '../errors.js';
import type {
  BudgetTotals, CreateRecord, IdempotencyRecord, IndexEntry, ListQuery, Observation, OpenClaim, OpenEntry, ReserveRequest, ReserveResult, Store, StoreOptions, TerminalRecord, UsageDay,
} from './store.js';
import { parseMeta } from './store.js';
import { keys } from './keys.js';
import { USAGE_TTL_SECONDS } from './store.js';

// Budget reservations. A record (JSON) lists its lines as {hash key, field, amount, create spent?} and the running
// counter it holds a slot of; `rsvx` orders the tenant's records by expiry (every key here is the tenant's tag). Release takes the reserved amounts back; settle
// does the same and adds what was really spent; a record is deleted by the first of them, so a second is a no-op.
// Key names inside records are full names (KEYS as Lua sees them, prefix included). Only a reserve sweeps, up to 20
// records a call, so a reservation is released at the tenant's first reserve after its expiry.
const BUDGET_FN = `
-- A record outlives its expiry by a week, so the sweep (run by every reserve) finds it before Redis drops it.
local RECORD_MARGIN = 604800
-- The expiry index lives as long as the longest record it orders (every key expires; an idle tenant's index goes).
local function keepFor(key, ttl)
  if redis.call('TTL', key) < tonumber(ttl) then redis.call('EXPIRE', key, ttl) end
end
-- actual: nil releases; a table of spent amounts settles; with \`reserved\` set, what was reserved is spent (the
-- estimate of a prediction that expired).
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
      if actual.reserved then add = a end
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
  keepFor(zkey, ttl)
end
`;

// Counting a prediction's terminal usage the first time it is seen terminal (once across replicas, by a marker
// under the tenant's tag), and settling its budget reservation if it still has one. The terminal body itself is
// cached on the prediction's own tag, by a separate SET after this (see recordTerminal).
const COUNTED_FN = `${BUDGET_FN}
local function counted(seen, usage, predictionTtl, status, predictTime, usageTtl, rsv, rsvx, cost, spendReserved)
  local first = 0
  if redis.call('SET', seen, '1', 'NX', 'EX', predictionTtl) then
    first = 1
    redis.call('HINCRBY', usage, status, 1)
    if tonumber(predictTime) > 0 then redis.call('HINCRBYFLOAT', usage, 'predict_time', predictTime) end
    redis.call('EXPIRE', usage, usageTtl)
  end
  release(rsv, rsvx, { seconds = tonumber(predictTime), cost = tonumber(cost), reserved = (spendReserved == '1') })
  return first
end
`;

// The open set ({o}): a sorted set of prediction ids by when each is next due, their metadata and 404 counts.
const OPEN_FN = `
local function enter(open, meta, id, due, m)
  if redis.call('ZADD', open, 'NX', due, id) == 1 then redis.call('HSET', meta, id, m) end
end
local function leave(open, meta, strikes, id)
  redis.call('ZREM', open, id)
  redis.call('HDEL', meta, id)
  redis.call('HDEL', strikes, id)
end
`;

// {t:} KEYS: seen, usage, reservation (by id), rsvx. ARGV: predictionTtl, status, predictTime, usageTtl, cost,
// spendReserved ('1' or ''). Returns 1 the first time the id is seen terminal.
const RECORD_TERMINAL = `${COUNTED_FN}
return counted(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], KEYS[3], KEYS[4], ARGV[5], ARGV[6])`;

// {p:} KEYS: term, rec, life. ARGV: json, cacheTtl, predictionTtl. The terminal body is written over the record
// (which keeps its expiry): one stored body per prediction, which lists, webhooks and the cache all read; \`term\` is
// only a flag that says "the record is the end, serve it" for CACHE_TTL_SECONDS. A record already gone (expired)
// comes back for the cache's lifetime only. Its rank (2) keeps a late answer from a read that started before the end
// from writing a running state over it.
const TERMINAL_FN = `
local function cacheTerminal(term, rec, life, json, cacheTtl, predictionTtl)
  redis.call('SET', term, '1', 'EX', cacheTtl)
  if not redis.call('SET', rec, json, 'XX', 'KEEPTTL') then redis.call('SET', rec, json, 'EX', cacheTtl) end
  redis.call('HSET', life, 'r', 2)
  redis.call('HINCRBY', life, 'v', 1)
  redis.call('EXPIRE', life, predictionTtl)
end
`;
const CACHE_TERMINAL = `${TERMINAL_FN}
cacheTerminal(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3])
return 1`;

// {p:} KEYS: term, rec. ARGV: json, keepSeconds. A terminal body the gateway itself changed (kept outputs): written
// over the record (keeping its expiry), and the cache flag then lasts at least keepSeconds; nothing once the record
// is gone.
const REWRITE_TERMINAL = `
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'XX', 'KEEPTTL')
local keep = math.max(1, tonumber(ARGV[2]), redis.call('TTL', KEYS[1]))
redis.call('SET', KEYS[1], '1', 'EX', keep)
return 1`;

// {o} KEYS: open, openm, opens. ARGV: id.
const OPEN_LEAVE = `${OPEN_FN}
leave(KEYS[1], KEYS[2], KEYS[3], ARGV[1])
return 1`;

// {o} KEYS: open, openm. ARGV: id, due, meta.
const OPEN_ENTER = `${OPEN_FN}
enter(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])
return 1`;

// Not on a Cluster: all three in one trip. KEYS: the four of RECORD_TERMINAL, term, rec, life, open, openm, opens.
// ARGV: the six of RECORD_TERMINAL, json ('' for none), cacheTtl, id.
const RECORD_TERMINAL_ALL = `${COUNTED_FN}${OPEN_FN}${TERMINAL_FN}
local first = counted(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], KEYS[3], KEYS[4], ARGV[5], ARGV[6])
if ARGV[7] ~= '' then cacheTerminal(KEYS[5], KEYS[6], KEYS[7], ARGV[7], ARGV[8], ARGV[1]) end
leave(KEYS[8], KEYS[9], KEYS[10], ARGV[9])
return first`;

// {o} KEYS: open, openm, opens, openr. ARGV: now, max, leaseMs, window, windowLimit.
// The due predictions, oldest due first, as many as the read budget's window has left across every replica; each is
// leased by moving its due time past the lease (a replica that dies mid-look loses it then). Returns a flat list
// of id, meta, strikes.
const OPEN_CLAIM = `
local used = 0
if redis.call('HGET', KEYS[4], 'w') == ARGV[4] then
  used = tonumber(redis.call('HGET', KEYS[4], 'n') or '0')
else
  redis.call('HSET', KEYS[4], 'w', ARGV[4], 'n', 0)
end
redis.call('PEXPIRE', KEYS[4], 120000)
local n = math.min(tonumber(ARGV[2]), tonumber(ARGV[5]) - used)
if n <= 0 then return {} end
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, n)
local out = {}
local leased = tonumber(ARGV[1]) + tonumber(ARGV[3])
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], leased, id)
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', KEYS[2], id) or ''
  out[#out + 1] = redis.call('HGET', KEYS[3], id) or '0'
end
if #ids > 0 then redis.call('HINCRBY', KEYS[4], 'n', #ids) end
return out`;

// {o} KEYS: open. ARGV: id, due, mode ('later' or 'earlier': only if that moves it that way). Only a prediction
// still open.
const OPEN_SCHEDULE = `
if ARGV[3] == 'later' then return redis.call('ZADD', KEYS[1], 'XX', 'GT', ARGV[2], ARGV[1]) end
if ARGV[3] == 'earlier' then return redis.call('ZADD', KEYS[1], 'XX', 'LT', ARGV[2], ARGV[1]) end
return redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[1])`;

// A slot set lives as long as its longest-lived slot: its expiry only ever moves later.
const SLOT_FN = `
local function extend(key, at)
  if redis.call('PTTL', key) == -1 then redis.call('PEXPIREAT', key, at) else redis.call('PEXPIREAT', key, at, 'GT') end
end
`;

// KEYS: a slot set (one key). ARGV: member, max, now, expiresAt. Lapsed slots go first; 1 if taken.
const SLOT_ACQUIRE = `${SLOT_FN}
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
extend(KEYS[1], ARGV[4])
return 1`;

// KEYS: a slot set. ARGV: expiresAt, members. Only slots still held move.
const SLOT_REFRESH = `${SLOT_FN}
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', ARGV[1], ARGV[i]) end
extend(KEYS[1], ARGV[1])
return 1`;

// {o} KEYS: open, opens. ARGV: id. Counts a 404 for an open prediction (0: it is not open).
const OPEN_STRIKE = `
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
local n = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('PEXPIRE', KEYS[2], 31536000000)
return n`;

// {p:} KEYS: rec, life. ARGV: rank, logs, digest, json, ttl. Writes a running prediction over its record only when
// it is news: a later status, or longer logs, or the same with other output. Answers that arrive out of order (a
// replica's read that started before another's) never step back. Nothing is written once the record is gone.
const OBSERVE = `
local r = tonumber(redis.call('HGET', KEYS[2], 'r') or '-1')
local l = tonumber(redis.call('HGET', KEYS[2], 'l') or '0')
local rank, logs = tonumber(ARGV[1]), tonumber(ARGV[2])
if rank < r or (rank == r and logs < l) then return 0 end
if redis.call('HGET', KEYS[2], 'd') == ARGV[3] then return 0 end
if not redis.call('SET', KEYS[1], ARGV[4], 'XX', 'KEEPTTL') then return 0 end
redis.call('HSET', KEYS[2], 'r', rank, 'l', logs, 'd', ARGV[3])
local v = redis.call('HINCRBY', KEYS[2], 'v', 1)
redis.call('EXPIRE', KEYS[2], ARGV[5])
return v`;

// The two steps of a create, as functions over their own keys (K) and arguments (A).
// claim, {p:}: K own, rec, pin. A tenant, json, predictionTtl, upstream ('' for none). The owner is set only if absent
// (false and nothing written when another tenant has it), so a retry after a lost answer is harmless and a reused id
// never changes hands; its upstream likewise stays the first one written.
// tenantSide, {t:}: K idx, usage, seen, idem, reservation (by rid), reservation (by id), rsvx. A id, score,
// predictionTtl, usageTtl, oldestScore, terminal status ('' if not terminal), predictTime, idem record ('' for
// none), idem ttl, reservation expiry ('' for none), cost. Every part is idempotent (ZADD counts the create only when
// the id is new, the reservation is bound only while unbound, the terminal usage once by its marker), so running it
// again after a failure between the steps repeats nothing.
const CREATE_FN = `${COUNTED_FN}
local function claim(K, A)
  if not redis.call('SET', K[1], A[1], 'NX', 'EX', A[3]) then
    if redis.call('GET', K[1]) ~= A[1] then return false end
  end
  redis.call('SET', K[2], A[2], 'EX', A[3])
  if A[4] ~= '' then redis.call('SET', K[3], A[4], 'NX', 'EX', A[3]) end
  return true
end
local function tenantSide(K, A)
  local new = redis.call('ZADD', K[1], A[2], A[1]) == 1
  if new then
    redis.call('HINCRBY', K[2], 'creates', 1)
    redis.call('EXPIRE', K[2], A[4])
  end
  redis.call('ZREMRANGEBYSCORE', K[1], '-inf', '(' .. A[5])
  redis.call('EXPIRE', K[1], A[3])
  -- One reservation per prediction: an id the tenant has already (a deduplicating upstream answered with it) keeps
  -- the one it has, and this create's is given back, so its running slot is never counted twice.
  if A[10] ~= '' then
    if new then bind(K[5], K[6], K[7], A[10], tonumber(A[3]) + RECORD_MARGIN) else release(K[5], K[7], nil) end
  end
  if A[6] ~= '' then counted(K[3], K[2], A[3], A[6], A[7], A[4], K[6], K[7], A[11], '') end
  if A[8] ~= '' then redis.call('SET', K[4], A[8], 'EX', A[9]) end
end
local function slice(t, from, n)
  local out = {}
  for i = 1, n do out[i] = t[from + i - 1] end
  return out
end
`;

// On a Cluster, one step per script (each within one slot): the claim, then the tenant's side.
const CLAIM_PREDICTION = `${CREATE_FN}
return claim(KEYS, ARGV) and 1 or 0`;
const RECORD_CREATE = `${CREATE_FN}
tenantSide(KEYS, ARGV)
return 1`;

// Elsewhere (one server, Sentinel) keys of many slots may share a script: both steps, the terminal cache and the
// open set in one trip, with the same key names. KEYS: own, rec, the seven of tenantSide, term, open, openm, pin.
// ARGV: the first three of claim, the eleven of tenantSide, cacheTtl ('' when the create is not terminal), due (''
// when it does not enter the open set), meta, upstream (claim's fourth).
const CREATE_ALL = `${CREATE_FN}${OPEN_FN}
if not claim({ KEYS[1], KEYS[2], KEYS[13] }, { ARGV[1], ARGV[2], ARGV[3], ARGV[18] }) then return 0 end
tenantSide(slice(KEYS, 3, 7), slice(ARGV, 4, 11))
if ARGV[15] ~= '' then redis.call('SET', KEYS[10], '1', 'EX', ARGV[15]) end
if ARGV[16] ~= '' then enter(KEYS[11], KEYS[12], ARGV[4], ARGV[16], ARGV[17]) end
return 1`;

// {t:} KEYS: reservation, rsvx, running counter, then one hash per line (the tenant's and its token's).
// ARGV: now, spec (JSON: lines {f, max, a, ttl}, count, run (max, -1 none), runTtl, recTtl), expiresAt.
// Every check comes before any write, so a refusal changes nothing (but the sweep of expired reservations).
const RESERVE = `${BUDGET_FN}
sweep(KEYS[2], ARGV[1])
local spec = cjson.decode(ARGV[2])
local rem = {}
for i, l in ipairs(spec.lines) do
  local s = tonumber(redis.call('HGET', KEYS[3 + i], l.f .. ':s') or '0')
  local r = tonumber(redis.call('HGET', KEYS[3 + i], l.f .. ':r') or '0')
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
local lines = {}
for i, l in ipairs(spec.lines) do
  redis.call('HINCRBYFLOAT', KEYS[3 + i], l.f .. ':r', l.a)
  redis.call('EXPIRE', KEYS[3 + i], l.ttl)
  lines[i] = { KEYS[3 + i], l.f, l.a, 0 }
end
if spec.count == 1 then
  redis.call('INCR', KEYS[3])
  redis.call('EXPIRE', KEYS[3], spec.runTtl)
end
if #lines > 0 or spec.count == 1 then
  redis.call('SET', KEYS[1], cjson.encode({ l = lines, run = (spec.count == 1) and KEYS[3] or '' }), 'EX', spec.recTtl)
  redis.call('ZADD', KEYS[2], ARGV[3], KEYS[1])
  keepFor(KEYS[2], spec.recTtl)
end
return cjson.encode({ ok = true, remaining = rem, running = running + spec.count })`;

// {g} KEYS: this share window, the previous one. ARGV: share (JSON: me, limit, w, d, W, ttl).
// The fair share of UPSTREAM_CREATE_LIMIT is gateway-wide, so it has one tag of its own: it runs after the
// tenant's reservation, and a refusal here releases that reservation (so budgets can only be held too long by a
// moment, never overshot).
const SHARE = `
local sh = cjson.decode(ARGV[1])
local cur, prev = redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2])
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
redis.call('HINCRBY', KEYS[1], sh.me, 1)
redis.call('PEXPIRE', KEYS[1], sh.ttl)
return cjson.encode({ ok = true })`;

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
  fgwRecordTerminalAll(...args: (string | number)[]): Promise<number>;
  fgwCacheTerminal(...args: (string | number)[]): Promise<number>;
  fgwRewriteTerminal(...args: (string | number)[]): Promise<number>;
  fgwOpenLeave(...args: (string | number)[]): Promise<number>;
  fgwOpenEnter(...args: (string | number)[]): Promise<number>;
  fgwOpenClaim(...args: (string | number)[]): Promise<string[]>;
  fgwOpenStrike(...args: (string | number)[]): Promise<number>;
  fgwOpenSchedule(...args: (string | number)[]): Promise<number>;
  fgwSlotAcquire(...args: (string | number)[]): Promise<number>;
  fgwSlotRefresh(...args: (string | number)[]): Promise<number>;
  fgwObserve(...args: (string | number)[]): Promise<number>;
  fgwCreateAll(...args: (string | number)[]): Promise<number>;
  fgwClaimPrediction(...args: (string | number)[]): Promise<number>;
  fgwRecordCreate(...args: (string | number)[]): Promise<number>;
  fgwIdemBegin(...args: (string | number)[]): Promise<string | null>;
  fgwIncr(...args: (string | number)[]): Promise<number>;
  fgwReserve(...args: (string | number)[]): Promise<string>;
  fgwShare(...args: (string | number)[]): Promise<string>;
  fgwSettle(...args: (string | number)[]): Promise<number>;
}


/** How long a write waits for REDIS_WAIT_REPLICAS replicas to confirm it (then it goes on: see README). */
const WAIT_MS = 500;
/** After a wait that timed out (no replica left, as after a failover), writes go on unconfirmed for this long. */
const WAIT_BACKOFF_MS = 5000;

/**
 * The cached terminal body from the flag and the record. A \`term:\` key written before the flag (by an older gateway,
 * or not yet moved by \`npm run migrate-keys\`) still holds the body itself, and is served as it is.
 */
function terminalOf(term: string | null, record: string | null): string | null {
  if (term === null) return null;
  return term === '1' ? record : term;
}

export class RedisStore implements Store {
  readonly kind = 'redis' as const;
  readonly #client: ScriptedRedis;
  readonly #opts: StoreOptions;
  readonly #owned: boolean;
  readonly #waitReplicas: number;
  /** A Cluster runs a script only over keys of one slot: the create and terminal writes go step by step. */
  readonly #stepwise: boolean;
  #waitSkippedUntil = 0;
  /** The WAIT in flight, and the one the writes arriving meanwhile will share. */
  #wait: Promise<void> | undefined;
  #nextWait: Promise<void> | undefined;

  /**
   * `owned`: this store created the client and so closes it. `waitReplicas`: replicas that must hold a create's
   * records (owner, cache, idempotency) before it is answered (Redis WAIT; one server or Sentinel, not Cluster).
   */
  constructor(client: Redis, opts: StoreOptions, owned = true, waitReplicas = 0) {
    this.#client = client as ScriptedRedis;
    this.#opts = opts;
    this.#owned = owned;
    this.#waitReplicas = waitReplicas;
    this.#stepwise = (client as { isCluster?: boolean }).isCluster === true;
    // ioredis runs these with EVALSHA and falls back to EVAL on NOSCRIPT: a promoted replica or a new Cluster
    // node, which has no script cache yet, costs one extra round trip and no error.
    const define = (name: string, numberOfKeys: number, lua: string) => {
      if (!(name in client)) client.defineCommand(name, { numberOfKeys, lua });
    };
    define('fgwRecordTerminal', 4, RECORD_TERMINAL);
    define('fgwRecordTerminalAll', 10, RECORD_TERMINAL_ALL);
    define('fgwCacheTerminal', 3, CACHE_TERMINAL);
    define('fgwRewriteTerminal', 2, REWRITE_TERMINAL);
    define('fgwOpenLeave', 3, OPEN_LEAVE);
    define('fgwOpenEnter', 2, OPEN_ENTER);
    define('fgwOpenClaim', 4, OPEN_CLAIM);
    define('fgwOpenStrike', 2, OPEN_STRIKE);
    define('fgwOpenSchedule', 1, OPEN_SCHEDULE);
    define('fgwSlotAcquire', 1, SLOT_ACQUIRE);
    define('fgwSlotRefresh', 1, SLOT_REFRESH);
    define('fgwObserve', 2, OBSERVE);
    define('fgwCreateAll', 13, CREATE_ALL);
    define('fgwClaimPrediction', 3, CLAIM_PREDICTION);
    define('fgwRecordCreate', 7, RECORD_CREATE);
    define('fgwSettle', 2, SETTLE);
    define('fgwIdemBegin', 1, IDEM_BEGIN);
    define('fgwIncr', 1, INCR_COUNTER);
    define('fgwShare', 2, SHARE);
    // The key count varies (one hash per budget line): given with each call.
    if (!('fgwReserve' in client)) client.defineCommand('fgwReserve', { lua: RESERVE });
  }

  isReady(): boolean {
    return this.#client.status === 'ready';
  }

  /** Waits (a moment at most) until the configured replicas hold what this connection wrote. */
  async #replicated(): Promise<void> {
    if (this.#waitReplicas === 0 || Date.now() < this.#waitSkippedUntil) return;
    // WAIT blocks the connection it is sent on, and every command behind it. One at a time, then: the writes that
    // arrive while one runs share the next (a WAIT covers every write sent before it on the connection), so a burst
    // of them (the watcher settling many predictions) costs at most two WAITs in a row, not one each.
    if (!this.#nextWait) {
      const next = () => {
        this.#wait = this.#nextWait;
        this.#nextWait = undefined;
        return this.#waitOnce();
      };
      // After the one in flight, whether it worked or not (its own callers got its failure).
      this.#nextWait = (this.#wait ?? Promise.resolve()).then(next, next);
    }
    const mine = this.#nextWait;
    try {
      await mine;
    } finally {
      if (this.#wait === mine) this.#wait = undefined;
    }
  }

  async #waitOnce(): Promise<void> {
    if (Date.now() < this.#waitSkippedUntil) return;
    const acked = Number(await this.#client.call('WAIT', this.#waitReplicas, WAIT_MS).catch(rethrowUnavailable));
    // Fewer replicas than asked (the primary lost its replica): do not stall every write by WAIT_MS meanwhile.
    if (acked < this.#waitReplicas) this.#waitSkippedUntil = Date.now() + WAIT_BACKOFF_MS;
  }

  async lookup(id: string) {
    // One trip (the four keys share the prediction's slot); the record comes along even while it is not the end:
    // about a kilobyte, cheaper than a second round trip for the cached case.
    const [owner, term, record, upstream] = await this.#client.mget(keys.owner(id), keys.terminal(id), keys.record(id), keys.pin(id)).catch(rethrowUnavailable);
    return { owner: owner ?? null, terminal: terminalOf(term, record), upstream: upstream ?? null };
  }

  async recordCreate(r: CreateRecord): Promise<boolean> {
    const ttl = this.#opts.predictionTtlSeconds;
    const oldest = (Date.now() - ttl * 1000) * 1000;
    const claimKeys = [keys.owner(r.id), keys.record(r.id), keys.pin(r.id)];
    const claimArgs = [r.tenant, r.json, ttl, r.upstream ?? ''];
    const tenantKeys = [
      keys.index(r.tenant), keys.usage(r.tenant, r.day), keys.seen(r.tenant, r.id), r.idem ? keys.idem(r.idem.key) : keys.idem(`${r.tenant}:-`),
      keys.reservation(r.tenant, r.reservation?.rid ?? '-'), keys.reservationOf(r.tenant, r.id), keys.reservations(r.tenant),
    ];
    const tenantArgs = [
      r.id, r.score, ttl, USAGE_TTL_SECONDS, oldest,
      r.terminal?.status ?? '', r.terminal?.predictTime ?? 0,
      r.idem ? JSON.stringify(r.idem.record) : '', r.idem?.ttlSeconds ?? 0,
      r.reservation?.expiresAt ?? '', r.terminal?.cost ?? 0,
    ];
    const openKeys = [keys.open, keys.openMeta];
    const openArgs = r.open ? [r.open.due, JSON.stringify(r.open.meta)] : ['', ''];
    if (!this.#stepwise) {
      const cacheTtl = r.terminal ? this.#opts.cacheTtlSeconds : '';
      const written = await this.#client
        .fgwCreateAll(...claimKeys.slice(0, 2), ...tenantKeys, keys.terminal(r.id), ...openKeys, keys.pin(r.id), ...claimArgs.slice(0, 3), ...tenantArgs, cacheTtl, ...openArgs, r.upstream ?? '')
        .catch(rethrowUnavailable);
      if (Number(written) !== 1) return false;
      await this.#replicated();
      return true;
    }
    // Step 1, the prediction's slot: the owner (only if absent), its upstream and the create-time record.
    if (Number(await this.#client.fgwClaimPrediction(...claimKeys, ...claimArgs).catch(rethrowUnavailable)) !== 1) return false;
    // Step 2, the tenant's slot: index, usage, the budget binding and settling, the idempotency record.
    await this.#client.fgwRecordCreate(...tenantKeys, ...tenantArgs).catch(rethrowUnavailable);
    // Step 3, the open set (its own slot): entering twice is a no-op, so a retried create repeats nothing.
    if (r.open) await this.#client.fgwOpenEnter(...openKeys, r.id, ...openArgs).catch(rethrowUnavailable);
    // Step 4, only for a create that came back terminal: the cache, last, so that a failure before it leaves a
    // miss (the next GET fetches and caches it, and the usage marker keeps it counted once).
    if (r.terminal) await this.#client.set(keys.terminal(r.id), '1', 'EX', this.#opts.cacheTtlSeconds).catch(rethrowUnavailable);
    return true;
  }

  async recordTerminal(rec: TerminalRecord): Promise<boolean> {
    const countedKeys = [keys.seen(rec.tenant, rec.id), keys.usage(rec.tenant, rec.day), keys.reservationOf(rec.tenant, rec.id), keys.reservations(rec.tenant)];
    const countedArgs = [this.#opts.predictionTtlSeconds, rec.status, rec.predictTime, USAGE_TTL_SECONDS, rec.cost ?? 0, rec.spendReserved ? '1' : ''];
    const openKeys = [keys.open, keys.openMeta, keys.openStrikes];
    if (!this.#stepwise) {
      const first = await this.#client
        .fgwRecordTerminalAll(...countedKeys, keys.terminal(rec.id), keys.record(rec.id), keys.life(rec.id), ...openKeys, ...countedArgs, rec.json ?? '', this.#opts.cacheTtlSeconds, rec.id)
        .catch(rethrowUnavailable);
      await this.#replicated();
      return Number(first) === 1;
    }
    // The usage once and the budget settle on the tenant's slot, then the cache on the prediction's, and last the
    // open set: a failure between them leaves the prediction open, and the watcher's next look repeats the end
    // (counted once by its marker, settled once since the first settle deleted the reservation).
    const first = await this.#client.fgwRecordTerminal(...countedKeys, ...countedArgs).catch(rethrowUnavailable);
    if (rec.json) {
      await this.#client
        .fgwCacheTerminal(keys.terminal(rec.id), keys.record(rec.id), keys.life(rec.id), rec.json, this.#opts.cacheTtlSeconds, this.#opts.predictionTtlSeconds)
        .catch(rethrowUnavailable);
    }
    await this.#client.fgwOpenLeave(...openKeys, rec.id).catch(rethrowUnavailable);
    return Number(first) === 1;
  }

  async rewriteTerminal(id: string, json: string, keepSeconds: number): Promise<boolean> {
    const written = await this.#client.fgwRewriteTerminal(keys.terminal(id), keys.record(id), json, Math.ceil(keepSeconds)).catch(rethrowUnavailable);
    return Number(written) === 1;
  }

  async current(id: string): Promise<{ record: string | null; open: boolean; version: number }> {
    const [record, due, version] = await Promise.all([this.#client.get(keys.record(id)), this.#client.zscore(keys.open, id), this.#client.hget(keys.life(id), 'v')]).catch(
      rethrowUnavailable,
    );
    return { record: record ?? null, open: due !== null, version: Number(version ?? 0) };
  }

  async observe(o: Observation): Promise<number> {
    const version = await this.#client
      .fgwObserve(keys.record(o.id), keys.life(o.id), o.rank, o.logs, o.digest, o.json, this.#opts.predictionTtlSeconds)
      .catch(rethrowUnavailable);
    return Number(version);
  }

  async slotAcquire(set: string, member: string, max: number, now: number, expiresAt: number): Promise<boolean> {
    return Number(await this.#client.fgwSlotAcquire(set, member, max, now, expiresAt).catch(rethrowUnavailable)) === 1;
  }

  async slotRefresh(set: string, members: string[], expiresAt: number): Promise<void> {
    if (!members.length) return;
    await this.#client.fgwSlotRefresh(set, expiresAt, ...members).catch(rethrowUnavailable);
  }

  async slotRelease(set: string, member: string): Promise<void> {
    await this.#client.zrem(set, member).catch(rethrowUnavailable);
  }

  async openClaim(c: OpenClaim): Promise<OpenEntry[]> {
    const flat = await this.#client
      .fgwOpenClaim(keys.open, keys.openMeta, keys.openStrikes, keys.openReads, c.now, c.max, c.leaseMs, c.window, c.windowLimit)
      .catch(rethrowUnavailable);
    const out: OpenEntry[] = [];
    for (let i = 0; i + 2 < flat.length; i += 3) {
      const meta = parseMeta(flat[i + 1]!);
      out.push({ id: flat[i]!, strikes: Number(flat[i + 2]), ...meta });
    }
    return out;
  }

  async openSchedule(id: string, due: number, mode?: 'later' | 'earlier'): Promise<void> {
    await this.#client.fgwOpenSchedule(keys.open, id, due, mode ?? '').catch(rethrowUnavailable);
  }

  async openStrike(id: string): Promise<number> {
    return Number(await this.#client.fgwOpenStrike(keys.open, keys.openStrikes, id).catch(rethrowUnavailable));
  }

  async openStats(now: number): Promise<{ open: number; oldestDue: number | null }> {
    const [open, first] = await Promise.all([this.#client.zcard(keys.open), this.#client.zrange(keys.open, '0', '0', 'WITHSCORES')]).catch(rethrowUnavailable);
    const due = first[1] !== undefined ? Number(first[1]) : null;
    return { open, oldestDue: due !== null && due <= now ? due : null };
  }

  async listPage(tenant: string, q: ListQuery): Promise<{ entries: IndexEntry[]; hasMore: boolean }> {
    const key = keys.index(tenant);
    const n = q.limit + 1;
    let flat: string[];
    if (q.after !== undefined) {
      flat = await this.#client.zrangebyscore(key, `(${q.after}`, '+inf', 'WITHSCORES', 'LIMIT', 0, n).catch(rethrowUnavailable);
    } else {
      const max = q.before !== undefined ? `(${q.before}` : '+inf';
      flat = await this.#client.zrevrangebyscore(key, max, '-inf', 'WITHSCORES', 'LIMIT', 0, n).catch(rethrowUnavailable);
    }
    let pairs: { id: string; score: number }[] = [];
    for (let i = 0; i < flat.length; i += 2) pairs.push({ id: flat[i]!, score: Number(flat[i + 1]) });
    const hasMore = pairs.length > q.limit;
    pairs = pairs.slice(0, q.limit);
    if (q.after !== undefined) pairs.reverse();
    if (pairs.length === 0) return { entries: [], hasMore: false };
    // One key per prediction, its record (the end is written over it); auto-pipelining sends the GETs together, per
    // node on a Cluster.
    const values = await Promise.all(pairs.map((p) => this.#client.get(keys.record(p.id)))).catch(rethrowUnavailable);
    const entries: IndexEntry[] = [];
    const expired: string[] = [];
    pairs.forEach((p, i) => {
      const json = values[i];
      if (json) entries.push({ id: p.id, score: p.score, json });
      else expired.push(p.id);
    });
    // An index entry whose record expired is dead weight: drop it so later pages stay full.
    if (expired.length) this.#client.zrem(key, ...expired).catch(() => {});
    return { entries, hasMore };
  }

  async idemBegin(key: string, fingerprint: string, leaseMs: number, holder: string): Promise<IdempotencyRecord | null> {
    const pending: IdempotencyRecord = { state: 'pending', fingerprint, holder };
    const existing = await this.#client.fgwIdemBegin(keys.idem(key), JSON.stringify(pending), leaseMs, holder).catch(rethrowUnavailable);
    return existing ? (JSON.parse(existing) as IdempotencyRecord) : null;
  }

  async idemGet(key: string): Promise<IdempotencyRecord | null> {
    const v = await this.#client.get(keys.idem(key)).catch(rethrowUnavailable);
    return v ? (JSON.parse(v) as IdempotencyRecord) : null;
  }

  async idemComplete(key: string, rec: IdempotencyRecord, ttlSeconds: number): Promise<void> {
    await this.#client.set(keys.idem(key), JSON.stringify(rec), 'EX', ttlSeconds).catch(rethrowUnavailable);
    await this.#replicated();
  }

  async idemRelease(key: string): Promise<void> {
    await this.#client.del(keys.idem(key)).catch(rethrowUnavailable);
  }

  async versionModel(version: string): Promise<string | null> {
    return (await this.#client.get(keys.version(version)).catch(rethrowUnavailable)) ?? null;
  }

  async learnVersions(pairs: readonly (readonly [string, string])[]): Promise<void> {
    if (!pairs.length) return;
    // Each version is its own key (and slot): independent SETs, not one MULTI (which a Cluster refuses across slots).
    await Promise.all(pairs.map(([v, model]) => this.#client.set(keys.version(v), model, 'EX', USAGE_TTL_SECONDS, 'NX'))).catch(rethrowUnavailable);
  }

  async incrCounter(key: string, ttlMs: number): Promise<number> {
    return Number(await this.#client.fgwIncr(keys.counter(key), ttlMs).catch(rethrowUnavailable));
  }

  async usageGet(tenant: string, days: string[]): Promise<Record<string, UsageDay>> {
    const results = await Promise.all(days.map((day) => this.#client.hgetall(keys.usage(tenant, day)))).catch(rethrowUnavailable);
    const out: Record<string, UsageDay> = {};
    results.forEach((h, i) => {
      if (h && Object.keys(h).length) {
        out[days[i]!] = Object.fromEntries(Object.entries(h).map(([k, v]) => [k, Number(v)]));
      }
    });
    return out;
  }

  async reserve(r: ReserveRequest): Promise<ReserveResult> {
    let out: ReserveResult = { ok: true, remaining: [], running: 0 };
    const holds = r.lines.length > 0 || r.running !== undefined;
    if (holds) {
      const spec = {
        lines: r.lines.map((l) => ({ f: l.field, max: l.max, a: l.amount, ttl: l.ttlSeconds })),
        count: r.running ? 1 : 0,
        run: r.running?.max ?? -1,
        runTtl: r.running?.ttlSeconds ?? 1,
        recTtl: Math.max(1, Math.ceil((r.expiresAt - r.now) / 1000)) + 604_800,
      };
      const ks = [keys.reservation(r.tenant, r.rid), keys.reservations(r.tenant), keys.running(r.tenant), ...r.lines.map((l) => l.key)];
      const raw = await this.#client.fgwReserve(ks.length, ...ks, r.now, JSON.stringify(spec), r.expiresAt).catch(rethrowUnavailable);
      const parsed = JSON.parse(raw) as ReserveResult & { remaining?: unknown };
      // cjson writes an empty array as {}.
      if (parsed.ok) parsed.remaining = Array.isArray(parsed.remaining) ? parsed.remaining : [];
      out = parsed;
      if (!out.ok) return out;
    }
    if (r.share) {
      const sh = r.share;
      const spec = { me: sh.tenant, limit: sh.limit, w: sh.weights, d: sh.defaultWeight, W: sh.totalWeight, ttl: sh.windowTtlMs };
      let refusal: ReserveResult;
      try {
        const shared = JSON.parse(await this.#client.fgwShare(sh.windowKey, sh.previousKey, JSON.stringify(spec))) as ReserveResult;
        if (shared.ok) return out;
        refusal = shared;
      } catch (err) {
        if (holds) await this.releaseReservation(r.tenant, r.rid).catch(() => {});
        return rethrowUnavailable(err);
      }
      if (holds) await this.releaseReservation(r.tenant, r.rid);
      return refusal;
    }
    return out;
  }

  async releaseReservation(tenant: string, rid: string): Promise<void> {
    await this.#client.fgwSettle(keys.reservation(tenant, rid), keys.reservations(tenant), '').catch(rethrowUnavailable);
  }

  async settleReservation(tenant: string, rid: string, actual: { seconds: number; cost: number }): Promise<void> {
    await this.#client.fgwSettle(keys.reservation(tenant, rid), keys.reservations(tenant), JSON.stringify(actual)).catch(rethrowUnavailable);
  }

  async budgetGet(budgetKeys: string[]): Promise<BudgetTotals[]> {
    if (!budgetKeys.length) return [];
    const results = await Promise.all(budgetKeys.map((k) => this.#client.hgetall(k))).catch(rethrowUnavailable);
    return results.map((value) => Object.fromEntries(Object.entries(value).map(([k, v]) => [k, Number(v)])));
  }

  async runningGet(tenants: string[]): Promise<number[]> {
    if (!tenants.length) return [];
    // One GET each: the counters are in the tenants' slots (an MGET across them would be refused by a Cluster).
    const values = await Promise.all(tenants.map((t) => this.#client.get(keys.running(t)))).catch(rethrowUnavailable);
    return values.map((v) => Math.max(0, Number(v ?? 0)));
  }

  async close(): Promise<void> {
    if (!this.#owned) return;
    await this.#client.quit().catch(() => this.#client.disconnect());
  }
}

export { COMMAND_TIMEOUT_MS, createRedisClient } from './redis-client.js';
