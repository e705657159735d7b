// Who is calling: a tenant key or token (Bearer or Token scheme) → request.principal; 401 before anything else.
import { normalizeIP } from '@fastify/rate-limit';
import type { FastifyReply, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import type { Logger } from 'pino';
import { GatewayError } from '../errors.js';
import { credentialOf, queryToken, sameSecret } from './credentials.js';
import { type TokenSigner, looksLikeJwt } from './tokens.js';

const AUTH_FAILURE_WINDOW_MS = 60_000;

type FailureLimiter = (req: FastifyRequest) => Promise<{ isAllowed: true } | { isAllowed: false; ttlInSeconds: number; isExceeded: boolean }>;

export interface AuthOptions {
  signer?: TokenSigner;
}

export default fp<AuthOptions>(
  async (app, opts) => {
    const { config, tenants, metrics } = app;
    const signer = opts.signer;

    // Failures are counted by the same atomic store as the rate limits, so the 429's retry-after is what is really
    // left of the window, and replicas count together.
    const failureLimiter = app.createRateLimit({
      // Per address; IPv6 per /64, which one client can hold whole.
      keyGenerator: (req) => `authfail:${normalizeIP(req.ip)}`,
      max: config.AUTH_FAILURE_LIMIT,
      timeWindow: AUTH_FAILURE_WINDOW_MS,
    }) as FailureLimiter;

    /** This failure's place in the IP's window: whether it is past the limit, and when the window ends. */
    async function countFailure(request: FastifyRequest): Promise<{ exceeded: boolean; retryAfter: number }> {
      const r = await failureLimiter(request);
      return r.isAllowed ? { exceeded: false, retryAfter: 0 } : { exceeded: r.isExceeded, retryAfter: Math.max(1, r.ttlInSeconds) };
    }

    /** Counts a failed attempt from this IP; past the limit the answer is 429, to stop key guessing. */
    async function fail(request: FastifyRequest, detail: string): Promise<never> {
      const { exceeded, retryAfter } = await countFailure(request);
      if (exceeded) {
        metrics.rateLimited.inc({ tenant: '', limit: 'auth-failures' });
        throw new GatewayError('RATE_LIMITED', `too many failed authentication attempts from this address; retry in ${retryAfter} s`, {
          headers: { 'retry-after': String(retryAfter) },
        });
      }
      throw new GatewayError('UNAUTHENTICATED', detail);
    }

    app.decorateRequest('principal', null);
    // The dashboard's login counts its wrong guesses in the same window as every other credential.
    app.decorate('authFailure', fail);

    app.addHook('onRequest', async (request: FastifyRequest, _reply: FastifyReply) => {
      const mode = request.routeOptions.config.auth ?? 'tenant';
      // The dashboard checks its own session cookie or the admin key (src/dashboard/routes.ts).
      if (mode === 'session') return;
      // EventSource cannot send headers: a route that streams to browsers also takes the token as `?token=`.
      const credential = credentialOf(request) ?? (request.routeOptions.config.queryToken ? queryToken(request) : undefined);
      if (mode === 'metrics') {
        if (!config.METRICS_TOKEN) return;
        if (!credential || !sameSecret(credential, config.METRICS_TOKEN)) return fail(request, 'send "Authorization: Bearer <METRICS_TOKEN>"');
        return;
      }
      if (mode === 'admin') {
        if (!config.ADMIN_API_KEY) throw new GatewayError('FORBIDDEN', 'the admin API is disabled: set ADMIN_API_KEY');
        if (!credential) return fail(request, 'send the admin key as "Authorization: Bearer <ADMIN_API_KEY>"');
        if (!sameSecret(credential, config.ADMIN_API_KEY)) {
          // A valid tenant key is a known caller without the right: 403, not 401.
          if (tenants.lookup(credential)) throw new GatewayError('FORBIDDEN', 'a tenant key cannot use the admin API');
          return fail(request, 'the admin key is not valid');
        }
        return;
      }
      if (!credential) {
        return fail(request, 'send your gateway key as "Authorization: Bearer <key>"');
      }
      const tenant = tenants.lookup(credential);
      if (tenant) {
        request.principal = { tenant };
      } else if (signer && looksLikeJwt(credential)) {
        let verified;
        try {
          verified = await signer.verify(credential);
        } catch (err) {
          return fail(request, (err as Error).message);
        }
        const t = tenants.get(verified.tenantId);
        if (!t) return fail(request, 'the token names a tenant that no longer exists');
        if (request.routeOptions.config.keyOnly) throw new GatewayError('FORBIDDEN', 'a token cannot be used here; use a tenant key');
        const only = verified.grant.predictions;
        if (only) {
          const id = (request.params as { id?: unknown } | undefined)?.id;
          if (!request.routeOptions.config.predictionScoped || typeof id !== 'string' || !only.includes(id)) {
            throw new GatewayError('FORBIDDEN', 'this token is for reading, canceling and watching its own predictions only');
          }
        }
        request.principal = { tenant: t, token: verified.grant };
      } else {
        return fail(request, 'the key is not valid');
      }
      // In place rather than a new child logger: every later line of this request names the tenant, at less cost.
      (request.log as unknown as Logger).setBindings({ tenant: request.principal.tenant.id });

      // A browser presents its page's origin: it must be one the tenant allows. Servers send no Origin.
      const origin = request.headers.origin;
      if (origin !== undefined) {
        const allowed = request.principal.tenant.allowedOrigins;
        if (!allowed.includes('*') && !allowed.includes(origin.toLowerCase())) {
          throw new GatewayError('FORBIDDEN', `origin ${origin.slice(0, 200)} is not allowed for this tenant`);
        }
      }
    });
  },
  { name: 'auth', dependencies: ['@fastify/rate-limit'] },
);
