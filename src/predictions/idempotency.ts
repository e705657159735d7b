// Idempotent creates: an Idempotency-Key is claimed in the store before the upstream is called, so a retried
// create (the official client re-sends after a dropped connection) starts at most one paid job across replicas.
import { createHash, randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { GatewayError } from '../errors.js';
import type { IdempotencyRecord, Store } from '../store/store.js';
import { untilStored } from './store-retry.js';

const POLL_MS = 100;

/** A replayed create: its stored status and raw body. */
export interface Replay {
  status: number;
  raw: string;
}

/** The store key of a client's Idempotency-Key within `scope` (a tenant, or one token); 400 for a malformed header. */
export function idempotencyKey(scope: string, header: unknown): string | undefined {
  if (header === undefined) return undefined;
  if (typeof header !== 'string' || !/^[\x21-\x7e]{1,255}$/.test(header)) {
    throw new GatewayError('BAD_REQUEST', 'Idempotency-Key must be 1-255 visible ASCII characters');
  }
  return `${scope}:${createHash('sha256').update(header).digest('hex')}`;
}

/** What makes two creates "the same request": the path and the body. */
export function fingerprintOf(path: string, body: string): string {
  return createHash('sha256').update(path).update('\n').update(body).digest('hex');
}

export class IdempotentCreate {
  constructor(
    readonly store: Store,
    readonly key: string,
    readonly fingerprint: string,
  ) {}

  /**
   * Claims the key, or returns the finished create it names (replay). Waits while another request (or replica)
   * holds it, until `deadline`. If the store dies between taking the claim and answering, the retry finds this
   * request's own claim and goes on.
   */
  async claim(leaseMs: number, deadline: number): Promise<Replay | undefined> {
    const holder = randomUUID();
    for (;;) {
      const existing = await untilStored(() => this.store.idemBegin(this.key, this.fingerprint, leaseMs, holder));
      if (!existing) return undefined;
      const replay = await this.#await(existing, deadline);
      if (replay) return replay;
      // Released: the first attempt failed before the upstream created anything; claim it again.
    }
  }

  async #await(first: IdempotencyRecord, deadline: number): Promise<Replay | undefined> {
    // The first record is the one the claim attempt found: no second read for it.
    for (let rec: IdempotencyRecord | null = first; ; rec = await this.store.idemGet(this.key)) {
      if (!rec) return undefined;
      if (rec.fingerprint !== this.fingerprint) {
        throw new GatewayError('IDEMPOTENCY_MISMATCH', 'this Idempotency-Key was already used with a different request body');
      }
      if (rec.state === 'done') return { status: rec.status!, raw: rec.body! };
      if (Date.now() + POLL_MS > deadline) {
        throw new GatewayError('CONFLICT', 'a request with this Idempotency-Key is still in progress; retry later', {
          headers: { 'retry-after': '1' },
        });
      }
      await sleep(POLL_MS);
    }
  }

  /** The create failed before the upstream made anything: a retry may try again. */
  async release(): Promise<void> {
    await this.store.idemRelease(this.key).catch(() => {});
  }

  /** The record a finished create leaves for its replays. */
  done(status: number, raw: string): IdempotencyRecord {
    return { state: 'done', fingerprint: this.fingerprint, status, body: raw };
  }
}
