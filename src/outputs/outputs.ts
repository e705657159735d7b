// Keeping a succeeded prediction's outputs past the upstream's one-hour deletion: the copy (once across replicas, a
// few tries within the hour), the stored body rewritten to gateway links, and the end of retention (objects deleted,
// the prediction marked data_removed). The bytes go to the output store (src/outputs/objects.ts); what is known about
// them to the shared state (src/store/outputs-store.ts).
import { pipeline } from 'node:stream';
import type { FastifyBaseLogger } from 'fastify';
import type { Tenant, TenantRegistry } from '../access/tenants.js';
import type { Config } from '../config.js';
import type { Change } from '../lifecycle/lifecycle.js';
import type { Metrics } from '../metrics.js';
import type { Facts } from '../predictions/facts.js';
import { PredictionBody, type Prediction } from '../predictions/prediction.js';
import type { KeptObject, OutputManifest, OutputsStore } from '../store/outputs-store.js';
import type { PubSub } from '../store/pubsub.js';
import type { Store } from '../store/store.js';
import { outputPath } from './links.js';
import { type OutputObjects, objectKey } from './objects.js';
import { Capped, CopyFailure, type CopyOutcome, type Sources } from './source.js';
import { mapRefs, outputRefs } from './walk.js';

/** Every replica hears of a rewritten body here (its id), and drops what it remembered of the old one. */
export const OUTPUTS_CHANNEL = 'outputs:rewritten';

/**
 * Pauses before the retries of a copy that failed for a reason that may pass (a 5xx, a timeout, the store): all
 * within the hour the upstream keeps its files. A retry runs in the process that made the first try.
 */
const RETRY_DELAYS_MS = [30_000, 3 * 60_000, 12 * 60_000];
/** A claimed attempt no one finished (its process died) can be claimed again after this. */
const CLAIM_MS = 15 * 60_000;
/** How many predictions one sweep takes out of retention at most. */
const SWEEP_BATCH = 50;
const DAY_MS = 86_400_000;
/** Copies one process runs at once (each holds at most one 5 MiB part for S3). */
const COPIES_AT_ONCE = 8;

export interface OutputsDeps {
  config: Config;
  store: Store;
  state: OutputsStore;
  objects: OutputObjects;
  sources: Sources;
  tenants: TenantRegistry;
  metrics: Metrics;
  pubsub: PubSub;
  facts: Facts;
  log: FastifyBaseLogger;
}

export class Outputs {
  readonly #d: OutputsDeps;
  readonly #timers = new Set<NodeJS.Timeout>();
  readonly #running = new Set<Promise<void>>();
  /** Copies waiting for a slot (ids only: a few bytes each). */
  readonly #queue: { id: string; tenant: string; attempt: number }[] = [];
  /** First attempts queued or under way in this process, by prediction: an answer about one may wait for it. */
  readonly #pending = new Map<string, { done: Promise<void>; resolve: () => void }>();
  #closed = false;
  /** Aborts the downloads under way when the app closes: a long video must not hold up a shutdown. */
  readonly #abort = new AbortController();

  constructor(deps: OutputsDeps) {
    this.#d = deps;
  }

  get objects(): OutputObjects {
    return this.#d.objects;
  }

  /** How long a tenant's outputs are kept (ms). */
  retentionMs(tenant: Tenant): number {
    return (tenant.outputRetentionDays ?? this.#d.config.OUTPUTS_RETENTION_DAYS) * DAY_MS;
  }

  /** The lifecycle's news: a prediction that succeeded has its outputs copied, in the background. */
  changed(change: Change): void {
    const p = change.body?.prediction;
    // Most predictions of a text model have nothing to keep: no store trip for them.
    if (!change.ended || p?.status !== 'succeeded' || outputRefs(p.output).length === 0) return;
    if (this.#d.tenants.get(change.tenant)?.keepOutputs === false) return;
    this.#start(change.id, change.tenant, 0);
  }

  #start(id: string, tenant: string, attempt: number): void {
    if (this.#closed) return;
    if (attempt === 0 && !this.#pending.has(id)) {
      let resolve!: () => void;
      const done = new Promise<void>((r) => (resolve = r));
      this.#pending.set(id, { done, resolve });
    }
    this.#queue.push({ id, tenant, attempt });
    this.#pump();
  }

  /** Whether a first copy of this prediction's outputs is queued or under way here. */
  copying(id: string): boolean {
    return this.#pending.size > 0 && this.#pending.has(id);
  }

  /**
   * Waits (at most `ms`) for the first copy of a prediction's outputs under way here, then gives the body as stored:
   * the answer to the request that saw the end can carry the kept links rather than the upstream's, which die
   * within the hour. Undefined when nothing was kept in time.
   */
  async whenKept(id: string, ms: number): Promise<string | undefined> {
    const pending = this.#pending.get(id);
    if (!pending || ms <= 0) return undefined;
    let timer: NodeJS.Timeout | undefined;
    const late = await Promise.race([pending.done.then(() => false), new Promise<boolean>((r) => (timer = setTimeout(r, ms, true)))]);
    clearTimeout(timer);
    if (late) return undefined;
    const json = (await this.#d.store.lookup(id)).terminal;
    return json?.includes(`"${outputPath(id, 0).slice(0, -1)}`) ? json : undefined;
  }

  /** Runs queued copies, COPIES_AT_ONCE at a time: a burst of ends must not open hundreds of downloads and uploads. */
  #pump(): void {
    while (this.#running.size < COPIES_AT_ONCE && this.#queue.length > 0 && !this.#closed) {
      const { id, tenant, attempt } = this.#queue.shift()!;
      const run: Promise<void> = this.copy(id, tenant, attempt)
        .catch((err: unknown) => this.#d.log.warn({ err, prediction: id }, 'outputs: the copy stopped on an error; the upstream URLs stay'))
        .finally(() => {
          this.#running.delete(run);
          if (attempt === 0) {
            this.#pending.get(id)?.resolve();
            this.#pending.delete(id);
          }
          this.#pump();
        });
      this.#running.add(run);
    }
  }

  /**
   * One attempt at keeping the outputs not kept yet. Claimed in the store first, so two replicas never copy the
   * same attempt; a retry (a later attempt) copies only what the earlier ones could not.
   */
  async copy(id: string, tenantId: string, attempt: number): Promise<void> {
    const { state, metrics, log } = this.#d;
    const tenant = this.#d.tenants.get(tenantId);
    if (!tenant || !tenant.keepOutputs) return;
    if (!(await state.claim(id, attempt, CLAIM_MS))) return;
    const body = await this.#terminal(id);
    if (!body || body.status !== 'succeeded' || body.data_removed === true) return;
    const refs = outputRefs(body.output);
    if (refs.length === 0) return;
    const now = Date.now();
    const manifest: OutputManifest = (await state.manifest(id)) ?? { id, tenant: tenant.id, keptAt: now, expiresAt: now + this.retentionMs(tenant), objects: [] };
    const kept = new Set(manifest.objects.map((o) => o.n));
    let retry = false;
    let added = 0;
    for (const [n, ref] of refs.entries()) {
      if (kept.has(n) || ref.startsWith('/')) continue;
      let outcome: CopyOutcome;
      try {
        const object = await this.#copyOne(tenant, id, n, ref);
        manifest.objects.push(object);
        added++;
        outcome = 'copied';
      } catch (err) {
        const failure = err instanceof CopyFailure ? err : new CopyFailure('failed', true, `the output store failed: ${(err as Error).message}`);
        outcome = failure.outcome;
        retry ||= failure.retry;
        log.info({ prediction: id, output: n, outcome, reason: failure.message, willRetry: failure.retry && attempt < RETRY_DELAYS_MS.length }, 'outputs: an output was not kept; its upstream URL stays');
      }
      metrics.outputCopies.inc({ outcome });
    }
    if (added > 0) {
      await state.save(manifest);
      await this.#rewrite(id, manifest);
      log.info({ prediction: id, tenant: tenant.id, kept: manifest.objects.length, of: refs.length }, 'outputs kept');
    }
    if (retry && attempt < RETRY_DELAYS_MS.length && !this.#closed) {
      const t = setTimeout(() => {
        this.#timers.delete(t);
        this.#start(id, tenantId, attempt + 1);
      }, RETRY_DELAYS_MS[attempt]);
      t.unref();
      this.#timers.add(t);
    }
  }

  async #copyOne(tenant: Tenant, id: string, n: number, ref: string): Promise<KeptObject> {
    const { state, objects, sources, config } = this.#d;
    const max = tenant.outputsMaxBytes;
    if (max !== undefined && (await state.bytes(tenant.id)) >= max) throw new CopyFailure('quota', false, `the tenant keeps its outputsMaxBytes (${max}) already`);
    const opened = await sources.open(ref, this.#abort.signal);
    const capped = new Capped(config.OUTPUTS_MAX_BYTES);
    // Errors of either side reach the other: a source cut off fails the upload, a store failure stops the download.
    pipeline(opened.body, capped, () => {});
    const key = objectKey(tenant.id, id, n);
    try {
      await objects.put(key, capped, opened.contentType);
    } catch (err) {
      // The cap's own error is the reason (the store only saw its stream fail).
      const cause = err instanceof CopyFailure ? err : capped.errored instanceof CopyFailure ? capped.errored : err;
      opened.body.destroy();
      throw cause;
    }
    // The quota is counted when the size is known; a copy that would pass it is taken back.
    const counted = await state.addBytes(tenant.id, capped.size, max);
    if (!counted.ok) {
      await objects.delete(key).catch(() => {});
      throw new CopyFailure('quota', false, `keeping it would pass the tenant's outputsMaxBytes (${max}; ${counted.used} kept)`);
    }
    return { n, key, size: capped.size, contentType: opened.contentType, etag: capped.etag() };
  }

  /** The prediction as stored: its cached terminal body, else its record. */
  async #terminal(id: string): Promise<Prediction | undefined> {
    const { store } = this.#d;
    const json = (await store.lookup(id)).terminal ?? (await store.current(id)).record;
    if (!json) return undefined;
    try {
      return JSON.parse(json) as Prediction;
    } catch {
      return undefined;
    }
  }

  /** Writes the body back with the kept outputs as gateway links (or, once removed, none) and tells every replica. */
  async #rewrite(id: string, manifest: OutputManifest | null): Promise<void> {
    const body = await this.#terminal(id);
    if (!body) return;
    if (manifest) {
      const byN = new Set(manifest.objects.map((o) => o.n));
      body.output = mapRefs(body.output, (n) => (byN.has(n) ? outputPath(id, n) : undefined));
    } else {
      // As the upstream does after its own deletion.
      body.output = null;
      body.data_removed = true;
    }
    const json = JSON.stringify(body);
    // The cache lasts as long as the outputs: past it, a GET would fetch the upstream's answer, whose links are dead.
    // Once removed, the marked body stays cached at least an hour (the upstream would answer the same).
    const keep = manifest ? Math.ceil((manifest.expiresAt - Date.now()) / 1000) + 3600 : 3600;
    if (!(await this.#d.store.rewriteTerminal(id, json, keep))) return;
    this.forget(id, json);
    await this.#d.pubsub.publish(OUTPUTS_CHANNEL, id).catch(() => {
      // Another replica then serves the old body from its memory for at most its few minutes.
    });
  }

  /** Replaces this process's remembered terminal body (after a rewrite here or on another replica). */
  forget(id: string, json?: string): void {
    if (json) {
      this.#d.facts.setTerminal(id, new PredictionBody(json));
      return;
    }
    this.#d.store
      .lookup(id)
      .then((found) => {
        if (found.terminal) this.#d.facts.setTerminal(id, new PredictionBody(found.terminal));
      })
      .catch(() => {});
  }

  /** Deletes the outputs whose retention ended; the prediction then shows data_removed. */
  async sweep(now = Date.now()): Promise<number> {
    const { state, objects, metrics, log } = this.#d;
    let removed = 0;
    for (const id of await state.due(now, SWEEP_BATCH)) {
      const m = await state.take(id);
      if (!m) continue;
      for (const o of m.objects) {
        await objects.delete(o.key).catch((err: unknown) => log.warn({ err, prediction: id, output: o.n }, 'outputs: could not delete a kept output at the end of its retention'));
      }
      await this.#rewrite(id, null);
      metrics.outputsRemoved.inc();
      removed++;
    }
    if (removed) log.info({ predictions: removed }, 'outputs: retention ended, kept outputs deleted');
    return removed;
  }

  /** The kept output `n` of a prediction, with its manifest; undefined when there is none. */
  async find(id: string, n: number): Promise<{ manifest: OutputManifest; object: KeptObject } | undefined> {
    const manifest = await this.#d.state.manifest(id);
    const object = manifest?.objects.find((o) => o.n === n);
    if (!manifest || !object || manifest.expiresAt <= Date.now()) return undefined;
    return { manifest, object };
  }

  /** Bytes a tenant keeps now. */
  bytes(tenant: string): Promise<number> {
    return this.#d.state.bytes(tenant);
  }

  /** Stops the retries and waits for the copies under way. */
  async close(): Promise<void> {
    this.#closed = true;
    for (const q of this.#queue) if (q.attempt === 0) this.#pending.get(q.id)?.resolve();
    this.#queue.length = 0;
    this.#abort.abort();
    for (const t of this.#timers) clearTimeout(t);
    this.#timers.clear();
    await Promise.allSettled([...this.#running]);
  }
}
