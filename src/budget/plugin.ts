// `app.budgets`: the price table (PRICES_FILE), the budget checks of the tenants file, the budget gauges; and, on
// API routes, the x-budget-remaining-* headers of every authenticated response.
import type { FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import type { Tenant } from '../access/tenants.js';
import { ConfigError } from '../config.js';
import type { BudgetSample } from '../metrics.js';
import { BUDGET_HEADERS, Budgets } from './budgets.js';
import { type PriceTable, readPricesFile } from './prices.js';

/**
 * What the tenants file asks of the price table: a cost budget needs one, and a model a cost-budgeted tenant lists
 * by name needs a price unless the table has a default (wildcards and unlisted models fall back to the default or
 * the dearest price). Throws naming the field.
 */
export function checkTenantBudgets(tenants: readonly Tenant[], prices: PriceTable | undefined, hasDefault: boolean): void {
  tenants.forEach((t, i) => {
    // A token's cost budget counts money like the tenant's: without a price table every create would cost 0 and the
    // budget would be silently unlimited.
    const field = t.budget?.cost ? 'budget.cost' : t.tokenBudget?.cost !== undefined ? 'tokenBudget.cost' : undefined;
    if (!field) return;
    if (!prices) throw new ConfigError(`invalid configuration: tenants.${i}.${field} needs PRICES_FILE (a price table) to count money`);
    if (hasDefault) return;
    t.models?.forEach((m, j) => {
      if (!m.endsWith('/*') && !prices.knows(m)) {
        throw new ConfigError(`invalid configuration: tenants.${i}.models.${j}: model ${m} has no price in PRICES_FILE (tenant ${t.id} has a cost budget, and the file has no default)`);
      }
    });
  });
}

export default fp<{ now?: () => number }>(
  async (app, opts) => {
    const { config, store, tenants, metrics } = app;
    const prices = config.PRICES_FILE ? readPricesFile(config.PRICES_FILE, config.BUDGET_EXPECTED_SECONDS) : undefined;
    const hasDefault = prices?.hasDefault ?? false;
    checkTenantBudgets(tenants.all(), prices, hasDefault);
    // A reloaded tenants file that fails the same checks is rejected like any invalid one.
    tenants.addCheck((all) => checkTenantBudgets(all, prices, hasDefault));
    const budgets = new Budgets({
      config,
      store,
      tenants: () => tenants.all(),
      prices,
      now: opts.now,
      onRefused: (tenant, what) => metrics.rateLimited.inc({ tenant, limit: what }),
    });
    app.decorate('budgets', budgets);

    metrics.watchBudgets(async () => {
      const counted = tenants.all().filter((t) => t.budget || t.maxRunning !== undefined);
      const statuses = await Promise.all(counted.map((t) => budgets.status(t)));
      return counted.map((t, i): BudgetSample => {
        const s = statuses[i]!;
        const lines = Object.entries(s.budget ?? {}) as [string, { max: number; spent: number; reserved: number }][];
        return { tenant: t.id, running: s.running?.count ?? 0, budgets: lines.map(([budget, l]) => ({ budget, max: l.max, spent: l.spent, reserved: l.reserved })) };
      });
    });
  },
  { name: 'budgets', dependencies: ['config', 'metrics', 'store', 'tenants'] },
);

/**
 * On API routes: the caller's remaining budgets as headers (a store failure only costs the headers). The read starts
 * with the request and is awaited only when the answer goes out, so it overlaps the handler; a create that reserved
 * already carries the exact figures, and is not read again.
 */
export const budgetHeaders = fp(
  async (app) => {
    app.decorateRequest('budgetHeaders', undefined);
    const read = (request: FastifyRequest) => app.budgets.remainingHeaders(request.principal!).catch(() => undefined);
    // Most callers have no budget: for them both hooks return at once, without a promise or a microtask turn.
    const budgeted = (request: FastifyRequest) => {
      const p = request.principal;
      return !!p && (p.tenant.budget !== undefined || p.token?.budget !== undefined);
    };
    app.addHook('onRequest', (request, _reply, done) => {
      if (budgeted(request) && !request.routeOptions.config.create) request.budgetHeaders = read(request);
      done();
    });
    app.addHook('onSend', (request, reply, payload, done) => {
      if (!budgeted(request) || BUDGET_HEADERS.some((h) => reply.hasHeader(h))) return done(null, payload);
      // read() never rejects (a store failure only costs the headers).
      void (request.budgetHeaders ?? read(request)).then((headers) => {
        if (headers) reply.headers(headers);
        done(null, payload);
      });
    });
  },
  { name: 'budget-headers', dependencies: ['auth', 'limits', 'budgets'] },
);

declare module 'fastify' {
  interface FastifyRequest {
    /** The caller's remaining budgets, being read (see budgetHeaders). */
    budgetHeaders: Promise<Record<string, string> | undefined> | undefined;
  }
}

export { BUDGET_HEADERS };
