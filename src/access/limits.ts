// Per-tenant rate limits on @fastify/rate-limit, with our leased Redis store (src/store/rate-limit-store.ts: replicas
// share one count) or its in-process LocalStore. Creates and per-IP browser traffic have their own limits.
import { normalizeIP } from '@fastify/rate-limit';
import type { FastifyReply, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import { GatewayError } from '../errors.js';

type Limiter = (req: FastifyRequest) => Promise<
  | { isAllowed: true; key: string }
  | { isAllowed: false; max: number; remaining: number; ttlInSeconds: number; isExceeded: boolean }
>;

export default fp(
  async (app) => {
    const { config, metrics } = app;

    const tenantOf = (req: FastifyRequest) => req.principal!.tenant;
    const make = (
      name: string,
      pick: (req: FastifyRequest) => { max: number; timeWindow: number } | undefined,
      key: (req: FastifyRequest) => string,
    ): Limiter =>
      app.createRateLimit({
        keyGenerator: (req) => `${name}:${key(req)}`,
        max: (req) => pick(req)?.max ?? config.DEFAULT_RATE_LIMIT_MAX,
        timeWindow: (req) => pick(req)?.timeWindow ?? config.DEFAULT_RATE_LIMIT_WINDOW,
      }) as Limiter;

    const limiters = {
      all: make('t', (r) => tenantOf(r).rateLimit, (r) => tenantOf(r).id),
      create: make('c', (r) => tenantOf(r).createRateLimit, (r) => tenantOf(r).id),
      // IPv6 clients are counted per /64, as one household or host can hold a whole /64.
      perIp: make('ip', (r) => tenantOf(r).rateLimit?.perIp, (r) => `${tenantOf(r).id}:${normalizeIP(r.ip)}`),
    };

    async function check(name: keyof typeof limiters, request: FastifyRequest, reply: FastifyReply, headers: boolean) {
      // A store failure arrives as the store's own 503 (see rate-limit-store.ts).
      const r = await limiters[name](request);
      if (r.isAllowed) return;
      // The reset and retry-after come from the bucket's real remaining TTL, not the whole window.
      const reset = String(Math.max(1, r.ttlInSeconds));
      if (headers || r.isExceeded) {
        reply.header('x-ratelimit-limit', r.max);
        reply.header('x-ratelimit-remaining', r.remaining);
        reply.header('x-ratelimit-reset', reset);
      }
      if (r.isExceeded) {
        const tenant = tenantOf(request).id;
        metrics.rateLimited.inc({ tenant, limit: name });
        const what = name === 'create' ? 'create' : name === 'perIp' ? 'per-client' : 'request';
        throw new GatewayError('RATE_LIMITED', `${what} rate limit of ${r.max} exceeded for tenant ${tenant}; retry in ${reset} s`, {
          headers: { 'retry-after': reset },
        });
      }
    }

    app.addHook('onRequest', async (request, reply) => {
      if (!request.principal) return;
      const tenant = tenantOf(request);
      await check('all', request, reply, true);
      if (tenant.rateLimit?.perIp) await check('perIp', request, reply, false);
      // Without a createRateLimit, creates count only towards the tenant's overall limit.
      if (tenant.createRateLimit && request.routeOptions.config.create) await check('create', request, reply, false);
    });
  },
  { name: 'limits', dependencies: ['@fastify/rate-limit', 'auth'] },
);
