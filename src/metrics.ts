// Prometheus metrics (prom-client). One registry per app, so several apps in one process (tests) never collide.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { Answered } from './dashboard/stats.js';

/** One tenant's budgets and running count as the store has them (shared by replicas: every replica reports the same). */
export interface BudgetSample {
  tenant: string;
  budgets: { budget: string; max: number; spent: number; reserved: number }[];
  running: number;
}

export class Metrics {
  readonly registry = new Registry();
  // One count per answered request, in plain maps (no label hashing on the request path), read by /metrics when it
  // is scraped and passed on to the dashboard's own windows (src/dashboard/stats.ts): one counting system for both.
  readonly #answered = new Map<string, { route: string; status: number; tenant: string; n: number }>();
  readonly #cacheResults = { hit: 0, miss: 0 };
  readonly #sinks: ((a: Answered) => void)[] = [];
  readonly requests = new Counter({
    name: 'fgw_requests_total',
    help: 'Requests answered, by route, status code and tenant',
    labelNames: ['route', 'status', 'tenant'] as const,
    registers: [this.registry],
    collect: () => {
      this.requests.reset();
      for (const c of this.#answered.values()) this.requests.inc({ route: c.route, status: c.status, tenant: c.tenant }, c.n);
    },
  });
  readonly upstreamDuration = new Histogram({
    name: 'fgw_upstream_duration_seconds',
    help: 'Upstream call latency (all attempts), by route and outcome',
    labelNames: ['route', 'outcome'] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    registers: [this.registry],
  });
  readonly upstreamFailovers = new Counter({
    name: 'fgw_upstream_failovers_total',
    help: 'Creates that moved on from an upstream that refused them before any job started, by upstream and reason',
    labelNames: ['upstream', 'reason'] as const,
    registers: [this.registry],
  });
  readonly upstreamBalance = new Gauge({
    name: 'fgw_upstream_balance',
    help: 'An upstream account\'s balance as last read, in the reseller\'s display unit (+Inf: unlimited)',
    labelNames: ['upstream'] as const,
    registers: [this.registry],
  });
  readonly upstreamBalanceAlerts = new Counter({
    name: 'fgw_upstream_balance_alerts_total',
    help: 'Balance reads at or below UPSTREAM_BALANCE_ALERT, by upstream',
    labelNames: ['upstream'] as const,
    registers: [this.registry],
  });
  readonly cache = new Counter({
    name: 'fgw_cache_total',
    help: 'Terminal-prediction cache lookups, by result (hit or miss)',
    labelNames: ['result'] as const,
    registers: [this.registry],
    collect: () => {
      this.cache.reset();
      this.cache.inc({ result: 'hit' }, this.#cacheResults.hit);
      this.cache.inc({ result: 'miss' }, this.#cacheResults.miss);
    },
  });

  /** Counts an answered request (the access hook calls this once per request). */
  answered(a: Answered): void {
    const key = `${a.route}\u0000${a.status}\u0000${a.tenant}`;
    const c = this.#answered.get(key);
    if (c) c.n++;
    else this.#answered.set(key, { route: a.route, status: a.status, tenant: a.tenant, n: 1 });
    if (a.cache === 'HIT') this.#cacheResults.hit++;
    else if (a.cache) this.#cacheResults.miss++;
    for (const sink of this.#sinks) sink(a);
  }

  /** Also hands every answered request to `sink` (the dashboard, when it is on). */
  onAnswered(sink: (a: Answered) => void): void {
    this.#sinks.push(sink);
  }
  readonly rateLimited = new Counter({
    name: 'fgw_rate_limited_total',
    help: 'Requests refused by a rate limit, by tenant and limit',
    labelNames: ['tenant', 'limit'] as const,
    registers: [this.registry],
  });
  readonly coalesced = new Counter({
    name: 'fgw_coalesced_total',
    help: 'GETs answered by sharing another request\'s upstream call or the poll micro-cache',
    registers: [this.registry],
  });
  readonly idempotentReplays = new Counter({
    name: 'fgw_idempotent_replays_total',
    help: 'Creates answered by replaying a stored Idempotency-Key response',
    registers: [this.registry],
  });
  readonly webhookDeliveries = new Counter({
    name: 'fgw_webhook_deliveries_total',
    help: 'Webhook delivery attempts to tenants, by tenant and outcome (delivered, retrying, failed)',
    labelNames: ['tenant', 'outcome'] as const,
    registers: [this.registry],
  });
  readonly settled = new Counter({
    name: 'fgw_predictions_settled_total',
    help: 'Predictions the gateway saw end (each once across replicas), by outcome (the terminal status)',
    labelNames: ['outcome'] as const,
    registers: [this.registry],
  });
  readonly settlementLag = new Histogram({
    name: 'fgw_settlement_lag_seconds',
    help: 'From a prediction\'s completed_at upstream to the gateway having settled it (budget, slot, usage, list, webhook)',
    buckets: [0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 900],
    registers: [this.registry],
  });
  readonly expired = new Counter({
    name: 'fgw_predictions_expired_total',
    help: 'Open predictions the gateway gave up on and settled as expired, by reason (max-open, gone)',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });
  readonly watchReads = new Counter({
    name: 'fgw_watch_reads_total',
    help: 'Upstream reads made by the watcher of open predictions in this process, by outcome (ok, not-found, error)',
    labelNames: ['outcome'] as const,
    registers: [this.registry],
  });
  readonly outputCopies = new Counter({
    name: 'fgw_output_copies_total',
    help: 'Output files the gateway tried to keep, by outcome (copied, not_found, too_large, refused, quota, failed)',
    labelNames: ['outcome'] as const,
    registers: [this.registry],
  });
  readonly outputsRemoved = new Counter({
    name: 'fgw_outputs_removed_total',
    help: 'Predictions whose kept outputs were deleted at the end of their retention',
    registers: [this.registry],
  });
  #openSource: (() => Promise<{ open: number; oldestDue: number | null }>) | undefined;
  readonly openPredictions = new Gauge({
    name: 'fgw_open_predictions',
    help: 'Predictions created and not yet seen ending, across every replica (the watcher follows them)',
    registers: [this.registry],
    collect: async () => {
      const s = await this.#openSource?.().catch(() => undefined);
      if (s) {
        this.openPredictions.set(s.open);
        this.watchBacklog.set(s.oldestDue === null ? 0 : Math.max(0, Date.now() - s.oldestDue) / 1000);
      }
    },
  });
  readonly watchBacklog = new Gauge({
    name: 'fgw_watch_backlog_seconds',
    help: 'How long the most overdue open prediction has waited for its look (above a few seconds: the read budget is the limit)',
    registers: [this.registry],
  });

  /** Where the open-set gauges come from (src/lifecycle/). */
  watchOpen(source: () => Promise<{ open: number; oldestDue: number | null }>): void {
    this.#openSource = source;
  }

  /** Per API-issued key: the id is not secret, and keys are as few as operators issue. */
  readonly keyRequests = new Counter({
    name: 'fgw_key_requests_total',
    help: 'Requests authenticated with an API-issued key, by tenant and key id',
    labelNames: ['tenant', 'key_id'] as const,
    registers: [this.registry],
  });
  readonly storeErrors = new Counter({
    name: 'fgw_store_errors_total',
    help: 'Requests that failed because the state store was unavailable',
    registers: [this.registry],
  });

  // Budget gauges are read from the store when scraped; the four share one read per scrape.
  #budgetSource: (() => Promise<BudgetSample[]>) | undefined;
  #budgetRead: Promise<void> | undefined;
  readonly #collectBudgets = () => this.#readBudgets();
  readonly #gauge = <L extends string>(name: string, help: string, labelNames: readonly L[]) =>
    new Gauge({ name, help, labelNames, registers: [this.registry], collect: this.#collectBudgets });
  readonly budgetSpent = this.#gauge('fgw_budget_spent', 'Spent this budget period, by tenant and budget (creates, predictTimeSeconds, cost)', ['tenant', 'budget']);
  readonly budgetReserved = this.#gauge('fgw_budget_reserved', 'Reserved by predictions not finished yet, by tenant and budget', ['tenant', 'budget']);
  readonly budgetMax = this.#gauge('fgw_budget_max', 'The budget per period, by tenant and budget (alert on (spent + reserved) / max)', ['tenant', 'budget']);
  readonly running = this.#gauge('fgw_running_predictions', 'Predictions starting or processing, by tenant (tenants with a budget or maxRunning)', ['tenant']);

  /** Where the budget gauges come from (src/budget/plugin.ts). */
  watchBudgets(source: () => Promise<BudgetSample[]>): void {
    this.#budgetSource = source;
  }

  #readBudgets(): Promise<void> {
    const source = this.#budgetSource;
    if (!source) return Promise.resolve();
    this.#budgetRead ??= source()
      .then((rows) => {
        for (const g of [this.budgetSpent, this.budgetReserved, this.budgetMax, this.running]) g.reset();
        for (const r of rows) {
          this.running.set({ tenant: r.tenant }, r.running);
          for (const b of r.budgets) {
            const labels = { tenant: r.tenant, budget: b.budget };
            this.budgetSpent.set(labels, b.spent);
            this.budgetReserved.set(labels, b.reserved);
            this.budgetMax.set(labels, b.max);
          }
        }
      })
      // A store outage must not fail the scrape: the gauges keep their last values.
      .catch(() => {})
      .finally(() => (this.#budgetRead = undefined));
    return this.#budgetRead;
  }

  constructor(defaults = true) {
    if (defaults) collectDefaultMetrics({ register: this.registry, prefix: 'fgw_' });
  }
}
