// Spend control: budgets per tenant (per day or month) and per token (its lifetime), the running-job cap and the
// tenant's share of the upstream account's create rate. A create reserves its expected spend in one store script
// (src/store/), which the prediction's end settles to the real predict_time and cost.
import { randomUUID } from 'node:crypto';
import type { Tenant } from '../access/tenants.js';
import type { Config } from '../config.js';
import { GatewayError } from '../errors.js';
import { BoundedMap } from '../lib/bounded-map.js';
import type { BudgetField, BudgetLine, ReserveRequest, Store } from '../store/store.js';
import { keys } from '../store/keys.js';
import { USAGE_TTL_SECONDS } from '../store/store.js';
import type { Principal, TokenGrant } from '../types.js';
import { type Period, periodOf } from './period.js';
import { type Amounts, type PriceTable, predictTimeOfPrediction } from './prices.js';

export type Dimension = 'creates' | 'predictTimeSeconds' | 'cost';

export const DIMENSIONS: readonly { name: Dimension; field: BudgetField; header: string; what: string }[] = [
  { name: 'creates', field: 'creates', header: 'x-budget-remaining-creates', what: 'create' },
  { name: 'predictTimeSeconds', field: 'seconds', header: 'x-budget-remaining-predict-time-seconds', what: 'predict-time' },
  { name: 'cost', field: 'cost', header: 'x-budget-remaining-cost', what: 'cost' },
];

export const BUDGET_HEADERS = DIMENSIONS.map((d) => d.header);

/** One ceiling as it applies now: whose, which store hash, and when it resets. */
interface Scope {
  dim: (typeof DIMENSIONS)[number];
  token: boolean;
  key: string;
  max: number;
  period: Period | 'token';
  periodKey: string;
  resetsAt: number;
  ttlSeconds: number;
}

export interface Reservation {
  tenant: string;
  rid: string;
  estimate: Amounts;
  headers: Record<string, string>;
}

const round = (n: number) => Math.round(n * 1e6) / 1e6;
const seconds = (ms: number) => String(Math.max(1, Math.ceil(ms / 1000)));

export class Budgets {
  readonly #config: Config;
  readonly #store: Store;
  readonly #tenants: () => readonly Tenant[];
  /** Remaining-budget headers per caller for a second: every authenticated response carries them. */
  readonly #headers = new BoundedMap<Record<string, string>>({ maxEntries: 10_000, ttlMs: 1000 });

  readonly #refused: (tenant: string, what: string) => void;

  constructor(opts: {
    config: Config;
    store: Store;
    tenants: () => readonly Tenant[];
    prices?: PriceTable;
    now?: () => number;
    /** Told each refusal: `budget-<name>`, `running`, `share` or `account`. */
    onRefused?: (tenant: string, what: string) => void;
  }) {
    this.#config = opts.config;
    this.#refused = opts.onRefused ?? (() => {});
    this.#store = opts.store;
    this.#tenants = opts.tenants;
    this.prices = opts.prices;
    this.now = opts.now ?? Date.now;
  }

  readonly prices: PriceTable | undefined;
  /** The clock every period, expiry and share window is read from (tests move it across a month's end). */
  readonly now: () => number;

  #scopes(tenant: Tenant, token: TokenGrant | undefined, now: number): Scope[] {
    const out: Scope[] = [];
    for (const dim of DIMENSIONS) {
      const b = tenant.budget?.[dim.name];
      if (b) {
        const w = periodOf(b.period, now, this.#config.BUDGET_TIMEZONE);
        out.push({ dim, token: false, key: keys.budgetTenant(tenant.id, w.key), max: b.max, period: b.period, periodKey: w.key, resetsAt: w.endsAt, ttlSeconds: USAGE_TTL_SECONDS });
      }
      const t = token?.budget?.[dim.name];
      if (t !== undefined && token) {
        const ttlSeconds = Math.max(60, Math.ceil(token.exp - now / 1000) + 86_400);
        out.push({ dim, token: true, key: keys.budgetToken(tenant.id, token.jti), max: t, period: 'token', periodKey: token.jti, resetsAt: token.exp * 1000, ttlSeconds });
      }
    }
    return out;
  }

  /** What a create of this model is expected to spend (reserved until it ends). */
  estimate(model: string | undefined): Amounts {
    return this.prices?.estimate(model) ?? { seconds: this.#config.BUDGET_EXPECTED_SECONDS, cost: 0 };
  }

  /** What a finished prediction spent: its predict_time, and its cost by the price table. */
  actual(prediction: Record<string, unknown>): Amounts {
    const model = typeof prediction.model === 'string' ? prediction.model : undefined;
    return this.prices?.actual(model, prediction) ?? { seconds: predictTimeOfPrediction(prediction), cost: 0 };
  }

  /**
   * Admits a create or throws the 429 that says why not. Undefined when nothing applies to this caller (no budget,
   * no running cap, no shared create rate): then the store is not asked at all.
   */
  async reserve(principal: Principal, modelOf: (() => Promise<string | undefined>) | undefined, deadlineMs: number): Promise<Reservation | undefined> {
    const { tenant, token } = principal;
    const now = this.now();
    const scopes = this.#scopes(tenant, token, now);
    const limit = this.#config.UPSTREAM_CREATE_LIMIT;
    if (!scopes.length && tenant.maxRunning === undefined && limit === undefined) return undefined;
    // Only a price table tells models apart (and a create by version may cost a store read to name its model).
    const estimate = this.estimate(this.prices && modelOf ? await modelOf() : undefined);
    const amountOf = (f: BudgetField) => (f === 'creates' ? 1 : f === 'seconds' ? estimate.seconds : estimate.cost);
    const lines: BudgetLine[] = scopes.map((s) => ({ key: s.key, field: s.dim.field, max: s.max, amount: amountOf(s.dim.field), ttlSeconds: s.ttlSeconds }));
    const req: ReserveRequest = {
      tenant: tenant.id,
      rid: randomUUID(),
      now,
      // A create that never comes back (its process died) frees its reservation after its deadline and a minute.
      expiresAt: now + deadlineMs + 60_000,
      lines,
    };
    if (scopes.length || tenant.maxRunning !== undefined) {
      req.running = { tenant: tenant.id, max: tenant.maxRunning, ttlSeconds: this.#config.PREDICTION_TTL_SECONDS + 86_400 };
    }
    let windowEndsAt = 0;
    if (limit !== undefined) {
      const windowMs = this.#config.UPSTREAM_CREATE_WINDOW;
      const id = Math.floor(now / windowMs);
      windowEndsAt = (id + 1) * windowMs;
      const all = this.#tenants();
      const weights: Record<string, number> = {};
      let total = 0;
      for (const t of all) {
        total += t.share;
        if (t.share !== 1) weights[t.id] = t.share;
      }
      req.share = { tenant: tenant.id, windowKey: keys.shareWindow(id), previousKey: keys.shareWindow(id - 1), windowTtlMs: 2 * windowMs, limit, weights, defaultWeight: 1, totalWeight: total || 1 };
    }
    const r = await this.#store.reserve(req);
    // This process's next answers show the change at once (other replicas' within a second): the figures a
    // reservation leaves are exact, so they replace the caller's cached ones rather than cost another read.
    this.#headers.delete(`t:${tenant.id}`);
    if (token) this.#headers.delete(`k:${token.jti}`);
    if (r.ok) {
      const headers: Record<string, string> = {};
      r.remaining.forEach((rem, i) => this.#tighter(headers, scopes[i]!.dim, rem));
      if (scopes.length) this.#headers.set(token?.budget ? `k:${token.jti}` : `t:${tenant.id}`, headers);
      return { tenant: tenant.id, rid: req.rid, estimate, headers };
    }
    this.#refused(tenant.id, r.reason === 'budget' ? `budget-${scopes[r.line]!.dim.name}` : r.reason);
    if (r.reason === 'budget') {
      const s = scopes[r.line]!;
      const unit = s.dim.name === 'cost' ? ` ${this.prices?.currency ?? ''}`.trimEnd() : s.dim.name === 'predictTimeSeconds' ? ' s' : '';
      const whose = s.token ? 'this token' : `tenant ${tenant.id}`;
      const per = s.period === 'token' ? 'for its lifetime' : s.period === 'day' ? `for the day ${s.periodKey}` : `for the month ${s.periodKey}`;
      const figures = `${round(r.spent)}${unit} spent and ${round(r.reserved)}${unit} reserved of ${s.max}${unit}`;
      const then = s.token ? 'request a new token' : `it resets at ${new Date(s.resetsAt).toISOString()}`;
      throw new GatewayError('BUDGET_EXCEEDED', `${whose} has used its ${s.dim.what} budget ${per}: ${figures}, and this create needs ${round(amountOf(s.dim.field))}${unit} more; ${then}`, {
        headers: { 'retry-after': seconds(s.resetsAt - now), [s.dim.header]: String(round(Math.max(0, s.max - r.spent - r.reserved))) },
        extra: { budget: s.dim.name, scope: s.token ? 'token' : 'tenant', period: s.period, resets_at: new Date(s.resetsAt).toISOString() },
      });
    }
    if (r.reason === 'running') {
      throw new GatewayError('RUNNING_LIMIT', `tenant ${tenant.id} already has ${r.running} predictions starting or processing (maxRunning ${tenant.maxRunning}); retry when one ends`, {
        headers: { 'retry-after': '2' },
      });
    }
    const per = `${limit} creates per ${this.#config.UPSTREAM_CREATE_WINDOW / 1000} s`;
    const wait = seconds(windowEndsAt - now);
    throw new GatewayError(
      'SHARE_EXCEEDED',
      r.reason === 'account'
        ? `the shared upstream account's create limit (${per}) is used up; retry in ${wait} s`
        : `tenant ${tenant.id} has made ${r.used} creates in this window, past its share of ${round(r.share)} of the upstream account's ${per}, and the rest is held for other tenants; retry in ${wait} s`,
      { headers: { 'retry-after': wait } },
    );
  }

  #tighter(headers: Record<string, string>, dim: Scope['dim'], remaining: number): void {
    const v = round(Math.max(0, remaining));
    const old = headers[dim.header];
    if (old === undefined || v < Number(old)) headers[dim.header] = String(v);
  }

  /** A create that started nothing gives its reservation back; one that timed out (it may run) spends the estimate. */
  async end(r: Reservation, timedOut: boolean): Promise<void> {
    await (timedOut ? this.#store.settleReservation(r.tenant, r.rid, r.estimate) : this.#store.releaseReservation(r.tenant, r.rid)).catch(() => {
      // The store is down: the reservation is released when its lease ends.
    });
  }

  /** x-budget-remaining-* for a caller with budgets (the tighter of token and tenant), fresh within a second. */
  async remainingHeaders(principal: Principal): Promise<Record<string, string> | undefined> {
    const { tenant, token } = principal;
    if (!tenant.budget && !token?.budget) return undefined;
    const cacheKey = token?.budget ? `k:${token.jti}` : `t:${tenant.id}`;
    const cached = this.#headers.get(cacheKey);
    if (cached) return cached;
    const scopes = this.#scopes(tenant, token, this.now());
    const totals = await this.#store.budgetGet(scopes.map((s) => s.key));
    const headers: Record<string, string> = {};
    scopes.forEach((s, i) => {
      const h = totals[i]!;
      this.#tighter(headers, s.dim, s.max - (h[`${s.dim.field}:s`] ?? 0) - (h[`${s.dim.field}:r`] ?? 0));
    });
    this.#headers.set(cacheKey, headers);
    return headers;
  }

  /** A tenant's budgets as /usage shows them: max, spent, reserved and remaining this period, and its running count. */
  async status(tenant: Tenant): Promise<{ budget?: Record<string, unknown>; running?: { count: number; max: number | null } }> {
    const scopes = this.#scopes(tenant, undefined, this.now());
    const counted = scopes.length > 0 || tenant.maxRunning !== undefined;
    if (!counted) return {};
    const [totals, [running]] = await Promise.all([this.#store.budgetGet(scopes.map((s) => s.key)), this.#store.runningGet([tenant.id])]);
    const out: { budget?: Record<string, unknown>; running?: { count: number; max: number | null } } = {
      running: { count: running ?? 0, max: tenant.maxRunning ?? null },
    };
    if (scopes.length) {
      out.budget = Object.fromEntries(
        scopes.map((s, i) => {
          const spent = Math.max(0, round(totals[i]![`${s.dim.field}:s`] ?? 0));
          const reserved = Math.max(0, round(totals[i]![`${s.dim.field}:r`] ?? 0));
          const line: Record<string, unknown> = { max: s.max, period: s.period, period_key: s.periodKey, resets_at: new Date(s.resetsAt).toISOString(), spent, reserved, remaining: round(Math.max(0, s.max - spent - reserved)) };
          if (s.dim.name === 'cost' && this.prices?.currency) line.currency = this.prices.currency;
          return [s.dim.name, line];
        }),
      );
    }
    return out;
  }
}
