// The dashboard's one JSON answer: per tenant this day's and month's usage (store), budgets and running jobs
// (budgets, else the tenant's recent index), 429s and 5xx (every replica's reports), and the upstream's health, the
// cache and the last failures.
import type { FastifyInstance } from 'fastify';
import type { Tenant } from '../access/tenants.js';
import { type Prediction, isTerminal } from '../predictions/prediction.js';
import { daysBetween, today, totalsOf } from '../usage/day.js';
import { type OpsStats, mergeReports, zero } from './stats.js';

/** Index entries looked at for a tenant without a running count of its own; older than a day counts as stale. */
const INDEX_LOOKBACK = 100;
const RUNNING_MAX_AGE_MS = 86_400_000;

/** Predictions of the tenant's newest INDEX_LOOKBACK, created in the last day, not seen terminal (as last seen). */
async function runningFromIndex(app: FastifyInstance, tenant: Tenant, now: number): Promise<number> {
  const { entries } = await app.store.listPage(tenant.id, { limit: INDEX_LOOKBACK });
  let n = 0;
  for (const e of entries) {
    if (e.score / 1000 < now - RUNNING_MAX_AGE_MS) continue;
    try {
      if (!isTerminal(JSON.parse(e.json) as Prediction)) n++;
    } catch {
      // An entry that does not parse is not counted.
    }
  }
  return n;
}

export async function buildOverview(app: FastifyInstance, stats: OpsStats, now = Date.now()) {
  const { store, tenants, budgets, upstream } = app;
  const day = today(now);
  const monthDays = daysBetween(`${day.slice(0, 7)}-01`, day, 31)!;
  const all = tenants.all();
  const [usage, statuses, reports, open] = await Promise.all([
    Promise.all(all.map((t) => store.usageGet(t.id, monthDays))),
    Promise.all(all.map((t) => budgets.status(t))),
    stats.reports(now),
    store.openStats(now),
  ]);
  const running = await Promise.all(
    all.map(async (t, i) => {
      const s = statuses[i]!.running;
      if (s) return { count: s.count, max: s.max, counted: 'exact' as const };
      return { count: await runningFromIndex(app, t, now), max: null, counted: 'index' as const };
    }),
  );
  const merged = mergeReports(reports, now);
  const traffic = (id: string) => merged.counts[id] ?? { today: zero(), month: zero() };
  return {
    now: new Date(now).toISOString(),
    day,
    month: day.slice(0, 7),
    currency: budgets.prices?.currency ?? null,
    tenants: all.map((t, i) => {
      const u = usage[i]!;
      const seen = traffic(t.id);
      const { rateLimited: rlToday, errors: errToday } = seen.today;
      const { rateLimited: rlMonth, errors: errMonth } = seen.month;
      return {
        id: t.id,
        today: { ...totalsOf({ [day]: u[day] ?? {} }), rate_limited: rlToday, errors: errToday },
        month: { ...totalsOf(u), rate_limited: rlMonth, errors: errMonth },
        budget: statuses[i]!.budget ?? null,
        running: running[i],
      };
    }),
    upstream: {
      // This process's view; each replica's own is under `replicas`.
      breaker: upstream.breakerOpen ? 'open' : 'closed',
      tenantBreakersOpen: upstream.openTenantBreakers(),
      latencyMs: merged.latency,
    },
    // Each upstream account as this process sees it: state, breaker and balance (read by every replica alike).
    upstreams: app.upstreams.status(),
    balanceAlert: app.config.UPSTREAM_BALANCE_ALERT ?? null,
    // Predictions followed to their end (src/lifecycle/): how many are open, how overdue the most overdue look is,
    // and this replica's settlement lag (completed upstream → settled here).
    lifecycle: {
      open: open.open,
      backlogSeconds: open.oldestDue === null ? 0 : Math.max(0, now - open.oldestDue) / 1000,
      lagSeconds: app.predictions.lifecycle.lagSummary(),
    },
    cache: merged.cache,
    series: merged.series,
    failures: merged.failures,
    replicas: merged.replicas.map((r) => ({ ...r, self: r.id === stats.replica })),
  };
}
