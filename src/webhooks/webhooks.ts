// Webhooks through the gateway. A create's `webhook` stays here: the upstream gets none (WEBHOOK_MODE=poll) or the
// gateway's own receiver (upstream). The prediction is followed by the lifecycle (src/lifecycle/), which writes what
// it sees into the prediction's record and tells this module when something changed; each webhook's job reads the
// record (never the upstream) and turns what changed into the events the tenant asked for. Events go out in order,
// signed with the tenant's secret, retried for WEBHOOK_RETRY_FOR_SECONDS.
import { createHash, randomBytes } from 'node:crypto';
import type { FastifyBaseLogger } from 'fastify';
import type { TenantRegistry } from '../access/tenants.js';
import type { Config } from '../config.js';
import type { Change } from '../lifecycle/lifecycle.js';
import type { Metrics } from '../metrics.js';
import type { PredictionDeps } from '../predictions/deps.js';
import { PredictionBody } from '../predictions/prediction.js';
import type { KvStore } from '../store/kv-store.js';
import { redisTarget } from '../store/redis-client.js';
import { Deliverer, type Outcome, type UrlPolicy, refuseUrl } from './deliver.js';
import { BullWatchQueue, MemoryWatchQueue, type WatchQueue } from './queue.js';

export const EVENTS = ['start', 'output', 'logs', 'completed'] as const;
export type EventName = (typeof EVENTS)[number];

interface Message {
  event: EventName;
  /** Stable across retries of this message: receivers deduplicate on it. */
  id: string;
  /** The prediction as the gateway answers it when the event happened. */
  body: string;
  attempts: number;
  firstAt?: number;
  nextAt?: number;
}

export interface WatchState {
  id: string;
  tenant: string;
  url: string;
  events: EventName[];
  /** The gateway base the tenant's URLs are rendered under. */
  base: string;
  createdAt: number;
  pollMs: number;
  seen: { start?: boolean; output?: string; logs?: number; completed?: boolean; rank?: number };
  outbox: Message[];
  /** Steps that failed in a row (the store or the network), for the step's own backoff. */
  failures?: number;
}

export interface DeliveryFailure {
  at: string;
  prediction: string;
  event: EventName;
  webhook_id: string;
  attempt: number;
  status: number | null;
  reason: string;
  will_retry: boolean;
}

const FAILURES_KEPT = 50;
/** Watch steps one replica runs at once, and how many of them one tenant may hold (its slow receivers wait). */
const WORKER_SLOTS = 32;
const TENANT_SLOTS = 8;
/** When a tenant is at its share of the slots, its next step is looked at again after this long. */
const TENANT_WAIT_MS = 250;
const HINT_MS = 60_000;
const hintKey = (id: string) => `whhint:${id}`;
const FAILURES_TTL_MS = 7 * 86_400_000;
const MAX_BACKOFF_MS = 3_600_000;

const newSecret = () => `whsec_${randomBytes(32).toString('base64')}`;
const secretKey = (tenant: string) => `whsec:${tenant}`;
const shownKey = (tenant: string) => `whsec-shown:${tenant}`;
const digest = (v: unknown) => createHash('sha256').update(JSON.stringify(v)).digest('base64url');

export class Webhooks {
  readonly #deps: PredictionDeps;
  readonly #config: Config;
  readonly #kv: KvStore;
  readonly #tenants: TenantRegistry;
  readonly #metrics: Metrics;
  readonly #log: FastifyBaseLogger;
  readonly #deliverer: Deliverer;
  readonly #queue: WatchQueue<WatchState>;
  readonly policy: UrlPolicy;
  /** Steps running in this process, per tenant. */
  readonly #busy = new Map<string, number>();

  constructor(deps: PredictionDeps, opts: { kv: KvStore; tenants: TenantRegistry; log: FastifyBaseLogger }) {
    this.#deps = deps;
    this.#config = deps.config;
    this.#kv = opts.kv;
    this.#tenants = opts.tenants;
    this.#metrics = deps.metrics;
    this.#log = opts.log;
    this.policy = { allowHttpHosts: this.#config.WEBHOOK_ALLOW_HTTP_HOSTS, allowPrivateHosts: this.#config.WEBHOOK_ALLOW_PRIVATE_HOSTS };
    this.#deliverer = new Deliverer(this.policy, this.#config.WEBHOOK_TIMEOUT_MS);
    const step = (s: WatchState) => this.#step(s);
    // Steps handle their own failures (#step never throws); this is the queue itself failing, e.g. saving a job.
    const onError = (err: unknown) => this.#log.warn({ err }, 'webhook queue job failed; the queue retries it');
    // The store's own client already reports Redis outages; these connections only say so at debug level.
    const onRedisError = (err: Error) => this.#log.debug({ reason: err.message }, 'webhook queue: redis unavailable');
    const target = redisTarget(this.#config);
    this.#queue = target
      ? new BullWatchQueue(target, this.#config.REDIS_KEY_PREFIX, step, { concurrency: WORKER_SLOTS, onError, onRedisError })
      : new MemoryWatchQueue(step, { onError });
  }

  /** Why a tenant's webhook URL is refused at create (a 422), or undefined. */
  refuse(url: string): string | undefined {
    return refuseUrl(url, this.policy);
  }

  /** What the open set keeps of a create's webhook, so the lifecycle can start its job again if the create's failed. */
  static spec(w: { url: string; events?: EventName[]; base: string }): string {
    return JSON.stringify({ url: w.url, events: w.events, base: w.base });
  }

  /** Starts watching a prediction a tenant created with `webhook`. The first look is immediate (the start event). */
  async watch(w: { id: string; tenant: string; url: string; events?: EventName[]; base: string; created?: PredictionBody }): Promise<void> {
    const events = w.events?.length ? [...new Set(w.events)] : [...EVENTS];
    // With the upstream calling back, polling is only the safety net for a lost call: it starts slow.
    const pollMs = this.#config.WEBHOOK_MODE === 'upstream' ? this.#config.WEBHOOK_POLL_MAX_MS : this.#config.WEBHOOK_POLL_MIN_MS;
    const state: WatchState = { id: w.id, tenant: w.tenant, url: w.url, events, base: w.base, createdAt: Date.now(), pollMs, seen: {}, outbox: [] };
    // The create's own answer is the start event (as Replicate sends it, however late the first look comes).
    if (w.created) this.#observe(state, w.created);
    await this.#queue.add(w.id, state, 0);
  }

  /** Something may have changed (the upstream called the receiver): the lifecycle looks now, and tells us. */
  async hint(id: string): Promise<void> {
    await this.#deps.lifecycle.due(id);
  }

  /**
   * The lifecycle saw a prediction change. Its webhook job (if it has one) runs now rather than at its next poll
   * of the record; a job the create could not start (the watcher knows the webhook from the open set) starts now.
   */
  async changed(c: Change): Promise<void> {
    // The watcher knows from the open set that this prediction has no webhook: no job to look for.
    if (c.webhook === null) return;
    const job = await this.#queue.promote(c.id);
    // A change that lands while the job is running (on any replica) is kept for its next scheduling, which then
    // looks again at once instead of after its poll interval.
    if (job === 'busy') await this.#kv.set(hintKey(c.id), '1', HINT_MS);
    // No job: the create could not start it, and the watcher still knows the webhook. (A finished job is kept, so
    // adding it again starts nothing.)
    if (job === 'none' && c.webhook) {
      try {
        const w = JSON.parse(c.webhook) as { url: string; events?: EventName[]; base: string };
        await this.watch({ id: c.id, tenant: c.tenant, url: w.url, events: w.events, base: w.base });
      } catch (err) {
        this.#log.warn({ err, prediction: c.id }, 'could not start the webhook watch of a prediction; retrying at its next change');
      }
    }
  }

  /** The tenant's signing secret: from the tenants file, else generated once and shared by every replica. */
  async secretFor(tenantId: string): Promise<string> {
    const configured = this.#tenants.get(tenantId)?.webhookSecret;
    if (configured) return configured;
    // One read per delivery; only the very first delivery of a tenant also writes (and the first writer wins).
    const stored = await this.#kv.get(secretKey(tenantId));
    if (stored) return stored;
    await this.#kv.setIfAbsent(secretKey(tenantId), newSecret());
    return (await this.#kv.get(secretKey(tenantId)))!;
  }

  /** The generated secret, the first time it is asked for; undefined once it has been shown (on any replica). */
  async revealSecret(tenantId: string): Promise<string | undefined> {
    const secret = await this.secretFor(tenantId);
    return (await this.#kv.setIfAbsent(shownKey(tenantId), new Date().toISOString())) ? secret : undefined;
  }

  /** A new generated secret, shown by this call; deliveries sign with it from now on. */
  async rotateSecret(tenantId: string): Promise<string> {
    const secret = newSecret();
    await this.#kv.set(secretKey(tenantId), secret);
    await this.#kv.set(shownKey(tenantId), new Date().toISOString());
    return secret;
  }

  async failures(tenantId: string): Promise<DeliveryFailure[]> {
    return (await this.#kv.list(`whfail:${tenantId}`)).map((j) => JSON.parse(j) as DeliveryFailure);
  }

  async close(): Promise<void> {
    await this.#queue.close();
    await this.#deliverer.close();
  }

  /**
   * One look and what it makes due. Never throws: a failure (the store unreachable) is retried with its own backoff,
   * reset by the next step that works, so a long watch does not run out of the queue's retry attempts.
   */
  async #step(s: WatchState): Promise<{ state: WatchState; againInMs: number | null }> {
    // One tenant's hanging receivers hold at most TENANT_SLOTS of this replica's slots; its other watches wait
    // their turn, and every other tenant's go on.
    const busy = this.#busy.get(s.tenant) ?? 0;
    if (busy >= TENANT_SLOTS) return { state: s, againInMs: TENANT_WAIT_MS };
    this.#busy.set(s.tenant, busy + 1);
    try {
      return await this.#guardedStep(s);
    } finally {
      const left = (this.#busy.get(s.tenant) ?? 1) - 1;
      if (left > 0) this.#busy.set(s.tenant, left);
      else this.#busy.delete(s.tenant);
    }
  }

  async #guardedStep(s: WatchState): Promise<{ state: WatchState; againInMs: number | null }> {
    try {
      const r = await this.#stepOnce(s);
      s.failures = 0;
      // A change that came while this step ran means: look again now.
      if (r.againInMs !== null && r.againInMs > 0 && (await this.#kv.get(hintKey(s.id)))) {
        await this.#kv.set(hintKey(s.id), '', 1);
        return { state: r.state, againInMs: 0 };
      }
      return r;
    } catch (err) {
      s.failures = (s.failures ?? 0) + 1;
      this.#log.warn({ prediction: s.id, tenant: s.tenant, err, failures: s.failures }, 'webhook watch step failed; retrying with backoff');
      return { state: s, againInMs: Math.min(MAX_BACKOFF_MS, 1000 * 2 ** Math.min(s.failures, 12)) };
    }
  }

  async #stepOnce(s: WatchState): Promise<{ state: WatchState; againInMs: number | null }> {
    const now = Date.now();
    if (!s.seen.completed) {
      if (now - s.createdAt > this.#config.PREDICTION_TTL_SECONDS * 1000) {
        this.#log.warn({ prediction: s.id, tenant: s.tenant }, 'stopped watching a prediction that never ended within PREDICTION_TTL_SECONDS');
        return { state: s, againInMs: null };
      }
      const body = await this.#look(s);
      if (body === null) return { state: s, againInMs: null };
      if (body) s.pollMs = this.#observe(s, body) ? this.#config.WEBHOOK_POLL_MIN_MS : Math.min(this.#config.WEBHOOK_POLL_MAX_MS, s.pollMs * 2);
      else s.pollMs = Math.min(this.#config.WEBHOOK_POLL_MAX_MS, s.pollMs * 2);
    }
    await this.#flush(s);
    const head = s.outbox[0];
    if (s.seen.completed && !head) return { state: s, againInMs: null };
    const untilRetry = head?.nextAt !== undefined ? Math.max(0, head.nextAt - Date.now()) : 0;
    return { state: s, againInMs: s.seen.completed ? untilRetry : head?.nextAt !== undefined ? Math.min(untilRetry, s.pollMs) : s.pollMs };
  }

  /**
   * The prediction as the gateway last saw it: its record, which the lifecycle keeps current (and writes the end
   * over). null: the gateway gave up on it (expired, or gone upstream) or its record is gone; the watch ends.
   */
  async #look(s: WatchState): Promise<PredictionBody | null | undefined> {
    const { record, open } = await this.#deps.store.current(s.id);
    const body = record ? new PredictionBody(record) : undefined;
    if (body && (open || body.terminal)) return body;
    const reason = body ? 'the gateway stopped following this prediction (it expired, or the upstream no longer knows it)' : 'the prediction\'s record is gone';
    await this.#fail(s, { event: 'completed', id: `msg_${s.id}_gone`, body: '', attempts: 1 }, { ok: false, retry: false, reason }, false);
    return null;
  }

  /** Queues the events this answer shows for the first time; true if anything changed. */
  #observe(s: WatchState, body: PredictionBody): boolean {
    const p = body.prediction;
    const terminal = body.terminal;
    // Answers can arrive out of order (a coalesced read started before the last one): never step back.
    const rank = terminal ? 2 : p.status === 'processing' ? 1 : 0;
    if (rank < (s.seen.rank ?? 0)) return false;
    s.seen.rank = rank;
    let changed = false;
    // Ids name what happened, not when it was noticed: were a step ever run twice (a replica dying mid-step), the
    // receiver would see the same webhook-id again and could drop it.
    const emit = (event: EventName, what = '') => {
      changed = true;
      if (!s.events.includes(event)) return;
      // While a delivery waits for its retry, a newer output or logs event replaces an older one still queued
      // (the newer prediction says all the older did): the queue stays a handful of bodies, however long the wait.
      if (event === 'output' || event === 'logs') s.outbox = s.outbox.filter((m, i) => m.event !== event || (i === 0 && m.attempts > 0));
      s.outbox.push({ event, id: `msg_${s.id}_${event}${what}`, body: body.render(s.base), attempts: 0 });
    };
    if (!s.seen.start) {
      s.seen.start = true;
      emit('start');
    }
    if (!terminal) {
      const output = p.output == null ? undefined : digest(p.output);
      if (output !== s.seen.output) {
        s.seen.output = output;
        if (output !== undefined) emit('output', `_${output.slice(0, 16)}`);
      }
      // Logs only grow.
      const logs = typeof p.logs === 'string' ? p.logs.length : 0;
      if (logs > (s.seen.logs ?? 0)) {
        s.seen.logs = logs;
        emit('logs', `_${logs}`);
      }
    } else {
      s.seen.completed = true;
      emit('completed');
    }
    return changed;
  }

  /** Sends what is due, in order; stops at the first message that must wait for its retry. */
  async #flush(s: WatchState): Promise<void> {
    while (s.outbox.length > 0) {
      const m = s.outbox[0]!;
      if (m.nextAt !== undefined && m.nextAt > Date.now()) return;
      // Checked again at each attempt: the watch may outlive the settings it was created under (a restart).
      const refused = refuseUrl(s.url, this.policy);
      const out: Outcome = refused
        ? { ok: false, retry: false, reason: `the webhook URL ${refused}` }
        : await this.#deliverer.send(s.url, { id: m.id, secret: await this.secretFor(s.tenant), body: m.body });
      m.attempts++;
      m.firstAt ??= Date.now();
      if (out.ok) {
        this.#metrics.webhookDeliveries.inc({ tenant: s.tenant, outcome: 'delivered' });
        s.outbox.shift();
        continue;
      }
      const retry = out.retry && Date.now() - m.firstAt < this.#config.WEBHOOK_RETRY_FOR_SECONDS * 1000;
      await this.#fail(s, m, out, retry);
      if (!retry) {
        s.outbox.shift();
        continue;
      }
      m.nextAt = Date.now() + Math.min(MAX_BACKOFF_MS, this.#config.WEBHOOK_RETRY_MIN_MS * 2 ** (m.attempts - 1));
      return;
    }
  }

  async #fail(s: WatchState, m: Message, out: Extract<Outcome, { ok: false }>, willRetry: boolean): Promise<void> {
    this.#metrics.webhookDeliveries.inc({ tenant: s.tenant, outcome: willRetry ? 'retrying' : 'failed' });
    const failure: DeliveryFailure = {
      at: new Date().toISOString(),
      prediction: s.id,
      event: m.event,
      webhook_id: m.id,
      attempt: m.attempts,
      status: out.status ?? null,
      reason: out.reason,
      will_retry: willRetry,
    };
    this.#log.info({ tenant: s.tenant, ...failure }, willRetry ? 'webhook delivery failed; will retry' : 'webhook delivery failed; given up');
    await this.#kv.pushCapped(`whfail:${s.tenant}`, JSON.stringify(failure), FAILURES_KEPT, FAILURES_TTL_MS);
  }
}
