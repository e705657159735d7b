// Per-process memory of facts that never change: who owns a prediction, and a terminal prediction's body. Keeping
// them saves a Redis round trip on hot ids without risking a stale answer (DESIGN.md allows this per process).
import { MAX_REMEMBERED_BODY } from './poller.js';

interface Terminal {
  raw: string;
  /** The last rendering (URLs rewritten for `base`), reused while the base stays the same. */
  base?: string;
  body?: string;
}

/**
 * A Map that forgets the least recently used entries past `max` entries or `maxBytes` (as `sizeOf` counts them),
 * and anything older than `ttlMs`.
 */
class Lru<V> {
  readonly #map = new Map<string, { v: V; at: number; size: number; seq: number }>();
  #bytes = 0;
  /** Counts insertions; an entry's `seq` says how recently it went to the back of the map. */
  #seq = 0;
  constructor(
    readonly max: number,
    readonly ttlMs: number,
    readonly maxBytes = Infinity,
    readonly sizeOf: (v: V) => number = () => 0,
  ) {}

  get(key: string): V | undefined {
    const e = this.#map.get(key);
    if (!e) return undefined;
    if (Date.now() - e.at > this.ttlMs) {
      this.#delete(key);
      return undefined;
    }
    // Re-insert (keeping its age): an id still being polled stays, the ones nobody asks for go first. Only entries
    // in the older half move: a hot id is not re-inserted on every request, and still never reaches the front.
    if (this.#seq - e.seq > this.#map.size >> 1) {
      this.#map.delete(key);
      e.seq = ++this.#seq;
      this.#map.set(key, e);
    }
    return e.v;
  }

  set(key: string, v: V): void {
    this.#delete(key);
    const size = this.sizeOf(v);
    this.#map.set(key, { v, at: Date.now(), size, seq: ++this.#seq });
    this.#bytes += size;
    while (this.#map.size > this.max || this.#bytes > this.maxBytes) this.#delete(this.#map.keys().next().value as string);
  }

  #delete(key: string): void {
    const e = this.#map.get(key);
    if (!e) return;
    this.#bytes -= e.size;
    this.#map.delete(key);
  }
}

/** Terminal bodies held at most, counting each once raw and once rendered. */
const TERMINAL_BYTES = 64 * 1024 * 1024;

export class Facts {
  readonly #owners: Lru<string>;
  readonly #terminal: Lru<Terminal>;

  constructor(max = 10_000, ttlMs = 5 * 60_000) {
    this.#owners = new Lru(max, ttlMs);
    // JS strings of JSON are mostly one byte a character; a rendering is about as long as the raw body.
    this.#terminal = new Lru(Math.ceil(max / 4), ttlMs, TERMINAL_BYTES, (t) => 2 * t.raw.length);
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

  /** Remembers a terminal body unless it is huge (data: URIs in inputs). */
  setTerminal(id: string, raw: string): Terminal {
    const t = { raw };
    if (raw.length <= MAX_REMEMBERED_BODY) this.#terminal.set(id, t);
    return t;
  }
}
