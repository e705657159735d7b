// Requests and creates per API key id and UTC day. Counted in this process and added to the store once a second
// (one pipeline), so a request never waits on it; a crash loses at most that second's counts.
import type { FastifyBaseLogger } from 'fastify';
import type { TenantStore } from '../store/tenant-store.js';
import { today } from '../usage/day.js';

const FLUSH_MS = 1000;
const KEEP_MS = 400 * 86_400_000;

export class KeyUsage {
  /** Counts not yet in the store, by the UTC day they belong to (usually one; two around midnight). */
  #pending = new Map<string, Map<string, number>>();
  #timer: NodeJS.Timeout | undefined;

  constructor(private readonly store: TenantStore, private readonly log: FastifyBaseLogger) {}

  start(): void {
    this.#timer = setInterval(() => void this.flush(), FLUSH_MS);
    this.#timer.unref();
  }

  count(keyId: string, create: boolean): void {
    const day = today();
    this.#add(day, `${keyId}:requests`, 1);
    if (create) this.#add(day, `${keyId}:creates`, 1);
  }

  #add(day: string, field: string, n: number): void {
    let counts = this.#pending.get(day);
    if (!counts) this.#pending.set(day, (counts = new Map()));
    counts.set(field, (counts.get(field) ?? 0) + n);
  }

  async flush(): Promise<void> {
    const pending = this.#pending;
    this.#pending = new Map();
    for (const [day, counts] of pending) {
      try {
        await this.store.addKeyUsage(day, Object.fromEntries(counts), KEEP_MS);
      } catch (err) {
        // Put them back under their own day, even if that day has ended: the next flush tries again.
        for (const [f, n] of counts) this.#add(day, f, n);
        this.log.warn({ err }, 'per-key usage not saved yet; retrying');
      }
    }
  }

  async stop(): Promise<void> {
    clearInterval(this.#timer);
    await this.flush();
  }

  /** A key's counts per day. */
  async of(keyId: string, days: string[]): Promise<Record<string, { requests: number; creates: number }>> {
    const rows = await this.store.keyUsage(days);
    return Object.fromEntries(days.map((d, i) => [d, { requests: rows[i]![`${keyId}:requests`] ?? 0, creates: rows[i]![`${keyId}:creates`] ?? 0 }]));
  }
}
