// Who is calling: a tenant key or token (Bearer or Token scheme) → request.principal; 401 before anything else.
import { normalizeIP } from '@fastify/rate-limit';
import type { FastifyReply, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import type { Logger } from 'pino';
import { keyIdOf } from '../admin/api-keys.js';
import { Sessions, sameOriginOnly } from '../dashboard/session.js';
import { GatewayError, storeUnavailable } from '../errors.js';
import { credentialOf, queryToken, sameSecret } from './credentials.js';
import type { Identity } from './tenants.js';
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

    const sessions = config.ADMIN_API_KEY ? new Sessions(app.kv, config.ADMIN_API_KEY) : undefined;
    const ownOrigins = new Set(config.PUBLIC_BASE_URL ? [new URL(config.PUBLIC_BASE_URL).origin] : []);

    /** Whether an unknown credential is an API key this process cannot judge yet (the API's keys not loaded). */
    const unloaded = (credential: string) => !app.adminTenants.loaded && keyIdOf(credential) !== undefined;

    /**
     * For an API key while this process has not loaded the API's keys yet (just booted, or the store was away): loads
     * them first, and answers 503 rather than 401 if that fails. Only then is the lookup asynchronous.
     */
    async function identifyAfterLoad(credential: string) {
      await app.adminTenants.refresh();
      if (!app.adminTenants.loaded) throw storeUnavailable(undefined, 'the API-managed keys are not loaded yet; retry shortly');
      return tenants.identify(credential);
    }
    const lookup = (credential: string) => tenants.identify(credential) ?? (unloaded(credential) ? identifyAfterLoad(credential) : undefined);

    /**
     * The admin API: ADMIN_API_KEY, a dashboard session (its CSRF token on every change), or on `teamAdmin` routes
     * an API key with role admin (the route checks that it is its own tenant's).
     */
    async function admitAdmin(request: FastifyRequest, credential: string | undefined): Promise<void> {
      if (!config.ADMIN_API_KEY) throw new GatewayError('FORBIDDEN', 'the admin API is disabled: set ADMIN_API_KEY');
      if (credential) {
        if (sameSecret(credential, config.ADMIN_API_KEY)) {
          request.adminActor = { type: 'admin_key' };
          return;
        }
        const found = lookup(credential);
        const who = found instanceof Promise ? await found : found;
        if (who?.role === 'admin' && who.keyId && request.routeOptions.config.teamAdmin) {
          request.adminActor = { type: 'team_admin', tenant: who.tenant.id, key_id: who.keyId };
          request.principal = principalOf(who);
          (request.log as unknown as Logger).setBindings({ tenant: who.tenant.id, keyId: who.keyId });
          return;
        }
        // A valid tenant key is a known caller without the right: 403, not 401.
        if (who) {
          throw new GatewayError('FORBIDDEN', who.role === 'admin' ? "a team admin key manages its own tenant's keys and reads its audit events only" : 'a tenant key cannot use the admin API');
        }
        return fail(request, 'the admin key is not valid');
      }
      const session = sessions && (await sessions.of(request));
      if (!session) return fail(request, 'send the admin key as "Authorization: Bearer <ADMIN_API_KEY>", or sign in to the dashboard');
      if (request.method !== 'GET' && request.method !== 'HEAD') {
        sameOriginOnly(request, ownOrigins);
        const token = request.headers['x-csrf-token'];
        if (typeof token !== 'string' || !sameSecret(token, session.csrf)) throw new GatewayError('FORBIDDEN', "a change through the dashboard session needs the session's CSRF token (x-csrf-token)");
      }
      request.adminActor = { type: 'dashboard_session', session: Sessions.label(session.sid) };
    }

    app.decorateRequest('principal', null);
    app.decorateRequest('adminActor', null);
    // The dashboard's login counts its wrong guesses in the same window as every other credential.
    app.decorate('authFailure', fail);

    // Usage per API key id: every authenticated request, and the creates that were made.
    // Synchronous (a callback hook): no promise per request.
    app.addHook('onResponse', (request, reply, done) => {
      const keyId = request.principal?.keyId;
      if (keyId && !request.adminActor) {
        app.keyUsage.count(keyId, request.routeOptions.config.create === true && reply.statusCode < 300);
        metrics.keyRequests.inc({ tenant: request.principal!.tenant.id, key_id: keyId });
      }
      done();
    });

    /** The caller is known: bound to the request and to its log lines, and its page's origin checked. */
    function admit(request: FastifyRequest, principal: NonNullable<FastifyRequest['principal']>): void {
      request.principal = principal;
      // In place rather than a new child logger: every later line of this request names the tenant, at less cost.
      (request.log as unknown as Logger).setBindings(principal.keyId ? { tenant: principal.tenant.id, keyId: principal.keyId } : { tenant: principal.tenant.id });
      // A browser presents its page's origin: it must be one the tenant allows. Servers send no Origin.
      const origin = request.headers.origin;
      if (origin !== undefined) {
        const allowed = principal.tenant.allowedOrigins;
        if (!allowed.includes('*') && !allowed.includes(origin.toLowerCase())) {
          throw new GatewayError('FORBIDDEN', `origin ${origin.slice(0, 200)} is not allowed for this tenant`);
        }
      }
    }

    const principalOf = (who: Identity) => (who.keyId ? { tenant: who.tenant, keyId: who.keyId, role: who.role } : { tenant: who.tenant });

    /**
     * Who is calling. The usual call, a key this process knows, is admitted synchronously: no promise and no
     * microtask turn. Tokens, admin routes and keys not loaded yet return a promise.
     */
    function authenticate(request: FastifyRequest): void | Promise<void> {
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
      if (mode === 'admin') return admitAdmin(request, credential);
      if (!credential) {
        return fail(request, 'send your gateway key as "Authorization: Bearer <key>"');
      }
      const found = lookup(credential);
      return found instanceof Promise ? found.then((who) => admitCaller(request, credential, who)) : admitCaller(request, credential, found);
    }

    /** A tenant route's caller: a known key, else a token, else a 401. */
    function admitCaller(request: FastifyRequest, credential: string, who: Identity | undefined): void | Promise<void> {
      if (who) return admit(request, principalOf(who));
      if (signer && looksLikeJwt(credential)) return admitToken(request, credential);
      return fail(request, 'the key is not valid');
    }

    async function admitToken(request: FastifyRequest, credential: string): Promise<void> {
      let verified;
      try {
        verified = await signer!.verify(credential);
      } catch (err) {
        return fail(request, (err as Error).message);
      }
      const t = tenants.get(verified.tenantId);
      if (!t) return fail(request, 'the token names a tenant that no longer exists');
      // A tenant deleted and created again through the API: the old tenant's tokens stay dead.
      const gen = tenants.generation(t.id);
      if (gen !== undefined && verified.grant.gen !== gen) return fail(request, 'the token was issued before its tenant was (re)created');
      if (request.routeOptions.config.keyOnly) throw new GatewayError('FORBIDDEN', 'a token cannot be used here; use a tenant key');
      const only = verified.grant.predictions;
      if (only) {
        const id = (request.params as { id?: unknown } | undefined)?.id;
        if (!request.routeOptions.config.predictionScoped || typeof id !== 'string' || !only.includes(id)) {
          throw new GatewayError('FORBIDDEN', 'this token is for reading, canceling and watching its own predictions only');
        }
      }
      admit(request, { tenant: t, token: verified.grant });
    }

    // A callback hook, so that the synchronous path stays synchronous.
    app.addHook('onRequest', (request: FastifyRequest, _reply: FastifyReply, done: (err?: Error) => void) => {
      let pending: void | Promise<void>;
      try {
        pending = authenticate(request);
      } catch (err) {
        return done(err as Error);
      }
      if (pending) pending.then(() => done(), done);
      else done();
    });
  },
  { name: 'auth', dependencies: ['@fastify/rate-limit', 'admin'] },
);
