// Requests and creates per API key id and UTC day. Counted in this process and added to the store once a second
// (one pipeline), so a request never waits on it; a crash loses at most that second's counts.
import type { FastifyBaseLogger } from 'fastify';
import type { TenantStore } from '../store/tenant-store.js';
import { today } from '../usage/day.js';

const FLUSH_MS = 1000;
const KEEP_MS = 400 * 86_400_000;

export class KeyUsage {
  #pending = new Map<string, number>();
  #day = today();
  #timer: NodeJS.Timeout | undefined;

  constructor(private readonly store: TenantStore, private readonly log: FastifyBaseLogger) {}

  start(): void {
    this.#timer = setInterval(() => void this.flush(), FLUSH_MS);
    this.#timer.unref();
  }

  count(keyId: string, create: boolean): void {
    const day = today();
    // A day's counts go under that day: flush what the last one held before counting into the new one.
    if (day !== this.#day) void this.flush();
    this.#add(`${keyId}:requests`, 1);
    if (create) this.#add(`${keyId}:creates`, 1);
  }

  #add(field: string, n: number): void {
    this.#pending.set(field, (this.#pending.get(field) ?? 0) + n);
  }

  async flush(): Promise<void> {
    const counts = this.#pending;
    const day = this.#day;
    this.#pending = new Map();
    this.#day = today();
    if (!counts.size) return;
    try {
      await this.store.addKeyUsage(day, Object.fromEntries(counts), KEEP_MS);
    } catch (err) {
      // Put them back: the next flush tries again.
      for (const [f, n] of counts) this.#add(f, n);
      this.log.warn({ err }, 'per-key usage not saved yet; retrying');
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
