// Usage for chargeback under /gateway/v1: a tenant's own (/usage) and every tenant's (/admin/usage).
import type { FastifyInstance } from 'fastify';
import type { Tenant } from '../access/tenants.js';
import { z } from 'zod';
import { GatewayError } from '../errors.js';
import { parse } from '../http/validate.js';
import type { UsageDay } from '../store/store.js';
import { daysBefore, daysBetween, today, totalsOf } from './day.js';

// zod's ISO date also refuses days that do not exist (2026-02-30).
const UsageQuerySchema = z.object({
  from: z.iso.date('must be a date as YYYY-MM-DD').optional(),
  to: z.iso.date('must be a date as YYYY-MM-DD').optional(),
});
const MAX_DAYS = 92;

/** The UTC days from..to inclusive; default the last 7 days. */
function daysOf(query: unknown): string[] {
  const q = parse(UsageQuerySchema, query, 'query');
  const to = q.to ?? today();
  const from = q.from ?? daysBefore(to, 6);
  if (from > to) throw new GatewayError('VALIDATION', 'query from must be on or before to');
  const days = daysBetween(from, to, MAX_DAYS);
  if (!days) throw new GatewayError('VALIDATION', `query range is longer than ${MAX_DAYS} days`);
  return days;
}

function withTotals(days: Record<string, UsageDay>) {
  return { days, totals: totalsOf(days) };
}

export async function usageRoutes(app: FastifyInstance): Promise<void> {
  const { store, tenants, budgets } = app;

  /** The bytes of kept outputs the tenant holds now (and its quota), while outputs are kept (src/outputs/). */
  async function keptOutputs(tenant: Tenant): Promise<{ outputs?: { bytes: number; max_bytes: number | null } }> {
    if (!app.outputs) return {};
    return { outputs: { bytes: await app.outputs.bytes(tenant.id), max_bytes: tenant.outputsMaxBytes ?? null } };
  }

  // Usage is the tenant's chargeback figure, for its servers: a browser token cannot read it.
  app.get('/usage', { config: { keyOnly: true } }, async (request) => {
    const tenant = request.principal!.tenant;
    const [usage, budget, outputs] = await Promise.all([store.usageGet(tenant.id, daysOf(request.query)), budgets.status(tenant), keptOutputs(tenant)]);
    // budget (this period's max, spent, reserved, remaining) and running appear for tenants that have them.
    return { tenant: tenant.id, ...withTotals(usage), ...budget, ...outputs };
  });

  app.get('/admin/usage', { config: { auth: 'admin' } }, async (request) => {
    const days = daysOf(request.query);
    // All tenants at once: Redis gets them in one pipeline rather than one round trip after another.
    const all = tenants.all();
    const [usage, status, kept] = await Promise.all([
      Promise.all(all.map((t) => store.usageGet(t.id, days))),
      Promise.all(all.map((t) => budgets.status(t))),
      Promise.all(all.map((t) => keptOutputs(t))),
    ]);
    return { from: days[0], to: days.at(-1), tenants: Object.fromEntries(all.map((t, i) => [t.id, { ...withTotals(usage[i]!), ...status[i], ...kept[i] }])) };
  });
}
