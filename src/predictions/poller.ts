// Poll storms: concurrent GETs of one id share one upstream call, and a non-terminal answer is reused for
// POLL_CACHE_MS. Deliberately per process (DESIGN.md): it only saves upstream calls, it never decides anything.
import { BoundedMap } from '../lib/bounded-map.js';
import type { Upstreams } from '../upstream/upstreams.js';
import type { ClientInputs } from './client-inputs.js';
import { MAX_REMEMBERED_BODY, PredictionBody, sameId } from './prediction.js';

export class Poller {
  readonly #inflight = new Map<string, Promise<PredictionBody>>();
  readonly #micro: BoundedMap<PredictionBody>;

  constructor(
    readonly upstreams: Upstreams,
    readonly microMs: number,
    readonly maxDepth: number,
    /** Every answer shows the client's own input (the upstream echoes the files the gateway inlined). */
    readonly inputs: ClientInputs,
  ) {
    this.#micro = new BoundedMap({ maxEntries: 10_000, maxBytes: 64 * 1024 * 1024, ttlMs: microMs, sizeOf: (b) => b.raw.length });
  }

  /** A non-terminal answer still fresh enough to reuse, without waiting. */
  peek(id: string): PredictionBody | undefined {
    return this.microMs > 0 ? this.#micro.peek(id) : undefined;
  }

  /**
   * The upstream's current answer for this id, and whether it was shared with (or reused from) another request.
   * `observe` is told the upstream time of the call this request made itself.
   */
  async get(
    id: string,
    caller: { requestId: string; tenant: string; observe: (ms: number, outcome: string) => void; trace?: unknown; upstream?: string | null },
    opts: { skipMicroCache?: boolean; timeoutMs?: number } = {},
  ): Promise<{ body: PredictionBody; shared: boolean }> {
    const cached = opts.skipMicroCache ? undefined : this.peek(id);
    if (cached) return { body: cached, shared: true };
    const pending = this.#inflight.get(id);
    if (pending) return { body: await pending, shared: true };
    // Ids are the upstream's, so one id is one prediction on one account: its pin says which.
    const client = this.upstreams.client(caller.upstream);
    const p = client
      .request({ method: 'GET', path: `/predictions/${encodeURIComponent(id)}`, requestId: caller.requestId, tenant: caller.tenant, retry: true, timeoutMs: opts.timeoutMs, observe: caller.observe, trace: caller.trace })
      .then((res) => this.inputs.restore(sameId(PredictionBody.fromUpstream(res.body, this.maxDepth), id)));
    this.#inflight.set(id, p);
    try {
      const body = await p;
      // Terminal answers go to the store and Facts; a huge body (inputs as data: URIs) is not worth holding.
      if (this.microMs > 0 && !body.terminal && body.raw.length <= MAX_REMEMBERED_BODY) this.#micro.set(id, body);
      return { body, shared: false };
    } finally {
      this.#inflight.delete(id);
    }
  }

  forget(id: string): void {
    this.#micro.delete(id);
  }
}
