// Poll storms: concurrent GETs of one id share one upstream call, and a non-terminal answer is reused for
// POLL_CACHE_MS. Deliberately per process (DESIGN.md): it only saves upstream calls, it never decides anything.
import type { UpstreamClient, UpstreamResponse } from '../upstream.js';

const MAX_MICRO_ENTRIES = 10_000;
const MAX_MICRO_BYTES = 64 * 1024 * 1024;
/** Bodies above this size are never kept in memory (they can carry whole images as data: URIs). */
export const MAX_REMEMBERED_BODY = 256 * 1024;

export class Poller {
  readonly #inflight = new Map<string, Promise<UpstreamResponse>>();
  readonly #micro = new Map<string, { res: UpstreamResponse; at: number }>();
  #bytes = 0;

  constructor(
    readonly upstream: UpstreamClient,
    readonly microMs: number,
  ) {}

  /** A non-terminal answer still fresh enough to reuse, without waiting. */
  peek(id: string): UpstreamResponse | undefined {
    const cached = this.#micro.get(id);
    return cached && Date.now() - cached.at < this.microMs ? cached.res : undefined;
  }

  /** The upstream answer for this id, and whether it was shared with (or reused from) another request. */
  async get(id: string, requestId: string): Promise<{ res: UpstreamResponse; shared: boolean }> {
    const cached = this.peek(id);
    if (cached) return { res: cached, shared: true };
    const pending = this.#inflight.get(id);
    if (pending) return { res: await pending, shared: true };
    const p = this.upstream.request({ method: 'GET', path: `/predictions/${encodeURIComponent(id)}`, requestId, retry: true });
    this.#inflight.set(id, p);
    try {
      const res = await p;
      if (this.microMs > 0 && res.status === 200) this.#remember(id, res);
      return { res, shared: false };
    } finally {
      this.#inflight.delete(id);
    }
  }

  /** Only non-terminal answers are worth remembering; the caller says which are terminal by forgetting them. */
  forget(id: string): void {
    this.#drop(id);
  }

  #remember(id: string, res: UpstreamResponse): void {
    // A huge body (inputs sent as data: URIs) is not worth holding: memory must be bounded by size, not just count.
    if (res.body.length > MAX_REMEMBERED_BODY) return;
    this.#drop(id);
    const now = Date.now();
    this.#micro.set(id, { res, at: now });
    this.#bytes += res.body.length;
    // Entries are in insertion order, so the stale ones are at the head: drop them on every insert, so that nothing
    // outlives its window by more than one insert, and the oldest fresh ones go when over the caps.
    for (const [k, v] of this.#micro) {
      if (now - v.at >= this.microMs || this.#micro.size > MAX_MICRO_ENTRIES || this.#bytes > MAX_MICRO_BYTES) this.#drop(k);
      else break;
    }
  }

  #drop(id: string): void {
    const e = this.#micro.get(id);
    if (!e) return;
    this.#bytes -= e.res.body.length;
    this.#micro.delete(id);
  }
}
