// Small shared facts that need no schema of their own (webhook secrets, receiver tokens, seen message ids, the last
// delivery failures): a key-value contract with the few atomic steps they need, in Redis or in this process.
import type { Redis } from 'ioredis';
import { rethrowUnavailable } from '../errors.js';
import { BoundedMap } from '../lib/bounded-map.js';
import { keys } from './keys.js';

export interface KvStore {
  get(key: string): Promise<string | null>;
  set(key: string, value: string, ttlMs?: number): Promise<void>;
  /** Sets only when absent; true if this call set it (exactly one caller wins across replicas). */
  setIfAbsent(key: string, value: string, ttlMs?: number): Promise<boolean>;
  /** Prepends to a list kept at `max` entries (newest first). */
  pushCapped(key: string, value: string, max: number, ttlMs: number): Promise<void>;
  /** The list, newest first. */
  list(key: string): Promise<string[]>;
}


export class RedisKvStore implements KvStore {
  readonly #client: Redis;
  /** Shares the state store's client (that store closes it); keys go under `kv:`. */
  constructor(client: Redis) {
    this.#client = client;
  }

  async get(key: string) {
    return this.#client.get(keys.kv(key)).catch(rethrowUnavailable);
  }

  async set(key: string, value: string, ttlMs?: number) {
    await (ttlMs ? this.#client.set(keys.kv(key), value, 'PX', ttlMs) : this.#client.set(keys.kv(key), value)).catch(rethrowUnavailable);
  }

  async setIfAbsent(key: string, value: string, ttlMs?: number) {
    const r = await (ttlMs ? this.#client.set(keys.kv(key), value, 'PX', ttlMs, 'NX') : this.#client.set(keys.kv(key), value, 'NX')).catch(rethrowUnavailable);
    return r === 'OK';
  }

  async pushCapped(key: string, value: string, max: number, ttlMs: number) {
    await this.#client.multi().lpush(keys.kv(key), value).ltrim(keys.kv(key), 0, max - 1).pexpire(keys.kv(key), ttlMs).exec().catch(rethrowUnavailable);
  }

  async list(key: string) {
    return this.#client.lrange(keys.kv(key), 0, -1).catch(rethrowUnavailable);
  }
}

export class MemoryKvStore implements KvStore {
  readonly #values = new BoundedMap<string>({ maxEntries: 100_000, maxBytes: 64 * 1024 * 1024, sizeOf: (v, k) => v.length + k.length });
  /** Facts without an expiry (a tenant's webhook secret, when it was shown): a few per tenant, never evicted by the
   *  many short-lived entries, which would otherwise silently replace a secret tenants verify with. */
  readonly #lasting = new Map<string, string>();
  readonly #lists = new BoundedMap<string[]>({ maxEntries: 10_000, maxBytes: 64 * 1024 * 1024, sizeOf: (v) => v.reduce((n, s) => n + s.length, 0) });

  async get(key: string) {
    return this.#lasting.get(key) ?? this.#values.get(key) ?? null;
  }

  async set(key: string, value: string, ttlMs?: number) {
    if (ttlMs === undefined) {
      this.#values.delete(key);
      this.#lasting.set(key, value);
    } else {
      this.#lasting.delete(key);
      this.#values.set(key, value, ttlMs);
    }
  }

  async setIfAbsent(key: string, value: string, ttlMs?: number) {
    if (this.#lasting.has(key) || this.#values.has(key)) return false;
    await this.set(key, value, ttlMs);
    return true;
  }

  async pushCapped(key: string, value: string, max: number, ttlMs: number) {
    const next = [value, ...(this.#lists.get(key) ?? [])].slice(0, max);
    this.#lists.set(key, next, ttlMs);
  }

  async list(key: string) {
    return [...(this.#lists.get(key) ?? [])];
  }
}
