// Where watched predictions wait for their next step. With Redis: a BullMQ queue on the same Redis, so every replica
// works it, no prediction is handled by two replicas at once (BullMQ's job lock), and a restart loses nothing (the
// job and its state live in Redis). Without Redis: the same contract with timers in this process.
import { DelayedError, Queue, Worker } from 'bullmq';
import type { Cluster, Redis } from 'ioredis';
import { BoundedMap } from '../lib/bounded-map.js';
import { type RedisTarget, bullPrefix, createBullConnection } from '../store/redis-client.js';

/** One step of a watch: given its state, returns the new state and when to run again (null: the watch is over). */
export type Step<S> = (state: S) => Promise<{ state: S; againInMs: number | null }>;

export interface WatchQueue<S> {
  /** Starts watching `key` (a no-op if it is already watched). */
  add(key: string, state: S, delayMs: number): Promise<void>;
  /** Runs the watch of `key` now if it is waiting (something changed): `busy` if it is running now, `none` if no such watch. */
  promote(key: string): Promise<'promoted' | 'busy' | 'none'>;
  close(): Promise<void>;
}

const QUEUE = 'webhooks';
/**
 * BullMQ's event stream (bull:webhooks:events) keeps 10,000 events by default, a few per watch step, for QueueEvents
 * listeners; the gateway has none, so it keeps only what a person debugging with redis-cli might look at.
 */
export const QUEUE_EVENTS_KEPT = 100;
/** Failed watches are kept a day for inspection, and never more than this many (a bound that does not grow with traffic). */
const FAILED_KEPT = 1000;
// BullMQ job ids may not hold ':'; prediction ids are [A-Za-z0-9_-].
const jobId = (key: string) => `w-${key}`;

export class BullWatchQueue<S extends object> implements WatchQueue<S> {
  readonly #queue: Queue;
  readonly #worker: Worker;
  readonly #connections: (Redis | Cluster)[] = [];

  constructor(target: RedisTarget | string, keyPrefix: string, step: Step<S>, opts: { concurrency: number; onError: (err: unknown) => void; onRedisError: (err: Error) => void }) {
    // BullMQ needs its own connections: blocking commands, no ioredis keyPrefix (it has `prefix`), and no
    // per-command retry limit on the worker's. On a Cluster the prefix is a hash tag (BullMQ's scripts span a
    // queue's keys); elsewhere it keeps its old name, so an upgrade keeps the watches in flight.
    const connect = (blocking = false) => {
      const c = createBullConnection(target, opts.onRedisError, blocking);
      this.#connections.push(c);
      return c;
    };
    const prefix = bullPrefix(target, keyPrefix);
    this.#queue = new Queue(QUEUE, { connection: connect(), prefix, streams: { events: { maxLen: QUEUE_EVENTS_KEPT } } });
    this.#worker = new Worker(
      QUEUE,
      async (job, token) => {
        const { state, againInMs } = await step(job.data as S);
        if (againInMs === null) return;
        // The same job waits again with its new state: one job per prediction, so its steps never overlap.
        await job.updateData(state);
        await job.moveToDelayed(Date.now() + againInMs, token);
        throw new DelayedError();
      },
      { connection: connect(true), prefix, concurrency: opts.concurrency },
    );
    this.#queue.on('error', opts.onRedisError);
    this.#worker.on('error', opts.onRedisError);
    this.#worker.on('failed', (_job, err) => opts.onError(err));
  }

  async add(key: string, state: S, delayMs: number) {
    // A step that throws (the store or the upstream unreachable) is tried again with backoff.
    await this.#queue.add('watch', state, {
      jobId: jobId(key),
      delay: delayMs,
      attempts: 50,
      backoff: { type: 'exponential', delay: 1000 },
      // A finished watch is remembered for an hour (at most 10,000 of them): the lifecycle may ask to start one again
      // from a late change, and an add under a known id does nothing, so no event is sent twice.
      removeOnComplete: { age: 3600, count: 10_000 },
      removeOnFail: { age: 86400, count: FAILED_KEPT },
    });
  }

  async promote(key: string) {
    const job = await this.#queue.getJob(jobId(key));
    if (!job) return 'none' as const;
    if (!(await job.isDelayed())) return 'busy' as const;
    // It may have started meanwhile: then it was not waiting.
    return job.promote().then(() => 'promoted' as const, () => 'busy' as const);
  }

  async close() {
    await this.#worker.close();
    await this.#queue.close();
    await Promise.all(this.#connections.map((c) => c.quit().catch(() => c.disconnect())));
  }
}

/** The in-process equivalent: one timer per watched key, steps of one key never overlapping. */
export class MemoryWatchQueue<S> implements WatchQueue<S> {
  readonly #watches = new Map<string, { state: S; timer?: NodeJS.Timeout; running: boolean; again: boolean }>();
  /** Watches that ended, for an hour: starting one again is a no-op, as with BullMQ's completed jobs. */
  readonly #finished = new BoundedMap<true>({ maxEntries: 10_000, ttlMs: 3_600_000 });
  readonly #step: Step<S>;
  readonly #onError: (err: unknown) => void;
  #closed = false;

  constructor(step: Step<S>, opts: { onError: (err: unknown) => void }) {
    this.#step = step;
    this.#onError = opts.onError;
  }

  async add(key: string, state: S, delayMs: number) {
    if (this.#watches.has(key) || this.#finished.has(key) || this.#closed) return;
    this.#watches.set(key, { state, running: false, again: false });
    this.#schedule(key, delayMs);
  }

  async promote(key: string) {
    const w = this.#watches.get(key);
    if (!w) return 'none' as const;
    if (w.running) w.again = true;
    else this.#schedule(key, 0);
    return 'promoted' as const;
  }

  #schedule(key: string, ms: number) {
    const w = this.#watches.get(key);
    if (!w || this.#closed) return;
    clearTimeout(w.timer);
    w.timer = setTimeout(() => void this.#run(key), ms);
    w.timer.unref();
  }

  async #run(key: string) {
    const w = this.#watches.get(key);
    if (!w || w.running) return;
    w.running = true;
    w.again = false;
    // Steps back off on their own failures; a throw here is a bug, and the watch ends rather than spin.
    let next: number | null;
    try {
      const r = await this.#step(w.state);
      w.state = r.state;
      next = r.againInMs;
    } catch (err) {
      this.#onError(err);
      next = null;
    }
    w.running = false;
    if (next === null) {
      this.#watches.delete(key);
      this.#finished.set(key, true);
    }
    else this.#schedule(key, w.again ? 0 : next);
  }

  async close() {
    this.#closed = true;
    for (const w of this.#watches.values()) clearTimeout(w.timer);
  }
}
