// POST /gateway/v1/tokens: a tenant's server mints a short-lived, narrowed token for a browser.
import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import { GatewayError } from '../errors.js';
import { parse } from '../http/validate.js';
import { patternWithin } from './allowlist.js';
import type { TokenGrant } from '../types.js';
import { PREDICTION_ID } from '../predictions/schemas.js';
import { ModelPatternSchema, type Tenant } from './tenants.js';
import { TOKEN_DEFAULT_TTL_SECONDS, TOKEN_MAX_TTL_SECONDS, type TokenSigner } from './tokens.js';

// Strict: a misspelt field ("ttl") must not quietly give a token with the defaults.
const TokenRequestSchema = z.strictObject({
  ttl_seconds: z.number({ error: 'must be a number' }).int('must be a whole number').min(30).max(TOKEN_MAX_TTL_SECONDS).optional(),
  models: z.array(ModelPatternSchema).min(1).optional(),
  max_creates: z.number({ error: 'must be a number' }).int('must be a whole number').min(1).max(1_000_000).optional(),
  // A token for these predictions only: their GET, cancel and event stream, nothing else (a browser watching a job).
  predictions: z.array(z.string().regex(PREDICTION_ID, 'may hold only letters, digits, "_" and "-"')).min(1).max(100).optional(),
  // The token's own budget for its lifetime, spent and settled like the tenant's, which it stays inside of.
  budget: z
    .strictObject({
      creates: z.number({ error: 'must be a number' }).int('must be a whole number').min(1).max(1_000_000).optional(),
      predict_time_seconds: z.number({ error: 'must be a number' }).positive('must be above 0').optional(),
      cost: z.number({ error: 'must be a number' }).positive('must be above 0').optional(),
    })
    .optional(),
});

/** The token's budget: what it asks for, within the tenant's `tokenBudget`, which is also the default. */
function tokenBudget(tenant: Tenant, asked: z.output<typeof TokenRequestSchema>['budget']): TokenGrant['budget'] {
  const ceiling = tenant.tokenBudget ?? {};
  const want = { creates: asked?.creates, predictTimeSeconds: asked?.predict_time_seconds, cost: asked?.cost };
  const out: NonNullable<TokenGrant['budget']> = {};
  for (const [k, name] of [['creates', 'creates'], ['predictTimeSeconds', 'predict_time_seconds'], ['cost', 'cost']] as const) {
    const max = ceiling[k];
    if (want[k] !== undefined && max !== undefined && want[k] > max) {
      throw new GatewayError('FORBIDDEN', `budget.${name} ${want[k]} is above tenant ${tenant.id}'s tokenBudget.${k} of ${max}`);
    }
    const v = want[k] ?? max;
    if (v !== undefined) out[k] = v;
  }
  return Object.keys(out).length ? out : undefined;
}

export async function tokenRoutes(app: FastifyInstance, opts: { signer?: TokenSigner }): Promise<void> {
  app.post('/tokens', { config: { keyOnly: true } }, async (request, reply) => {
    if (!opts.signer) throw new GatewayError('NOT_IMPLEMENTED', 'tokens are disabled: the operator has not set TOKEN_SIGNING_SECRET');
    // An empty body means the defaults.
    const body = parse(TokenRequestSchema, request.body ?? {}, 'body');
    const tenant = request.principal!.tenant;
    for (const m of body.models ?? []) {
      if (!patternWithin(m, tenant.models)) throw new GatewayError('FORBIDDEN', `model ${m} is not allowed for tenant ${tenant.id}`);
    }
    // Without a price table every create costs 0: a cost budget would be accepted and never reached.
    if (body.budget?.cost !== undefined && !app.budgets.prices) {
      throw new GatewayError('VALIDATION', 'budget.cost needs a price table to count money, and the operator has not set PRICES_FILE');
    }
    const budget = tokenBudget(tenant, body.budget);
    // Only the tenant's own predictions: someone else's looks exactly like a missing one.
    for (const id of body.predictions ?? []) {
      if ((await app.store.lookup(id)).owner !== tenant.id) throw new GatewayError('NOT_FOUND', `prediction ${id} was not found`);
    }
    if (body.predictions && (body.models || body.max_creates !== undefined || body.budget)) {
      throw new GatewayError('VALIDATION', 'a token for predictions cannot create: leave out models, max_creates and budget');
    }
    const { token, expiresAt } = await opts.signer.sign(tenant.id, {
      ttlSeconds: body.ttl_seconds ?? TOKEN_DEFAULT_TTL_SECONDS,
      models: body.models,
      maxCreates: body.max_creates,
      budget: body.predictions ? undefined : budget,
      predictions: body.predictions,
      gen: app.tenants.generation(tenant.id),
    });
    reply.header('cache-control', 'no-store');
    return reply.code(201).send({
      token,
      expires_at: expiresAt.toISOString(),
      tenant: tenant.id,
      models: body.models ?? null,
      max_creates: body.max_creates ?? null,
      budget: budget && !body.predictions ? { creates: budget.creates, predict_time_seconds: budget.predictTimeSeconds, cost: budget.cost } : null,
      predictions: body.predictions ?? null,
    });
  });
}
