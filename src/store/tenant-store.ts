// API-managed tenants and keys, the change counter replicas watch, the audit log and rotation answers (src/admin/):
// Redis (every key in the {a} slot, so each change is one script that checks, writes, counts and logs at once) or
// this process. Records are opaque JSON here; what they mean is src/admin/'s business.
import type { Redis } from 'ioredis';
import { rethrowUnavailable } from '../errors.js';
import { keys } from './keys.js';

export type RecordKind = 't' | 'k';

export interface AdminSnapshot {
  /** The change counter: one more after every change. */
  version: number;
  tenants: string[];
  keys: string[];
}

/** One change: every expectation holds, the audit head is the one the event was chained to, or nothing is written. */
export interface AdminCommit {
  /** A record's revision must be `rev` (null: the record must not exist). */
  expect: { kind: RecordKind; id: string; rev: number | null }[];
  put: { kind: RecordKind; id: string; rev: number; json: string }[];
  del: { kind: RecordKind; id: string }[];
  /** A stored answer (a rotation's, encrypted) that must not exist yet. */
  idem?: { key: string; value: string; ttlMs: number };
  audit: {
    /** The head the event was chained to: "" for the first event, else "<seq> <hash>". */
    head: string;
    newHead: string;
    /** JSON starting {"seq":N,"ts":MS,…}: the log is trimmed by `ts`. */
    event: string;
    /** Events older than this (ms) are dropped, a few per change. */
    cutoffMs: number;
  };
}

/** `conflict`: an expectation failed; `idem`: the answer exists; `audit`: another event was appended first. */
export type CommitResult = 'ok' | 'conflict' | 'idem' | 'audit';

export interface TenantStore {
  load(): Promise<AdminSnapshot>;
  version(): Promise<number>;
  commit(c: AdminCommit): Promise<CommitResult>;
  auditHead(): Promise<string>;
  /** Events with seq > after, oldest first, at most `limit`. */
  auditRange(after: number, limit: number): Promise<string[]>;
  idem(key: string): Promise<string | null>;
  /** Adds to per-key counters of a day: fields `<keyId>:<what>`. */
  addKeyUsage(day: string, counts: Record<string, number>, ttlMs: number): Promise<void>;
  keyUsage(days: string[]): Promise<Record<string, number>[]>;
}

const TRIM_PER_COMMIT = 100;

// KEYS: tenants, keys, revs, version, log, head[, idem]. ARGV[1]: the commit as JSON (cjson decodes it).
const COMMIT = `
local c = cjson.decode(ARGV[1])
local hashes = { t = KEYS[1], k = KEYS[2] }
for _, e in ipairs(c.expect) do
  local cur = redis.call('HGET', KEYS[3], e.kind .. ':' .. e.id)
  if e.rev == cjson.null then
    if cur then return 'conflict' end
  elseif cur ~= tostring(e.rev) then
    return 'conflict'
  end
end
if c.idem and redis.call('EXISTS', KEYS[7]) == 1 then return 'idem' end
local head = redis.call('GET', KEYS[6]) or ''
if head ~= c.audit.head then return 'audit' end
for _, p in ipairs(c.put) do
  redis.call('HSET', hashes[p.kind], p.id, p.json)
  redis.call('HSET', KEYS[3], p.kind .. ':' .. p.id, tostring(p.rev))
end
for _, d in ipairs(c.del) do
  redis.call('HDEL', hashes[d.kind], d.id)
  redis.call('HDEL', KEYS[3], d.kind .. ':' .. d.id)
end
if c.idem then redis.call('SET', KEYS[7], c.idem.value, 'PX', c.idem.ttlMs) end
if #c.put + #c.del > 0 then redis.call('INCR', KEYS[4]) end
redis.call('RPUSH', KEYS[5], c.audit.event)
redis.call('SET', KEYS[6], c.audit.newHead)
for _ = 1, ${TRIM_PER_COMMIT} do
  local first = redis.call('LINDEX', KEYS[5], 0)
  if not first then break end
  local ts = tonumber(string.match(first, '"ts":(%d+)'))
  if not ts or ts >= c.audit.cutoffMs then break end
  redis.call('LPOP', KEYS[5])
end
return 'ok'
`;

// KEYS: log. ARGV: after, limit. The log's seqs are consecutive, so the first one locates any other.
const RANGE = `
local first = redis.call('LINDEX', KEYS[1], 0)
if not first then return {} end
local firstSeq = tonumber(string.match(first, '"seq":(%d+)'))
local start = tonumber(ARGV[1]) - firstSeq + 1
if start < 0 then start = 0 end
return redis.call('LRANGE', KEYS[1], start, start + tonumber(ARGV[2]) - 1)
`;

type ScriptedRedis = Redis & {
  fgwAdminCommit(...args: string[]): Promise<CommitResult>;
  fgwAdminRange(log: string, after: string, limit: string): Promise<string[]>;
};

const K = {
  tenants: keys.admin('tenants'),
  keys: keys.admin('keys'),
  revs: keys.admin('revs'),
  version: keys.admin('version'),
  log: keys.admin('audit'),
  head: keys.admin('audit-head'),
  idem: (key: string) => keys.admin(`idem:${key}`),
};

export class RedisTenantStore implements TenantStore {
  readonly #client: ScriptedRedis;

  /** Shares the state store's client (that store closes it). */
  constructor(client: Redis) {
    this.#client = client as ScriptedRedis;
    if (!('fgwAdminCommit' in client)) client.defineCommand('fgwAdminCommit', { lua: COMMIT });
    if (!('fgwAdminRange' in client)) client.defineCommand('fgwAdminRange', { numberOfKeys: 1, lua: RANGE });
  }

  async load(): Promise<AdminSnapshot> {
    // One MULTI within one slot: a snapshot never mixes the tenants of one version with the keys of another.
    const r = await this.#client.multi().get(K.version).hvals(K.tenants).hvals(K.keys).exec().catch(rethrowUnavailable);
    if (!r) throw new Error('the snapshot transaction was aborted');
    for (const [err] of r) if (err) rethrowUnavailable(err);
    return { version: Number(r[0]![1] ?? 0), tenants: r[1]![1] as string[], keys: r[2]![1] as string[] };
  }

  async version() {
    return Number((await this.#client.get(K.version).catch(rethrowUnavailable)) ?? 0);
  }

  async commit(c: AdminCommit): Promise<CommitResult> {
    const ks = [K.tenants, K.keys, K.revs, K.version, K.log, K.head, ...(c.idem ? [K.idem(c.idem.key)] : [])];
    return this.#client.fgwAdminCommit(String(ks.length), ...ks, JSON.stringify(c)).catch(rethrowUnavailable);
  }

  async auditHead() {
    return (await this.#client.get(K.head).catch(rethrowUnavailable)) ?? '';
  }

  async auditRange(after: number, limit: number) {
    return this.#client.fgwAdminRange(K.log, String(after), String(limit)).catch(rethrowUnavailable);
  }

  async idem(key: string) {
    return this.#client.get(K.idem(key)).catch(rethrowUnavailable);
  }

  async addKeyUsage(day: string, counts: Record<string, number>, ttlMs: number) {
    const m = this.#client.multi();
    for (const [field, n] of Object.entries(counts)) m.hincrby(keys.keyUsage(day), field, n);
    await m.pexpire(keys.keyUsage(day), ttlMs).exec().catch(rethrowUnavailable);
  }

  async keyUsage(days: string[]) {
    const p = this.#client.pipeline();
    for (const d of days) p.hgetall(keys.keyUsage(d));
    const r = (await p.exec().catch(rethrowUnavailable)) ?? [];
    return r.map(([err, v]) => {
      if (err) rethrowUnavailable(err);
      return Object.fromEntries(Object.entries(v as Record<string, string>).map(([f, n]) => [f, Number(n)]));
    });
  }
}

export class MemoryTenantStore implements TenantStore {
  readonly #records = { t: new Map<string, { rev: number; json: string }>(), k: new Map<string, { rev: number; json: string }>() };
  #version = 0;
  readonly #log: string[] = [];
  #head = '';
  readonly #idem = new Map<string, { value: string; until: number }>();
  readonly #usage = new Map<string, Map<string, number>>();

  async load(): Promise<AdminSnapshot> {
    return { version: this.#version, tenants: [...this.#records.t.values()].map((r) => r.json), keys: [...this.#records.k.values()].map((r) => r.json) };
  }

  async version() {
    return this.#version;
  }

  async commit(c: AdminCommit): Promise<CommitResult> {
    for (const e of c.expect) {
      const cur = this.#records[e.kind].get(e.id);
      if (e.rev === null ? cur !== undefined : cur?.rev !== e.rev) return 'conflict';
    }
    const now = Date.now();
    for (const [k, v] of this.#idem) if (v.until <= now) this.#idem.delete(k);
    if (c.idem && this.#idem.has(c.idem.key)) return 'idem';
    if (this.#head !== c.audit.head) return 'audit';
    for (const p of c.put) this.#records[p.kind].set(p.id, { rev: p.rev, json: p.json });
    for (const d of c.del) this.#records[d.kind].delete(d.id);
    if (c.idem) this.#idem.set(c.idem.key, { value: c.idem.value, until: now + c.idem.ttlMs });
    if (c.put.length + c.del.length > 0) this.#version++;
    this.#log.push(c.audit.event);
    this.#head = c.audit.newHead;
    for (let i = 0; i < TRIM_PER_COMMIT && this.#log.length; i++) {
      const ts = Number(/"ts":(\d+)/.exec(this.#log[0]!)?.[1]);
      if (!(ts < c.audit.cutoffMs)) break;
      this.#log.shift();
    }
    return 'ok';
  }

  async auditHead() {
    return this.#head;
  }

  async auditRange(after: number, limit: number) {
    if (!this.#log.length) return [];
    const firstSeq = Number(/"seq":(\d+)/.exec(this.#log[0]!)![1]);
    const start = Math.max(0, after - firstSeq + 1);
    return this.#log.slice(start, start + limit);
  }

  async idem(key: string) {
    const v = this.#idem.get(key);
    return v && v.until > Date.now() ? v.value : null;
  }

  async addKeyUsage(day: string, counts: Record<string, number>) {
    let m = this.#usage.get(day);
    if (!m) this.#usage.set(day, (m = new Map()));
    for (const [f, n] of Object.entries(counts)) m.set(f, (m.get(f) ?? 0) + n);
    // A bound that does not grow with traffic: the last 400 days.
    if (this.#usage.size > 400) this.#usage.delete([...this.#usage.keys()].sort()[0]!);
  }

  async keyUsage(days: string[]) {
    return days.map((d) => Object.fromEntries(this.#usage.get(d) ?? []));
  }
}
