// Idempotent creates: an Idempotency-Key is claimed in the store before the upstream is called, so a retried
// create (the official client re-sends after a dropped connection) starts at most one paid job across replicas.
// Clients that mark their own retries (src/predictions/client-retries.ts) get the same, keyed by what they send.
import { createHash, randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { GatewayError } from '../errors.js';
import type { IdempotencyRecord, Store } from '../store/store.js';
import { type ClientAttempt, RETRY_MEMORY_SECONDS } from './client-retries.js';
import { untilStored } from './store-retry.js';

const POLL_MS = 100;

/** A replayed create: its stored status, and the prediction it made (or, from an older gateway, the raw body). */
export interface Replay {
  status: number;
  id?: string;
  raw?: string;
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
    /** How long the finished create is replayed; undefined: IDEMPOTENCY_TTL_SECONDS. */
    readonly ttlSeconds?: number,
  ) {}

  /**
   * A first attempt never replays: two identical first attempts are two jobs the client asked for. It claims the
   * key only so that its own retries find it, over the finished record of an older identical create (this one is
   * newer), but not over a claim still pending (an identical create in flight): then it goes on unclaimed. True
   * when it holds the claim.
   */
  async claimFirst(leaseMs: number): Promise<boolean> {
    const holder = randomUUID();
    const begin = () => untilStored(() => this.store.idemBegin(this.key, this.fingerprint, leaseMs, holder));
    let existing = await begin();
    if (existing?.state === 'done') {
      await untilStored(() => this.store.idemRelease(this.key));
      existing = await begin();
    }
    return existing === null;
  }

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
      if (rec.state === 'done') return { status: rec.status!, id: rec.id, raw: rec.body };
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

  /** The record a finished create leaves for its replays (kept for `ttlSeconds`): its status and the prediction's id. */
  done(status: number, id: string): IdempotencyRecord {
    return { state: 'done', fingerprint: this.fingerprint, status, id };
  }
}

/** A create's idempotency: a stored answer to replay, or the claim it holds while it runs, or neither. */
export interface CreateClaim {
  replay?: Replay;
  idem?: IdempotentCreate;
}

/**
 * Claims a create's key before it goes upstream. With the client's Idempotency-Key, that key. Without one, for a
 * client that marks its attempts: an implicit key from the scope and the exact path and body, remembered for
 * RETRY_MEMORY_SECONDS; attempt 0 claims it, a later attempt replays it or waits for it (at most until the client's
 * own timeout, then 409 with retry-after, which the client retries). A create with neither costs no store trip.
 * `scope` is the tenant, or one token: two browser tokens of a tenant never replay each other's creates.
 */
export async function claimCreate(
  store: Store,
  scope: string,
  input: { path: string; body: string; idempotencyKey?: unknown; attempt?: ClientAttempt },
  timeoutMs: number,
): Promise<CreateClaim> {
  const explicit = idempotencyKey(scope, input.idempotencyKey);
  const attempt = input.attempt;
  if (!explicit && !attempt) return {};
  const fingerprint = fingerprintOf(input.path, input.body);
  const leaseMs = timeoutMs + 30_000;
  let deadline = Date.now() + timeoutMs;
  let idem: IdempotentCreate;
  if (explicit) idem = new IdempotentCreate(store, explicit, fingerprint);
  else {
    idem = new IdempotentCreate(store, `${scope}:retry:${fingerprint}`, fingerprint, RETRY_MEMORY_SECONDS);
    if (attempt!.attempt === 0) return (await idem.claimFirst(leaseMs)) ? { idem } : {};
    if (attempt!.answerWithinMs !== undefined) deadline = Math.min(deadline, Date.now() + attempt!.answerWithinMs);
  }
  const replay = await idem.claim(leaseMs, deadline);
  return replay ? { replay } : { idem };
}
