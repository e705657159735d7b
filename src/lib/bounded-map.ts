// The one in-process cache: a Map with per-entry expiry that forgets the least recently used entries past a count
// or a byte budget. Every per-process memory (owners, terminal bodies, the poll micro-cache, rate-limit buckets,
// the memory store) is one of these, so every one of them is bounded the same way.

export interface BoundedMapOptions<V> {
  /** Most entries held; the least recently used go first. */
  maxEntries: number;
  /** Most bytes held, as `sizeOf` counts them (default: no byte bound). */
  maxBytes?: number;
  sizeOf?: (value: V, key: string) => number;
  /** Expiry of entries set without one (default: never). */
  ttlMs?: number;
}

interface Entry<V> {
  value: V;
  expiresAt: number;
  size: number;
  /** Insertion counter at the entry's last move to the back of the map. */
  seq: number;
}

export class BoundedMap<V> {
  readonly #map = new Map<string, Entry<V>>();
  readonly #maxEntries: number;
  readonly #maxBytes: number;
  readonly #sizeOf: ((value: V, key: string) => number) | undefined;
  readonly #ttlMs: number;
  #bytes = 0;
  #seq = 0;

  constructor(opts: BoundedMapOptions<V>) {
    this.#maxEntries = opts.maxEntries;
    this.#maxBytes = opts.maxBytes ?? Infinity;
    this.#sizeOf = opts.sizeOf;
    this.#ttlMs = opts.ttlMs ?? Infinity;
  }

  /** The live value, which also counts as a use (it moves away from eviction). */
  get(key: string): V | undefined {
    const e = this.#live(key);
    if (!e) return undefined;
    // Only entries in the older half move: a hot key is not re-inserted on every read, and still never reaches the
    // front where eviction starts.
    if (this.#seq - e.seq > this.#map.size >> 1) {
      this.#map.delete(key);
      e.seq = ++this.#seq;
      this.#map.set(key, e);
    }
    return e.value;
  }

  /** The live value without counting a use. */
  peek(key: string): V | undefined {
    return this.#live(key)?.value;
  }

  has(key: string): boolean {
    return this.#live(key) !== undefined;
  }

  /** Milliseconds until the entry expires (0 when absent). */
  expiresIn(key: string): number {
    const e = this.#live(key);
    return e ? Math.max(0, e.expiresAt - Date.now()) : 0;
  }

  /** Sets a value; false when it alone is larger than the byte budget (nothing is stored then). */
  set(key: string, value: V, ttlMs = this.#ttlMs): boolean {
    this.delete(key);
    const size = this.#sizeOf ? this.#sizeOf(value, key) : 0;
    if (size > this.#maxBytes) return false;
    const now = Date.now();
    this.#map.set(key, { value, expiresAt: now + ttlMs, size, seq: ++this.#seq });
    this.#bytes += size;
    // The head holds the least recently used: drop expired ones there on every insert (a cheap, incremental sweep),
    // then whatever is over the bounds.
    for (const [k, e] of this.#map) {
      if (e.expiresAt <= now || this.#map.size > this.#maxEntries || this.#bytes > this.#maxBytes) this.delete(k);
      else break;
    }
    return true;
  }

  delete(key: string): void {
    const e = this.#map.get(key);
    if (!e) return;
    this.#bytes -= e.size;
    this.#map.delete(key);
  }

  clear(): void {
    this.#map.clear();
    this.#bytes = 0;
  }

  get size(): number {
    return this.#map.size;
  }

  get bytes(): number {
    return this.#bytes;
  }

  #live(key: string): Entry<V> | undefined {
    const e = this.#map.get(key);
    if (!e) return undefined;
    if (e.expiresAt <= Date.now()) {
      this.delete(key);
      return undefined;
    }
    return e;
  }
}
