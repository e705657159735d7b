// The upstream accounts: one UpstreamClient each (its own pool, breakers and key), creates routed among them, and
// every later call for a prediction sent to the one that created it (its pin, stored with the prediction). A create
// moves on to the next account only when no job can have started; an account removed from the file drains: no new
// creates, but its client stays until every prediction it may still hold has passed PREDICTION_MAX_OPEN_SECONDS.
import type { FastifyBaseLogger } from 'fastify';
import { modelAllowed } from '../access/allowlist.js';
import { GatewayError } from '../errors.js';
import { readBalance } from './balance.js';
import type { UpstreamClient, UpstreamRequest, UpstreamResponse } from './client.js';
import type { UpstreamSpec } from './upstreams-file.js';

/** Transport failures that happen before a request is on the wire: the upstream never saw the create. */
const NOT_SENT_CODES = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'UND_ERR_CONNECT_TIMEOUT']);
/**
 * Upstream answers that refuse a create before any job exists: the key refused (401), new-api's "quota" or
 * disabled group (403), its load shedding (429) and "no available channel" (503). A 5xx other than 503 or a 504
 * may come after the job started, so they never move a create elsewhere.
 */
const REFUSED_STATUS = new Set([401, 403, 429, 503]);

/** Why a failed create may go to another upstream, or undefined when a job may have started. */
export function notStartedReason(err: unknown): string | undefined {
  if (!(err instanceof GatewayError)) return undefined;
  // The breaker refused before anything was sent.
  if (err.code === 'UPSTREAM_UNAVAILABLE' && err.upstreamStatus === undefined) return 'breaker_open';
  if (err.upstreamStatus !== undefined) return REFUSED_STATUS.has(err.upstreamStatus) ? `http_${err.upstreamStatus}` : undefined;
  const code = (err.cause as { code?: string } | undefined)?.code;
  return code && NOT_SENT_CODES.has(code) ? 'connect' : undefined;
}

export interface UpstreamStatus {
  name: string;
  state: 'active' | 'draining';
  weight: number;
  models: string[] | null;
  breaker: 'open' | 'closed';
  /** null: not read (yet, or the account has none); Infinity is shown as "unlimited". */
  balance: number | 'unlimited' | null;
  balanceSource: string | null;
  balanceCheckedAt: string | null;
  balanceError: string | null;
}

interface Entry {
  spec: UpstreamSpec;
  client: UpstreamClient;
  state: 'active' | 'draining';
  /** Closes a draining entry once none of its predictions can still be open. */
  drainTimer?: NodeJS.Timeout;
  balance?: { remaining: number; source: string; at: number };
  balanceError?: string;
}

export interface UpstreamsOptions {
  build: (spec: UpstreamSpec) => UpstreamClient;
  /** How long a removed upstream keeps its client: longer than any prediction stays open. */
  drainMs: number;
  log: FastifyBaseLogger;
  /** Told each balance read: the gauge and the alert (src/upstream/plugin.ts). */
  onBalance?: (name: string, remaining: number) => void;
  /** Told each create that moved on from an upstream, and why. */
  onFailover?: (from: string, reason: string) => void;
  /** Whether clients built here are closed here (an injected client belongs to its creator). */
  owned?: boolean;
}

export class Upstreams {
  readonly #entries = new Map<string, Entry>();
  readonly #o: UpstreamsOptions;
  /** The upstream of predictions stored without a pin (created before there were several): the first one listed. */
  #fallback: string;

  constructor(specs: UpstreamSpec[], opts: UpstreamsOptions) {
    this.#o = opts;
    this.#fallback = specs[0]!.name;
    this.apply(specs);
  }

  /** Applies a (re)read file: new accounts start, changed ones get a new client, removed ones drain. */
  apply(specs: UpstreamSpec[]): { added: string[]; changed: string[]; draining: string[] } {
    const out = { added: [] as string[], changed: [] as string[], draining: [] as string[] };
    const listed = new Set(specs.map((s) => s.name));
    for (const spec of specs) {
      const old = this.#entries.get(spec.name);
      if (old && sameClient(old.spec, spec)) {
        clearTimeout(old.drainTimer);
        old.spec = spec;
        old.state = 'active';
        continue;
      }
      this.#entries.set(spec.name, { spec, client: this.#o.build(spec), state: 'active' });
      if (old) {
        // The same account by name (a rotated key, a new address): its predictions follow the name to the new client;
        // the old pool finishes what it has in flight, then closes.
        clearTimeout(old.drainTimer);
        this.#close(old);
        out.changed.push(spec.name);
      } else out.added.push(spec.name);
    }
    for (const [name, e] of this.#entries) {
      if (listed.has(name) || e.state === 'draining') continue;
      e.state = 'draining';
      e.drainTimer = setTimeout(() => {
        if (this.#entries.get(name) !== e) return;
        this.#entries.delete(name);
        this.#close(e);
        this.#o.log.info({ upstream: name }, 'a removed upstream has drained: its client is closed');
      }, this.#o.drainMs);
      e.drainTimer.unref();
      out.draining.push(name);
    }
    this.#fallback = specs[0]!.name;
    return out;
  }

  #close(e: Entry): void {
    if (this.#o.owned === false) return;
    e.client.close().catch(() => {});
  }

  /** Whether any account takes only some models (then a create needs to know its model to be routed). */
  get restricted(): boolean {
    for (const e of this.#entries.values()) if (e.spec.models) return true;
    return false;
  }

  names(): string[] {
    return [...this.#entries.keys()];
  }

  /** The name a stored pin (or its absence) stands for. */
  resolve(pin: string | null | undefined): string {
    return pin || this.#fallback;
  }

  /**
   * The client of the upstream a prediction is pinned to. An account that is gone from this process (removed and
   * drained, or never known to it) cannot serve it: a 502 naming why, never another account's answer.
   */
  client(pin: string | null | undefined): UpstreamClient {
    const name = this.resolve(pin);
    const e = this.#entries.get(name);
    if (!e) throw new GatewayError('UPSTREAM_ERROR', `this prediction was created on upstream "${name}", which is no longer configured`);
    return e.client;
  }

  webhookSecret(pin: string | null | undefined): string | undefined {
    return this.#entries.get(this.resolve(pin))?.spec.webhookSecret;
  }

  /**
   * The accounts a create may go to, in the order to try them: those that take the model, are healthy and not out
   * of money, by weight (a weighted shuffle); then weight 0 (standby); then the unwell and the empty, as a last resort
   * (a breaker fails fast, and a balance may have been topped up since it was read).
   */
  order(model: string | undefined): [string, UpstreamClient][] {
    const good: Entry[] = [];
    const standby: Entry[] = [];
    const poor: Entry[] = [];
    for (const e of this.#entries.values()) {
      if (e.state !== 'active' || e.spec.drain) continue;
      // A model unknown to the gateway (a create by an unseen version) cannot be shown to be allowed.
      if (e.spec.models && (model === undefined || !modelAllowed(model, e.spec.models))) continue;
      const empty = e.balance !== undefined && e.balance.remaining <= 0;
      if (e.client.breakerOpen || empty) poor.push(e);
      else if (e.spec.weight > 0) good.push(e);
      else standby.push(e);
    }
    return [...weightedShuffle(good), ...standby, ...poor].map((e) => [e.spec.name, e.client]);
  }

  /**
   * Runs a create on the first account that takes it. Only a failure after which no job can exist moves it on (see
   * notStartedReason); any other failure, a timeout after sending above all, is the create's answer.
   */
  async create<T>(model: string | undefined, run: (client: UpstreamClient, name: string) => Promise<T>): Promise<{ upstream: string; value: T }> {
    const order = this.order(model);
    if (!order.length) {
      throw new GatewayError('UPSTREAM_UNAVAILABLE', model ? `no configured upstream takes model ${model}` : 'no configured upstream takes new predictions', { headers: { 'retry-after': '30' } });
    }
    let last: unknown;
    for (const [i, [name, client]] of order.entries()) {
      try {
        return { upstream: name, value: await run(client, name) };
      } catch (err) {
        const reason = notStartedReason(err);
        if (reason === undefined || i === order.length - 1) throw err;
        last = err;
        this.#o.onFailover?.(name, reason);
        this.#o.log.warn({ upstream: name, next: order[i + 1]![0], reason }, 'a create failed over to the next upstream (no job was started)');
      }
    }
    throw last;
  }

  /** Catalogue reads (models, collections): the same on every account, so the first healthy one answers. */
  request(req: UpstreamRequest): Promise<UpstreamResponse> {
    const active = [...this.#entries.values()].filter((e) => e.state === 'active');
    const e = active.find((x) => !x.client.breakerOpen) ?? active[0] ?? [...this.#entries.values()][0]!;
    return e.client.request(req);
  }

  /** Open when every active account's upstream-wide breaker is: creates have nowhere to go. */
  get breakerOpen(): boolean {
    const active = [...this.#entries.values()].filter((e) => e.state === 'active');
    return active.length > 0 && active.every((e) => e.client.breakerOpen);
  }

  openTenantBreakers(): string[] {
    const all = new Set<string>();
    for (const e of this.#entries.values()) for (const t of e.client.openTenantBreakers()) all.add(t);
    return [...all];
  }

  /** Reads every new-api account's balance once (the plugin calls this every UPSTREAM_BALANCE_POLL_SECONDS). */
  async refreshBalances(): Promise<void> {
    await Promise.all(
      [...this.#entries.values()].filter((e) => e.spec.balance === 'new-api').map(async (e) => {
        try {
          const r = await readBalance(e.client, e.spec.name, e.spec.quotaPerUnit);
          e.balance = { remaining: r.remaining, source: r.source, at: Date.now() };
          e.balanceError = undefined;
          this.#o.onBalance?.(e.spec.name, r.remaining);
        } catch (err) {
          // The last reading stays (routing keeps using it); the error is shown next to it, and logged when it is
          // new (an account without these routes would otherwise say so every poll).
          const reason = (err as Error).message;
          if (reason !== e.balanceError) this.#o.log.info({ upstream: e.spec.name, reason }, 'could not read an upstream\'s balance');
          e.balanceError = reason;
        }
      }),
    );
  }

  status(): UpstreamStatus[] {
    return [...this.#entries.values()].map((e) => ({
      name: e.spec.name,
      state: e.state === 'active' && e.spec.drain ? 'draining' : e.state,
      weight: e.spec.weight,
      models: e.spec.models ?? null,
      breaker: e.client.breakerOpen ? 'open' : 'closed',
      balance: e.balance ? (e.balance.remaining === Infinity ? 'unlimited' : Math.round(e.balance.remaining * 10_000) / 10_000) : null,
      balanceSource: e.balance?.source ?? null,
      balanceCheckedAt: e.balance ? new Date(e.balance.at).toISOString() : null,
      balanceError: e.balanceError ?? null,
    }));
  }

  async close(): Promise<void> {
    const entries = [...this.#entries.values()];
    this.#entries.clear();
    for (const e of entries) clearTimeout(e.drainTimer);
    if (this.#o.owned === false) return;
    await Promise.all(entries.map((e) => e.client.close()));
  }
}

/** The same account reached the same way: the client (pool, breakers) carries over a reload. */
const sameClient = (a: UpstreamSpec, b: UpstreamSpec) => a.baseUrl === b.baseUrl && a.apiKey === b.apiKey;

/** Every entry once, each next one drawn with a chance proportional to its weight among those left. */
function weightedShuffle(entries: Entry[]): Entry[] {
  const left = [...entries];
  const out: Entry[] = [];
  while (left.length) {
    const total = left.reduce((s, e) => s + e.spec.weight, 0);
    let r = Math.random() * total;
    let i = 0;
    while (i < left.length - 1 && (r -= left[i]!.spec.weight) >= 0) i++;
    out.push(left.splice(i, 1)[0]!);
  }
  return out;
}
