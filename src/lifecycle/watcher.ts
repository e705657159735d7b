// The watcher: on every replica, it claims the open predictions that are due (leased in the store, so one replica
// looks at each at a time, and a replica that dies loses its leases within LEASE_MS) and looks at them through the
// same coalesced poller as client GETs. Looks back off with age (WATCH_MIN_MS after the create, then doubling up to
// WATCH_MAX_MS), and all replicas together make at most UPSTREAM_WATCH_READS_PER_MINUTE reads: when more are due than
// that allows, they wait in order of when they were due (oldest first), so every tenant's predictions stretch
// alike and none starves. It also cancels what runs too long (a tenant's maxRunSeconds, PREDICTION_MAX_OPEN_SECONDS).
import type { FastifyBaseLogger } from 'fastify';
import type { TenantRegistry } from '../access/tenants.js';
import type { Config } from '../config.js';
import { GatewayError } from '../errors.js';
import type { Metrics } from '../metrics.js';
import { upstreamDepth } from '../predictions/create.js';
import type { Poller } from '../predictions/poller.js';
import { PredictionBody, sameId } from '../predictions/prediction.js';
import type { OpenEntry, Store } from '../store/store.js';
import type { Upstreams } from '../upstream/upstreams.js';
import type { Lifecycle } from './lifecycle.js';

/** How often a replica asks for due predictions. */
const TICK_MS = 200;
/** Looks one replica runs at once. */
const MAX_INFLIGHT = 32;
/** A claimed prediction is due again after this long unless the look reschedules it (it died, or hangs). */
const LEASE_MS = 6000;
/** A look's upstream read gives up after this long (well inside the lease). */
const LOOK_TIMEOUT_MS = 4000;
/** Looks that found the upstream answering 404 before the prediction is settled as gone. */
const GONE_AFTER = 3;

/** The read budget per one-second window, spread so that any 60 windows in a row allow exactly `perMinute`. */
export function windowLimit(window: number, perMinute: number): number {
  return Math.floor(((window + 1) * perMinute) / 60) - Math.floor((window * perMinute) / 60);
}

/** When to look next at a prediction of this age: about its age from now (so looks double), within the bounds. */
export function nextDelay(ageMs: number, config: Pick<Config, 'WATCH_MIN_MS' | 'WATCH_MAX_MS'>, hinted = false): number {
  if (hinted) return config.WATCH_MAX_MS;
  return Math.min(config.WATCH_MAX_MS, Math.max(config.WATCH_MIN_MS, ageMs));
}

export interface WatcherDeps {
  config: Config;
  store: Store;
  /** Reads and cancels go to the account each prediction is pinned to (OpenMeta.upstream). */
  upstream: Upstreams;
  poller: Poller;
  tenants: TenantRegistry;
  lifecycle: Lifecycle;
  metrics: Metrics;
  log: FastifyBaseLogger;
}

export class Watcher {
  readonly #d: WatcherDeps;
  #timer: NodeJS.Timeout | undefined;
  #inflight = 0;
  #ticking = false;
  readonly #looks = new Set<Promise<void>>();
  #closed = false;

  constructor(deps: WatcherDeps) {
    this.#d = deps;
  }

  start(): void {
    if (this.#timer || this.#closed) return;
    this.#timer = setInterval(() => void this.tick(), TICK_MS);
    this.#timer.unref();
  }

  /** Stops claiming, and waits for the looks in flight (a lease left behind would only delay its prediction). */
  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#timer);
    await Promise.allSettled([...this.#looks]);
  }

  /** One claim of due predictions, and their looks started. */
  async tick(): Promise<void> {
    if (this.#ticking || this.#closed || this.#inflight >= MAX_INFLIGHT) return;
    this.#ticking = true;
    try {
      const now = Date.now();
      const window = Math.floor(now / 1000);
      const entries = await this.#d.store.openClaim({
        now,
        max: MAX_INFLIGHT - this.#inflight,
        leaseMs: LEASE_MS,
        window,
        windowLimit: windowLimit(window, this.#d.config.UPSTREAM_WATCH_READS_PER_MINUTE),
      });
      for (const e of entries) {
        this.#inflight++;
        const look = this.#look(e).finally(() => {
          this.#inflight--;
          this.#looks.delete(look);
        });
        this.#looks.add(look);
      }
    } catch (err) {
      // The store is away: nothing is claimed, and every lease taken before stays with its due time.
      this.#d.log.debug({ err }, 'watcher: could not claim due predictions');
    } finally {
      this.#ticking = false;
    }
  }

  async #look(e: OpenEntry): Promise<void> {
    const { config, lifecycle, store, log } = this.#d;
    const now = Date.now();
    const age = now - e.createdAt;
    try {
      if (!e.tenant) {
        // Metadata is written with the open entry itself, so this is damage: look again much later rather than spin.
        log.error({ prediction: e.id }, 'watcher: an open prediction has no owner in its metadata');
        await store.openSchedule(e.id, now + config.WATCH_MAX_MS);
        return;
      }
      if (age > config.PREDICTION_MAX_OPEN_SECONDS * 1000) return await this.#giveUp(e, 'max-open');
      let body: PredictionBody;
      try {
        body = await this.#read(e);
        this.#d.metrics.watchReads.inc({ outcome: 'ok' });
      } catch (err) {
        const gone = err instanceof GatewayError && err.upstreamStatus === 404;
        this.#d.metrics.watchReads.inc({ outcome: gone ? 'not-found' : 'error' });
        if (gone && (await store.openStrike(e.id)) >= GONE_AFTER) return await this.#giveUp(e, 'gone');
        log.info({ prediction: e.id, tenant: e.tenant, reason: (err as Error).message }, 'watcher: could not read a prediction; looking again later');
        await store.openSchedule(e.id, Date.now() + nextDelay(age, config));
        return;
      }
      if (body.terminal) {
        await lifecycle.ended(e.tenant, body, e.webhook ?? null);
        return;
      }
      await lifecycle.observed(e.tenant, body, { webhook: e.webhook ?? null });
      const maxRun = this.#d.tenants.get(e.tenant)?.maxRunSeconds;
      if (maxRun !== undefined && age > maxRun * 1000) {
        log.info({ prediction: e.id, tenant: e.tenant, maxRunSeconds: maxRun }, 'watcher: canceling a prediction running past its tenant\'s maxRunSeconds');
        const after = await this.#cancel(e);
        if (after?.terminal) return void (await lifecycle.ended(e.tenant, after, e.webhook ?? null));
        // Canceling takes the upstream a moment: look again soon.
        await store.openSchedule(e.id, Date.now() + config.WATCH_MIN_MS);
        return;
      }
      await store.openSchedule(e.id, Date.now() + nextDelay(age, config, e.hinted));
    } catch (err) {
      // The store failed mid-look: the lease runs out and the prediction is due again then.
      log.warn({ err, prediction: e.id }, 'watcher: a look failed; the prediction is due again when its lease ends');
    }
  }

  /**
   * The prediction as the upstream has it now; shares an in-flight client read, but not the micro-cache. Its own call
   * (retries included) ends within LOOK_TIMEOUT_MS, well inside the lease, so no other replica looks meanwhile.
   */
  async #read(e: OpenEntry): Promise<PredictionBody> {
    const { body } = await this.#d.poller.get(e.id, { requestId: `watch-${e.id}`, tenant: e.tenant, observe: () => {}, upstream: e.upstream }, { skipMicroCache: true, timeoutMs: LOOK_TIMEOUT_MS });
    return body;
  }

  /** Cancels upstream; the answer if it is the prediction, else undefined (a failure is only logged). */
  async #cancel(e: OpenEntry): Promise<PredictionBody | undefined> {
    try {
      const res = await this.#d.upstream.client(e.upstream).request({ method: 'POST', path: `/predictions/${encodeURIComponent(e.id)}/cancel`, requestId: `watch-${e.id}`, tenant: e.tenant, retry: true });
      return await this.#d.poller.inputs.restore(sameId(PredictionBody.fromUpstream(res.body, upstreamDepth(this.#d.config)), e.id));
    } catch (err) {
      this.#d.log.warn({ prediction: e.id, tenant: e.tenant, reason: (err as Error).message }, 'watcher: could not cancel a prediction upstream');
      return undefined;
    }
  }

  /** Open too long, or gone upstream: canceled (if it may still run), then settled as expired unless the cancel ended it. */
  async #giveUp(e: OpenEntry, reason: 'max-open' | 'gone'): Promise<void> {
    if (reason === 'max-open') {
      const after = await this.#cancel(e);
      if (after?.terminal) return void (await this.#d.lifecycle.ended(e.tenant, after, e.webhook ?? null));
    }
    await this.#d.lifecycle.expire(e, reason);
  }
}
