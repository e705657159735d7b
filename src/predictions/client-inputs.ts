// A prediction's `input` as its client sent it. The upstream got the gateway's files inlined (data: URIs) or as
// signed links, and echoes them back in every answer: a 10 MB file made every answer, record and list entry 14 MB.
// Every upstream answer about a prediction passes through `restore` before anything keeps or renders it, so the
// client sees (and the store keeps) the file's gateway URL, as sent.
import { BoundedMap } from '../lib/bounded-map.js';
import type { Store } from '../store/store.js';
import type { Prediction, PredictionBody } from './prediction.js';

/** What the gateway puts in an input for the upstream in place of one of its file URLs. */
const SIGNED_FILE = '/gateway/v1/files/';

/** Whether an input holds a value the gateway may have put there for a file (one walk, no copy). */
export function carriesFiles(value: unknown, depth = 0): boolean {
  if (typeof value === 'string') return value.startsWith('data:') || value.includes(SIGNED_FILE);
  if (depth > 256 || !value || typeof value !== 'object') return false;
  if (Array.isArray(value)) {
    for (const v of value) if (carriesFiles(v, depth + 1)) return true;
    return false;
  }
  for (const k in value) if (carriesFiles((value as Record<string, unknown>)[k], depth + 1)) return true;
  return false;
}

/** The record already shows what the upstream echoes (a client that sent data: URIs itself): nothing to restore. */
const AS_ECHOED = Symbol('as echoed');

export class ClientInputs {
  readonly #store: Store;
  // Per process, like Facts: a prediction's input never changes, so remembering it can never be stale.
  readonly #known = new BoundedMap<unknown>({ maxEntries: 10_000, ttlMs: 10 * 60_000, maxBytes: 16 * 1024 * 1024, sizeOf: (v) => (v === AS_ECHOED ? 8 : JSON.stringify(v).length) });

  constructor(store: Store) {
    this.#store = store;
  }

  /** At create: the input the client sent, which the gateway changed on its way upstream. */
  remember(id: string, input: unknown): void {
    this.#known.set(id, input);
  }

  /**
   * The answer with the client's own input, when the upstream echoed one the gateway changed; else the answer as
   * it is. Only an answer whose input carries a data: URI or a signed file link costs anything: a look at the
   * prediction's record (which holds the client's input since its create), once per process.
   */
  async restore(body: PredictionBody): Promise<PredictionBody> {
    if (!carriesFiles(body.prediction.input)) return body;
    let mine = this.#known.get(body.id);
    if (mine === undefined) {
      const { record } = await this.#store.current(body.id);
      if (!record) return body;
      const input = (JSON.parse(record) as Prediction).input;
      mine = input === undefined || carriesFiles(input) ? AS_ECHOED : input;
      this.#known.set(body.id, mine);
    }
    return mine === AS_ECHOED ? body : body.withInput(mine);
  }
}
