// A prediction's life after its create: the one place that decides "it ended" and what follows (the reservation
// settled with the real figures, the running slot freed, usage counted once, the terminal body cached and written
// over the list's record, webhooks told, the change published to every replica), and what a running prediction
// last showed. Create, GET, cancel, the upstream's webhook calls and the watcher (src/lifecycle/watcher.ts) report
// here what they saw; none of them settles on its own.
import { hash } from 'node:crypto';
import type { FastifyBaseLogger } from 'fastify';
import type { Budgets } from '../budget/budgets.js';
import type { Config } from '../config.js';
import { quantile } from '../lib/quantile.js';
import type { Metrics } from '../metrics.js';
import type { Facts } from '../predictions/facts.js';
import type { Poller } from '../predictions/poller.js';
import type { PredictionBody } from '../predictions/prediction.js';
import type { PubSub } from '../store/pubsub.js';
import type { OpenEntry, Store } from '../store/store.js';
import { today } from '../usage/day.js';

/** What changed about a prediction, as this process saw it. */
export interface Change {
  id: string;
  tenant: string;
  /** The prediction now; undefined when the gateway gave up on it (expired, or gone upstream). */
  body?: PredictionBody;
  ended: boolean;
  /** The tenant's webhook for it (as src/webhooks/ stored it); null: it has none (the watcher knows); undefined: unknown. */
  webhook?: string | null;
}

export type ChangeListener = (change: Change) => void;

/** The channel a prediction's changes are published on (to every replica). */
export const predictionChannel = (id: string) => `prediction:${id}`;

/** The predict time an upstream prediction reports, for usage. */
export function predictTimeOf(body: PredictionBody): number {
  const m = body.prediction.metrics as { predict_time?: unknown } | undefined;
  return typeof m?.predict_time === 'number' && Number.isFinite(m.predict_time) ? m.predict_time : 0;
}

export interface LifecycleDeps {
  config: Config;
  store: Store;
  budgets: Budgets;
  facts: Facts;
  poller: Poller;
  metrics: Metrics;
  pubsub: PubSub;
  log: FastifyBaseLogger;
}

/** Settlement lags this process keeps for the dashboard's percentiles (the histogram on /metrics has them all). */
const LAGS_KEPT = 1000;

export class Lifecycle {
  readonly #d: LifecycleDeps;
  readonly #listeners: ChangeListener[] = [];
  readonly #lags: number[] = [];
  #lagAt = 0;

  constructor(deps: LifecycleDeps) {
    this.#d = deps;
  }

  /** Called with every change this process sees (webhooks); other replicas' changes come by pub/sub. */
  onChange(listener: ChangeListener): void {
    this.#listeners.push(listener);
  }

  /**
   * A prediction was seen terminal. Everything that follows is written in one store step and counted once across
   * replicas (the store's marker); the first to see it runs what must happen once. True for that first one.
   */
  async ended(tenant: string, body: PredictionBody, webhook?: string | null): Promise<boolean> {
    const { store, budgets, facts, poller } = this.#d;
    const status = body.prediction.status as string;
    const first = await store.recordTerminal({
      id: body.id,
      tenant,
      json: body.raw,
      status,
      predictTime: predictTimeOf(body),
      cost: budgets.actual(body.prediction).cost,
      day: today(),
    });
    facts.setTerminal(body.id, body);
    poller.forget(body.id);
    if (!first) return false;
    this.#settledOnce(tenant, body, webhook);
    return true;
  }

  /** A create that came back terminal: its end was written with the create itself (one store step); the rest follows. */
  createdTerminal(tenant: string, body: PredictionBody): void {
    this.#settledOnce(tenant, body);
  }

  #settledOnce(tenant: string, body: PredictionBody, webhook?: string | null): void {
    this.#d.metrics.settled.inc({ outcome: String(body.prediction.status) });
    const completedAt = Date.parse(String(body.prediction.completed_at ?? ''));
    if (Number.isFinite(completedAt)) {
      const lag = Math.max(0, Date.now() - completedAt) / 1000;
      this.#d.metrics.settlementLag.observe(lag);
      this.#lags[this.#lagAt++ % LAGS_KEPT] = lag;
    }
    this.#emit({ id: body.id, tenant, body, ended: true, webhook });
  }

  /** The settlement lag of this process's last settlements (seconds): median, p99, and how many. */
  lagSummary(): { p50: number | null; p99: number | null; samples: number } {
    const sorted = [...this.#lags].sort((a, b) => a - b);
    return { p50: quantile(sorted, 0.5), p99: quantile(sorted, 0.99), samples: sorted.length };
  }

  /**
   * A running prediction as some read saw it: written over its record when it is news (lists show it, webhooks
   * send it). `look`: a client's read, which postpones the watcher's next look (it would learn nothing new).
   */
  async observed(tenant: string, body: PredictionBody, opts: { look?: boolean; webhook?: string | null } = {}): Promise<boolean> {
    const { store, config } = this.#d;
    const p = body.prediction;
    const logs = typeof p.logs === 'string' ? p.logs.length : 0;
    const output = p.output === undefined || p.output === null ? '' : hash('sha1', JSON.stringify(p.output), 'base64url');
    const [version] = await Promise.all([
      store.observe({ id: body.id, json: body.raw, rank: p.status === 'processing' ? 1 : 0, logs, digest: `${String(p.status)}|${logs}|${output}` }),
      opts.look ? store.openSchedule(body.id, Date.now() + config.WATCH_MIN_MS, 'later') : undefined,
    ]);
    if (version > 0) this.#emit({ id: body.id, tenant, body, ended: false, webhook: opts.webhook });
    return version > 0;
  }

  /** The reports of the request path are not worth failing (or delaying) a client's answer for: logged and let go. */
  observedInBackground(tenant: string, body: PredictionBody): void {
    this.observed(tenant, body, { look: true }).catch((err: unknown) => this.#d.log.debug({ err, prediction: body.id }, 'could not record what a read saw; the watcher will look'));
  }

  /**
   * The gateway gives up on an open prediction (open past PREDICTION_MAX_OPEN_SECONDS, or the upstream no longer
   * knows it): it spends its reservation's estimate, counts as `expired`, and leaves the open set.
   */
  async expire(e: OpenEntry, reason: 'max-open' | 'gone'): Promise<void> {
    const first = await this.#d.store.recordTerminal({ id: e.id, tenant: e.tenant, status: 'expired', predictTime: 0, spendReserved: true, day: today() });
    this.#d.poller.forget(e.id);
    if (!first) return;
    this.#d.metrics.expired.inc({ reason });
    this.#d.log.warn({ prediction: e.id, tenant: e.tenant, reason }, reason === 'gone' ? 'the upstream no longer knows an open prediction; settled as expired' : 'a prediction stayed open past PREDICTION_MAX_OPEN_SECONDS; canceled and settled as expired');
    this.#emit({ id: e.id, tenant: e.tenant, ended: true, webhook: e.webhook ?? null });
  }

  /** Something may have changed (the upstream called back): the watcher looks at it now rather than on schedule. */
  async due(id: string): Promise<void> {
    await this.#d.store.openSchedule(id, Date.now());
  }

  #emit(change: Change): void {
    for (const l of this.#listeners) {
      try {
        l(change);
      } catch (err) {
        this.#d.log.error({ err, prediction: change.id }, 'a prediction change listener failed');
      }
    }
    const status = change.body ? String(change.body.prediction.status) : 'expired';
    this.#d.pubsub.publish(predictionChannel(change.id), status).catch(() => {
      // Subscribers re-read the store; a lost message only delays them until their next look.
    });
  }
}
