// A @fastify/rate-limit store on Redis that takes permits in small leases instead of one round trip per request.
//
// Why: the per-request Lua INCR was the largest single cost of a cached GET after the response write (an ioredis
// command on the gateway plus a script run on a Redis that shares the machine). A lease keeps the limit exact in
// the direction that matters: every permit is counted in Redis *before* any replica hands it out, so all replicas
// together never admit more than `max` per window. What a lease can cost is the other direction: permits a
// replica took but did not use before the window ended are lost. A lease is the smaller of RATE_LIMIT_LEASE_MAX
// and 1/16 of what is left in the window, or as many permits as requests are waiting when that is more (those are
// used at once), and never more than is left; near the limit this behaves as the per-request store did.
// RATE_LIMIT_LEASE_MAX=1 restores one round trip per request.
//
// A spent window is also remembered locally until Redis expires it: a client hammering past its limit is refused
// without a Redis trip. That is exact, since a fixed window's count never goes down before it expires.
import type { Redis } from 'ioredis';
import { storeFailure, storeUnavailable } from '../errors.js';
import { BoundedMap } from '../lib/bounded-map.js';
import { keys } from './keys.js';

// KEYS: counter. ARGV: window ms, max, permits wanted now, lease cap.
// Returns {count after the grant, permits granted, remaining ttl ms}. The window starts with its first grant.
const LEASE = `
local max = tonumber(ARGV[2])
local need = tonumber(ARGV[3])
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local room = max - cur
local grant = 0
if room > 0 then
  grant = math.min(room, math.max(need, math.min(tonumber(ARGV[4]), math.floor(room / 16))))
  redis.call('INCRBY', KEYS[1], grant)
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {cur + grant, grant, ttl}`;

type Result = { current: number; ttl: number };
type Callback = (err: Error | null, res?: Result) => void;

/** A request waiting for a permit, with the limit it is checked against (a tenants reload can change it). */
interface Waiter {
  cb: Callback;
  max: number;
  windowMs: number;
}

interface Bucket {
  /** Redis's count after our last grant; the permits we hold are the last `left` of them. */
  top: number;
  left: number;
  /** When the window ends, on the monotonic clock: the time the grant was asked for plus Redis's PTTL. */
  endsAt: number;
  /** The limit the permits were granted under; permits granted under another limit are not handed out. */
  max: number;
  /** The window had no room left at the last grant: refuse locally until endsAt. */
  spent: boolean;
  waiting: Waiter[];
  fetching: boolean;
}

interface LeaseRedis extends Redis {
  fgwRateLease(key: string, windowMs: number, max: number, need: number, cap: number, cb: (err: Error | null, r?: [number, number, number]) => void): void;
}

/** Buckets kept per process: one per tenant and limit, plus one per client address for perIp limits. */
const MAX_BUCKETS = 50_000;

/**
 * Returns a store class for @fastify/rate-limit's `store` option (it constructs the class itself).
 * `leaseMax` is the most permits one trip may take; 1 means a round trip per request. Each window is one key
 * (`keyOf`: by default `rl:{r:<key>}`, a hash tag of its own), so the one-key script is Cluster-safe.
 */
export function leasedRedisStore(redis: Redis, leaseMax: number, keyOf: (key: string) => string = keys.rate) {
  const client = redis as LeaseRedis;
  if (!client.fgwRateLease) client.defineCommand('fgwRateLease', { numberOfKeys: 1, lua: LEASE });
  // Least recently used buckets go first past the cap. One evicted mid-trip still serves its waiters (the callback
  // holds it); the next request starts a new bucket, which can only admit fewer, never more (Redis counts).
  const buckets = new BoundedMap<Bucket>({ maxEntries: MAX_BUCKETS });

  /** Serves the waiters the bucket can answer now; the others stay queued for the next trip. */
  function settle(b: Bucket, now: number): void {
    const ttl = Math.max(0, Math.round(b.endsAt - now));
    const rest: Waiter[] = [];
    for (const w of b.waiting) {
      if (w.max !== b.max) rest.push(w);
      else if (b.left > 0) {
        b.left--;
        w.cb(null, { current: b.top - b.left, ttl });
      } else if (b.spent) w.cb(null, { current: w.max + 1, ttl });
      else rest.push(w);
    }
    b.waiting = rest;
  }

  function fetch(key: string, b: Bucket): void {
    const { max, windowMs } = b.waiting[0]!;
    if (max !== b.max) {
      // Permits held under another limit are dropped (they stay counted in Redis: fewer admitted, never more).
      b.left = 0;
      b.spent = false;
      b.max = max;
    }
    let need = 0;
    for (const w of b.waiting) if (w.max === max) need++;
    b.fetching = true;
    const asked = performance.now();
    client.fgwRateLease(keyOf(key), windowMs, max, need, leaseMax, (err, r) => {
      b.fetching = false;
      if (err || !r) {
        const waiting = b.waiting;
        b.waiting = [];
        // The same answer as any other store failure; @fastify/rate-limit passes it on unchanged.
        const failure = err ? storeFailure(err) : storeUnavailable();
        for (const w of waiting) w.cb(failure);
        return;
      }
      const [count, grant, ttl] = r;
      b.top = count;
      b.left = grant;
      // From when we asked, not when the answer came: the local window must not outlive Redis's.
      b.endsAt = asked + ttl;
      // Fewer permits than requests waiting means the window's room ran out.
      b.spent = grant < need || count >= max;
      settle(b, performance.now());
      // Requests that arrived during the trip, or under another limit, need another one.
      if (b.waiting.length) fetch(key, b);
    });
  }

  return class LeasedRedisStore {
    /**
     * A permit from what this process already holds, without a callback or a promise: `{current, ttl}` as `incr`
     * would answer, or undefined when only `incr` can answer (nothing held, the window over, a trip under way or
     * requests already queued, which keep their order). src/access/limits.ts takes this before anything else.
     */
    static take(key: string, max: number): Result | undefined {
      const b = buckets.get(key);
      if (!b || b.fetching || b.waiting.length || b.max !== max) return undefined;
      const now = performance.now();
      if (b.endsAt <= now) return undefined;
      const ttl = Math.max(0, Math.round(b.endsAt - now));
      if (b.left > 0) {
        b.left--;
        return { current: b.top - b.left, ttl };
      }
      return b.spent ? { current: max + 1, ttl } : undefined;
    }

    incr(key: string, cb: Callback, timeWindow: number, max: number): void {
      const now = performance.now();
      let b = buckets.get(key);
      if (!b) {
        b = { top: 0, left: 0, endsAt: 0, max, spent: false, waiting: [], fetching: false };
        buckets.set(key, b);
      } else if (b.endsAt <= now && !b.fetching) {
        // The window ended in Redis: what we hold belongs to the old one.
        b.left = 0;
        b.spent = false;
      }
      b.waiting.push({ cb, max, windowMs: timeWindow });
      if (b.fetching) return;
      settle(b, now);
      if (b.waiting.length) fetch(key, b);
    }

    child(): LeasedRedisStore {
      return this;
    }
  };
}
