// Per-process memory of facts that never change: who owns a prediction, and a terminal prediction's body. Keeping
// them saves a Redis round trip on hot ids without risking a stale answer (DESIGN.md allows this per process).

interface Terminal {
  raw: string;
  /** The last rendering (URLs rewritten for `base`), reused while the base stays the same. */
  base?: string;
  body?: string;
}

/** A Map that forgets the least recently used entries past `max` entries, and anything older than `ttlMs`. */
class Lru<V> {
  readonly #map = new Map<string, { v: V; at: number }>();
  constructor(readonly max: number, readonly ttlMs: number) {}

  get(key: string): V | undefined {
    const e = this.#map.get(key);
    if (!e) return undefined;
    if (Date.now() - e.at > this.ttlMs) {
      this.#map.delete(key);
      return undefined;
    }
    // Re-insert (keeping its age): an id still being polled stays, the ones nobody asks for go first.
    this.#map.delete(key);
    this.#map.set(key, e);
    return e.v;
  }

  set(key: string, v: V): void {
    this.#map.delete(key);
    this.#map.set(key, { v, at: Date.now() });
    if (this.#map.size > this.max) this.#map.delete(this.#map.keys().next().value as string);
  }
}

export class Facts {
  readonly #owners: Lru<string>;
  readonly #terminal: Lru<Terminal>;

  constructor(max = 10_000, ttlMs = 5 * 60_000) {
    this.#owners = new Lru(max, ttlMs);
    this.#terminal = new Lru(Math.ceil(max / 4), ttlMs);
  }

  owner(id: string): string | undefined {
    return this.#owners.get(id);
  }

  setOwner(id: string, tenant: string): void {
    this.#owners.set(id, tenant);
  }

  terminal(id: string): Terminal | undefined {
    return this.#terminal.get(id);
  }

  setTerminal(id: string, raw: string): Terminal {
    const t = { raw };
    this.#terminal.set(id, t);
    return t;
  }
}
