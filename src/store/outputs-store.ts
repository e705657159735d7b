// What the gateway knows about kept outputs (src/outputs/), shared by replicas: each prediction's manifest (which
// objects it has, whose they are, when they go), the claims that make a copy happen once, every tenant's bytes kept
// (its quota and usage), and one sorted set of predictions by when their retention ends. The objects themselves
// live in the output store (a folder or a bucket), never here.
import type { Redis } from 'ioredis';
import { rethrowUnavailable } from '../errors.js';
import { BoundedMap } from '../lib/bounded-map.js';
import { keys } from './keys.js';

export interface KeptObject {
  /** The output's place in the prediction's output, depth first, from 0. */
  n: number;
  /** The object's key in the output store. */
  key: string;
  size: number;
  contentType: string;
  /** A strong ETag (the SHA-256 of the bytes). */
  etag: string;
}

export interface OutputManifest {
  id: string;
  tenant: string;
  /** When the copies were made and when they are deleted (ms since the epoch). */
  keptAt: number;
  expiresAt: number;
  objects: KeptObject[];
}

export interface OutputsStore {
  /** Claims attempt `attempt` of the copy of a prediction's outputs; true for exactly one caller across replicas. */
  claim(id: string, attempt: number, ttlMs: number): Promise<boolean>;
  /** Counts `bytes` more kept for the tenant unless that would pass `max`; one atomic step. */
  addBytes(tenant: string, bytes: number, max?: number): Promise<{ ok: boolean; used: number }>;
  /** Bytes the tenant keeps now. */
  bytes(tenant: string): Promise<number>;
  /** Writes (or replaces) the manifest and schedules its end; the manifest lives a day past it. */
  save(m: OutputManifest): Promise<void>;
  manifest(id: string): Promise<OutputManifest | null>;
  /** Predictions whose retention ended by `now`, oldest first, at most `max`. */
  due(now: number, max: number): Promise<string[]>;
  /**
   * Takes a prediction out of the retention set: the one caller that does (across replicas) gets the manifest, which
   * is deleted, and its bytes are no longer counted for the tenant. Everyone else gets null.
   */
  take(id: string): Promise<OutputManifest | null>;
}

/** A manifest outlives its retention by a day, so the sweep (within a minute of the end) always finds it. */
const MANIFEST_MARGIN_MS = 86_400_000;

// {t:} KEYS: bytes. ARGV: bytes, max ('' for none). Returns the bytes now kept, negated (minus one) when refused.
const ADD_BYTES = `
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local add = tonumber(ARGV[1])
if ARGV[2] ~= '' and add > 0 and used + add > tonumber(ARGV[2]) then return -used - 1 end
used = redis.call('INCRBY', KEYS[1], add)
if used < 0 then redis.call('SET', KEYS[1], 0) used = 0 end
return used`;

interface ScriptedRedis extends Redis {
  fgwOutputsAddBytes(...args: (string | number)[]): Promise<number>;
}

export class RedisOutputsStore implements OutputsStore {
  readonly #client: ScriptedRedis;

  /** Shares the state store's client (that store closes it). */
  constructor(client: Redis) {
    this.#client = client as ScriptedRedis;
    if (!('fgwOutputsAddBytes' in client)) client.defineCommand('fgwOutputsAddBytes', { numberOfKeys: 1, lua: ADD_BYTES });
  }

  async claim(id: string, attempt: number, ttlMs: number) {
    return (await this.#client.set(keys.outputsClaim(id, attempt), '1', 'PX', ttlMs, 'NX').catch(rethrowUnavailable)) === 'OK';
  }

  async addBytes(tenant: string, bytes: number, max?: number) {
    const r = Number(await this.#client.fgwOutputsAddBytes(keys.outputsBytes(tenant), bytes, max ?? '').catch(rethrowUnavailable));
    return r < 0 ? { ok: false, used: -r - 1 } : { ok: true, used: r };
  }

  async bytes(tenant: string) {
    return Math.max(0, Number((await this.#client.get(keys.outputsBytes(tenant)).catch(rethrowUnavailable)) ?? 0));
  }

  async save(m: OutputManifest) {
    const ttl = Math.max(1, m.expiresAt + MANIFEST_MARGIN_MS - Date.now());
    // The manifest first: a failure before the schedule leaves objects that no sweep finds, never a schedule that
    // names nothing. (Each in its own slot, so not one script.)
    await this.#client.set(keys.outputs(m.id), JSON.stringify(m), 'PX', ttl).catch(rethrowUnavailable);
    await this.#client.zadd(keys.outputsExpiry, m.expiresAt, m.id).catch(rethrowUnavailable);
  }

  async manifest(id: string) {
    const v = await this.#client.get(keys.outputs(id)).catch(rethrowUnavailable);
    return v ? (JSON.parse(v) as OutputManifest) : null;
  }

  async due(now: number, max: number) {
    return this.#client.zrangebyscore(keys.outputsExpiry, '-inf', now, 'LIMIT', 0, max).catch(rethrowUnavailable);
  }

  async take(id: string) {
    // ZREM answers 1 to one caller only: that one deletes.
    if (Number(await this.#client.zrem(keys.outputsExpiry, id).catch(rethrowUnavailable)) !== 1) return null;
    const m = await this.manifest(id);
    if (!m) return null;
    await this.#client.del(keys.outputs(id)).catch(rethrowUnavailable);
    const bytes = m.objects.reduce((n, o) => n + o.size, 0);
    if (bytes > 0) await this.addBytes(m.tenant, -bytes);
    return m;
  }
}

export class MemoryOutputsStore implements OutputsStore {
  readonly #claims = new BoundedMap<true>({ maxEntries: 100_000 });
  readonly #manifests = new Map<string, OutputManifest>();
  readonly #bytes = new Map<string, number>();

  async claim(id: string, attempt: number, ttlMs: number) {
    const k = `${id}:${attempt}`;
    if (this.#claims.has(k)) return false;
    this.#claims.set(k, true, ttlMs);
    return true;
  }

  async addBytes(tenant: string, bytes: number, max?: number) {
    const used = this.#bytes.get(tenant) ?? 0;
    if (max !== undefined && bytes > 0 && used + bytes > max) return { ok: false, used };
    const now = Math.max(0, used + bytes);
    this.#bytes.set(tenant, now);
    return { ok: true, used: now };
  }

  async bytes(tenant: string) {
    return this.#bytes.get(tenant) ?? 0;
  }

  // Bounded by what is kept: every manifest leaves at its retention's end (the sweep takes it).
  async save(m: OutputManifest) {
    this.#manifests.set(m.id, structuredClone(m));
  }

  async manifest(id: string) {
    const m = this.#manifests.get(id);
    return m ? structuredClone(m) : null;
  }

  async due(now: number, max: number) {
    return [...this.#manifests.values()].filter((m) => m.expiresAt <= now).sort((a, b) => a.expiresAt - b.expiresAt).slice(0, max).map((m) => m.id);
  }

  async take(id: string) {
    const m = this.#manifests.get(id);
    if (!m) return null;
    this.#manifests.delete(id);
    await this.addBytes(m.tenant, -m.objects.reduce((n, o) => n + o.size, 0));
    return m;
  }
}
