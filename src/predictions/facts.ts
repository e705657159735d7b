// Per-process memory of facts that never change: who owns a prediction, and a terminal prediction's body. Keeping
// them saves a store round trip on hot ids without risking a stale answer (DESIGN.md allows this per process).
import { BoundedMap } from '../lib/bounded-map.js';
import { MAX_REMEMBERED_BODY, type PredictionBody } from './prediction.js';

/** Terminal bodies held at most, counting each once raw and once rendered. */
const TERMINAL_BYTES = 64 * 1024 * 1024;

export class Facts {
  readonly owners: BoundedMap<string>;
  readonly #terminal: BoundedMap<PredictionBody>;

  constructor(max = 10_000, ttlMs = 5 * 60_000) {
    this.owners = new BoundedMap({ maxEntries: max, ttlMs });
    // JS strings of JSON are mostly one byte a character; a rendering is about as long as the raw body.
    this.#terminal = new BoundedMap({ maxEntries: Math.ceil(max / 4), ttlMs, maxBytes: TERMINAL_BYTES, sizeOf: (b) => 2 * b.raw.length });
  }

  terminal(id: string): PredictionBody | undefined {
    return this.#terminal.get(id);
  }

  /** Remembers a terminal body unless it is huge (data: URIs in inputs). */
  setTerminal(id: string, body: PredictionBody): void {
    if (body.raw.length <= MAX_REMEMBERED_BODY) this.#terminal.set(id, body);
  }
}
