// The gateway's own API under /gateway/v1: short-lived tokens for browsers, and usage for chargeback.
import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import { GatewayError } from '../errors.js';
import { parse } from '../predictions/schemas.js';
import { ModelPatternSchema } from '../tenants.js';
import type { UsageDay } from '../store/store.js';
import { patternWithin } from './models.js';
import { TOKEN_DEFAULT_TTL_SECONDS, TOKEN_MAX_TTL_SECONDS, type TokenSigner } from './tokens.js';

// Strict: a misspelt field ("ttl") must not quietly give a token with the defaults.
const TokenRequestSchema = z.strictObject({
  ttl_seconds: z.number({ error: 'must be a number' }).int('must be a whole number').min(30).max(TOKEN_MAX_TTL_SECONDS).optional(),
  models: z.array(ModelPatternSchema).min(1).optional(),
  max_creates: z.number({ error: 'must be a number' }).int('must be a whole number').min(1).max(1_000_000).optional(),
});

// zod's ISO date also refuses days that do not exist (2026-02-30).
const UsageQuerySchema = z.object({
  from: z.iso.date('must be a date as YYYY-MM-DD').optional(),
  to: z.iso.date('must be a date as YYYY-MM-DD').optional(),
});
const MAX_DAYS = 92;

/** The UTC days from..to inclusive; default the last 7 days. */
function daysOf(query: unknown): string[] {
  const q = parse(UsageQuerySchema, query, 'query');
  const to = q.to ? new Date(`${q.to}T00:00:00Z`) : new Date(new Date().toISOString().slice(0, 10) + 'T00:00:00Z');
  const from = q.from ? new Date(`${q.from}T00:00:00Z`) : new Date(to.getTime() - 6 * 86400_000);
  if (from > to) {
    throw new GatewayError('VALIDATION', 'query from must be on or before to');
  }
  const days: string[] = [];
  for (let d = from; d <= to; d = new Date(d.getTime() + 86400_000)) {
    days.push(d.toISOString().slice(0, 10));
    if (days.length > MAX_DAYS) throw new GatewayError('VALIDATION', `query range is longer than ${MAX_DAYS} days`);
  }
  return days;
}

function withTotals(days: Record<string, UsageDay>) {
  const totals: UsageDay = {};
  for (const day of Object.values(days)) {
    for (const [k, v] of Object.entries(day)) totals[k] = (totals[k] ?? 0) + v;
  }
  if (totals.predict_time !== undefined) totals.predict_time = Math.round(totals.predict_time * 1000) / 1000;
  return { days, totals };
}

export async function gatewayRoutes(app: FastifyInstance, opts: { signer?: TokenSigner }): Promise<void> {
  const { store, tenants } = app.gw;

  app.post('/tokens', { config: { keyOnly: true } }, async (request, reply) => {
    if (!opts.signer) throw new GatewayError('NOT_IMPLEMENTED', 'tokens are disabled: the operator has not set TOKEN_SIGNING_SECRET');
    // An empty body means the defaults.
    const body = parse(TokenRequestSchema, request.body ?? {}, 'body');
    const tenant = request.principal!.tenant;
    for (const m of body.models ?? []) {
      if (!patternWithin(m, tenant.models)) throw new GatewayError('FORBIDDEN', `model ${m} is not allowed for tenant ${tenant.id}`);
    }
    const { token, expiresAt } = await opts.signer.sign(tenant.id, {
      ttlSeconds: body.ttl_seconds ?? TOKEN_DEFAULT_TTL_SECONDS,
      models: body.models,
      maxCreates: body.max_creates,
    });
    reply.header('cache-control', 'no-store');
    return reply.code(201).send({ token, expires_at: expiresAt.toISOString(), tenant: tenant.id, models: body.models ?? null, max_creates: body.max_creates ?? null });
  });

  // Usage is the tenant's chargeback figure, for its servers: a browser token cannot read it.
  app.get('/usage', { config: { keyOnly: true } }, async (request) => {
    const tenant = request.principal!.tenant.id;
    return { tenant, ...withTotals(await store.usageGet(tenant, daysOf(request.query))) };
  });

  app.get('/admin/usage', { config: { auth: 'admin' } }, async (request) => {
    const days = daysOf(request.query);
    // All tenants at once: Redis gets them in one pipeline rather than one round trip after another.
    const all = tenants.all();
    const usage = await Promise.all(all.map((t) => store.usageGet(t.id, days)));
    return { from: days[0], to: days.at(-1), tenants: Object.fromEntries(all.map((t, i) => [t.id, withTotals(usage[i]!)])) };
  });
}
