// buildApp: registers plugins and routes in order and returns an app that is not listening.
import { randomUUID } from 'node:crypto';
import cors from '@fastify/cors';
import rateLimit from '@fastify/rate-limit';
import underPressure from '@fastify/under-pressure';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Config } from './config.js';
import { GatewayError, storeUnavailable } from './errors.js';
import { gatewayRoutes } from './gateway/routes.js';
import { TokenSigner } from './gateway/tokens.js';
import { createLogger } from './logger.js';
import { Metrics } from './metrics.js';
import auth, { credentialOf, sameSecret } from './plugins/auth.js';
import limits from './plugins/limits.js';
import { predictionRoutes } from './predictions/routes.js';
import { createStore } from './store/index.js';
import { leasedRedisStore } from './store/rate-limit-store.js';
import { RedisStore } from './store/redis-store.js';
import type { Store } from './store/store.js';
import { TenantRegistry } from './tenants.js';
import './types.js';
import { UpstreamClient } from './upstream.js';

export interface AppDeps {
  /** Injected clients are left open on close; the ones buildApp creates, it closes. */
  store?: Store;
  tenants?: TenantRegistry;
  upstream?: UpstreamClient;
  /** A pino logger (tests pass one writing to a buffer). */
  logger?: FastifyBaseLogger;
  /** Pretty logs (server.ts sets it on a TTY). */
  pretty?: boolean;
  /** Re-read the tenants file when it changes. */
  watchTenants?: boolean;
}

const REQUEST_ID = /^[\w.:@-]{1,128}$/;

function problemReply(reply: FastifyReply, err: GatewayError, requestId: string): FastifyReply {
  for (const [k, v] of Object.entries(err.headers)) reply.header(k, v);
  return reply.code(err.statusCode).type('application/problem+json').send(err.toProblem(requestId));
}

/** Fastify's own errors (bad JSON, body too large, wrong content type) keep their 4xx status and safe message. */
function toGatewayError(err: FastifyError): GatewayError {
  if (err instanceof GatewayError) return err;
  const status = err.statusCode ?? 500;
  if (err.code === 'FST_ERR_CTP_BODY_TOO_LARGE') return new GatewayError('PAYLOAD_TOO_LARGE', 'the request body is larger than BODY_LIMIT_BYTES allows');
  if (err.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') return new GatewayError('UNSUPPORTED_MEDIA_TYPE', 'send the body as Content-Type: application/json');
  if (status >= 400 && status < 500) return new GatewayError('BAD_REQUEST', err.message, { status });
  return new GatewayError('INTERNAL', 'the gateway failed to handle this request', { cause: err });
}

export async function buildApp(config: Config, deps: AppDeps = {}): Promise<FastifyInstance> {
  const metrics = new Metrics();

  /** Every failure ends here: logged once, counted, answered as problem JSON. */
  function fail(err: FastifyError, request: FastifyRequest, reply: FastifyReply): FastifyReply {
    const e = toGatewayError(err);
    // Counted here, once per failed request, whichever part of the request path met the outage.
    if (e.code === 'STORE_UNAVAILABLE') metrics.storeErrors.inc();
    if (e.statusCode >= 500) request.log.error({ err, code: e.code }, e.message);
    else request.log.info({ code: e.code, status: e.statusCode }, e.message);
    return problemReply(reply, e, request.id);
  }

  const app = Fastify({
    loggerInstance: deps.logger ?? createLogger(config.LOG_LEVEL, deps.pretty),
    bodyLimit: config.BODY_LIMIT_BYTES,
    trustProxy: config.TRUST_PROXY,
    requestIdHeader: false,
    genReqId: (req) => {
      const given = req.headers['x-request-id'];
      return typeof given === 'string' && REQUEST_ID.test(given) ? given : randomUUID();
    },
    // One access line per request is written in onResponse, with the upstream latency and cache outcome.
    logController: new LogController({ disableRequestLogging: true }),
    return503OnClosing: true,
    keepAliveTimeout: 72_000,
    // A URL the router cannot read (bad %-encoding, an over-long id) fails before any hook runs: answer it the same way.
    frameworkErrors: (err, request, reply) => fail(err as FastifyError, request, reply.header('x-request-id', request.id)),
  }) as unknown as FastifyInstance;

  const owned: { close(): Promise<void> }[] = [];
  const tenants = deps.tenants ?? new TenantRegistry(config.TENANTS_FILE);
  let lastRedisEvent = '';
  let closing = false;
  const store =
    deps.store ??
    createStore(config, (event, detail) => {
      // ioredis reports every failed reconnect; log state changes only, and not our own disconnect at shutdown.
      if (event === lastRedisEvent || closing) return;
      lastRedisEvent = event;
      if (event === 'ready') app.log.info('redis connected');
      else if (event === 'error') app.log.warn({ reason: detail }, 'redis unavailable: requests that need state get 503 until it is back; reconnecting with backoff');
    });
  if (!deps.store) owned.push(store);
  if (store.kind === 'memory') app.log.warn('REDIS_URL is not set: state (ownership, cache, limits, idempotency) lives in this process only and is lost on restart');
  const upstream =
    deps.upstream ??
    new UpstreamClient({ baseUrl: config.UPSTREAM_BASE_URL, apiKey: config.UPSTREAM_API_KEY, timeoutMs: config.UPSTREAM_TIMEOUT_MS, retries: config.UPSTREAM_RETRIES });
  if (!deps.upstream) owned.push(upstream);
  app.decorate('gw', { config, store, tenants, upstream, metrics });
  app.decorateRequest('rawBody', undefined);
  app.decorateRequest('upstreamMs', undefined);
  app.decorateRequest('cacheResult', undefined);
  app.decorateRequest('createdPrediction', undefined);

  if (deps.watchTenants) {
    tenants.watch((r) => (r.ok ? app.log.info({ tenants: r.tenants }, 'tenants file reloaded') : app.log.error({ reason: r.error }, 'tenants file rejected; keeping the previous tenants')));
  }
  app.addHook('onClose', async () => {
    closing = true;
    tenants.unwatch();
    for (const c of owned) await c.close();
  });

  // The official client sends cancel as POST with Content-Type: application/json and an EMPTY body: accept it.
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (request, body, done) => {
    const text = body as string;
    if (text.trim() === '') return done(null, undefined);
    try {
      const parsed = JSON.parse(text);
      request.rawBody = text;
      done(null, parsed);
    } catch (err) {
      done(new GatewayError('BAD_REQUEST', `the request body is not valid JSON: ${(err as Error).message}`), undefined);
    }
  });

  app.setErrorHandler(fail);
  app.setNotFoundHandler((request) => {
    throw new GatewayError('NOT_FOUND', `no route for ${request.method} ${request.url.split('?')[0]}`);
  });

  app.addHook('onRequest', async (request, reply) => {
    reply.header('x-request-id', request.id);
  });
  // While draining, close each keep-alive connection after its response: an idle keep-alive socket would otherwise
  // hold the process open until SHUTDOWN_GRACE_MS runs out, and the exit would count as a failure.
  let draining = false;
  app.addHook('preClose', async () => {
    draining = true;
  });
  app.addHook('onSend', async (_request, reply) => {
    if (draining) reply.header('connection', 'close');
  });
  app.addHook('onResponse', async (request: FastifyRequest, reply: FastifyReply) => {
    const route = request.routeOptions.url ?? 'unmatched';
    const tenant = request.principal?.tenant.id ?? '';
    metrics.requests.inc({ route, status: reply.statusCode, tenant });
    // Without the access log, failures are still logged: the error handler writes a line for each.
    if (!config.ACCESS_LOG) return;
    request.log.info(
      {
        method: request.method,
        url: request.url,
        statusCode: reply.statusCode,
        responseTime: Math.round(reply.elapsedTime * 100) / 100,
        upstreamMs: request.upstreamMs === undefined ? undefined : Math.round(request.upstreamMs * 100) / 100,
        cache: request.cacheResult,
        prediction: request.createdPrediction,
      },
      'request completed',
    );
  });

  await app.register(underPressure, {
    maxEventLoopDelay: config.OVERLOAD_MAX_EVENT_LOOP_DELAY_MS || undefined,
    maxHeapUsedBytes: config.OVERLOAD_MAX_HEAP_BYTES || undefined,
    exposeStatusRoute: false,
    // Rejecting hands the error to the one error handler (problem JSON) and stops the request there.
    pressureHandler: async (_request, _reply, type) => {
      throw new GatewayError('OVERLOADED', `the gateway is overloaded (${type}); retry shortly`, { headers: { 'retry-after': '5' } });
    },
  });

  // Preflights are answered for any origin some tenant allows; each request's own origin is checked after auth.
  await app.register(cors, {
    origin: (origin, cb) => {
      if (!origin) return cb(null, false);
      cb(null, tenants.someAllowOrigin(origin));
    },
    methods: ['GET', 'POST', 'OPTIONS'],
    allowedHeaders: ['Authorization', 'Content-Type', 'Prefer', 'Idempotency-Key', 'Cancel-After', 'X-Request-Id'],
    exposedHeaders: ['x-ratelimit-limit', 'x-ratelimit-remaining', 'x-ratelimit-reset', 'retry-after', 'x-cache', 'x-request-id', 'idempotent-replayed'],
    maxAge: 600,
  });

  // Liveness stays 200 under load shedding: an overloaded process is alive, and restarting it would only shed more.
  app.get('/healthz', { config: { pressureHandler: () => undefined } }, async () => ({ status: 'ok' }));
  app.get('/readyz', async (request, reply) => {
    if (!store.isReady()) {
      return problemReply(reply, storeUnavailable(undefined, `the ${store.kind} store is not connected`), request.id);
    }
    return { status: 'ready', store: store.kind, upstream_breaker: upstream.breakerOpen ? 'open' : 'closed' };
  });
  app.get('/metrics', async (request, reply) => {
    if (config.METRICS_TOKEN && !sameSecret(credentialOf(request) ?? '', config.METRICS_TOKEN)) {
      throw new GatewayError('UNAUTHENTICATED', 'send "Authorization: Bearer <METRICS_TOKEN>"');
    }
    reply.type(metrics.registry.contentType);
    return metrics.registry.metrics();
  });

  const signer = config.TOKEN_SIGNING_SECRET ? new TokenSigner(config.TOKEN_SIGNING_SECRET) : undefined;
  await app.register(async (api) => {
    // Rate-limit windows live in the shared store: Redis (permits taken in leases, so replicas together never
    // admit more than the limit) or in-process.
    await api.register(rateLimit, {
      global: false,
      ...(store instanceof RedisStore ? { store: leasedRedisStore(store.client, 'rl:', config.RATE_LIMIT_LEASE_MAX) } : {}),
    });
    await api.register(auth, { signer });
    await api.register(limits);
    await api.register(predictionRoutes, { prefix: '/replicate/v1' });
    await api.register(gatewayRoutes, { prefix: '/gateway/v1', signer });
  });

  return app;
}
