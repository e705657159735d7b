// buildApp: orders the plugins and routes, and returns an app that is not listening.
import { randomUUID } from 'node:crypto';
import cors from '@fastify/cors';
import { streamRoutes } from './lifecycle/routes.js';
import { PredictionStreams } from './lifecycle/streams.js';
import rateLimit from '@fastify/rate-limit';
import underPressure from '@fastify/under-pressure';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyError, type FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import adminPlugin from './admin/plugin.js';
import { adminRoutes } from './admin/routes.js';
import auth from './access/auth.js';
import limits from './access/limits.js';
import tenantsPlugin from './access/tenants-plugin.js';
import type { TenantRegistry } from './access/tenants.js';
import { tokenRoutes } from './access/token-routes.js';
import { TokenSigner } from './access/tokens.js';
import budgetsPlugin, { BUDGET_HEADERS, budgetHeaders } from './budget/plugin.js';
import type { Config } from './config.js';
import { GatewayError } from './errors.js';
import { healthRoutes, metricsRoute } from './http/health.js';
import jsonBody from './http/json-body.js';
import openapi, { openapiRoute } from './http/openapi.js';
import problems, { makeClientErrorHandler, makeFailureHandler } from './http/problems.js';
import requestLog from './http/request-log.js';
import { createLogger } from './logger.js';
import dashboardStats from './dashboard/plugin.js';
import { dashboardHeaders, dashboardRoutes } from './dashboard/routes.js';
import { Metrics } from './metrics.js';
import { accountRoutes } from './account/routes.js';
import { fileRoutes, signedFileRoutes } from './files/routes.js';
import { FileUrlSigner } from './files/signed-urls.js';
import { modelRoutes } from './models/routes.js';
import { OutputLinkSigner } from './outputs/links.js';
import outputsPlugin from './outputs/plugin.js';
import { outputRoutes, signedOutputRoutes } from './outputs/routes.js';
import predictionsPlugin from './predictions/plugin.js';
import { predictionRoutes } from './predictions/routes.js';
import type { State } from './store/index.js';
import storePlugin from './store/plugin.js';
import './types.js';
import type { UpstreamClient } from './upstream/client.js';
import upstreamPlugin from './upstream/plugin.js';
import { usageRoutes } from './usage/routes.js';
import webhooksPlugin from './webhooks/plugin.js';
import { webhookReceiverRoutes, webhookRoutes } from './webhooks/routes.js';

export interface AppDeps {
  /** Injected clients are left open on close; the ones the app creates, it closes. */
  state?: State;
  tenants?: TenantRegistry;
  upstream?: UpstreamClient;
  /** A pino logger (tests pass one writing to a buffer). */
  logger?: FastifyBaseLogger;
  /** Pretty logs (server.ts sets it on a TTY). */
  pretty?: boolean;
  /** Re-read the tenants file (and UPSTREAMS_FILE) when it changes. */
  watchTenants?: boolean;
  /** Where UPSTREAMS_FILE's {"env": "NAME"} keys are looked up (server.ts: process.env; default: none). */
  env?: Record<string, string | undefined>;
  /** The clock budgets, their periods and the share windows follow (tests move it across a month's end). */
  now?: () => number;
}

const REQUEST_ID = /^[\w.:@-]{1,128}$/;

/**
 * What Replicate's new SDK (and any Stainless-generated JS client) sends on every request; a browser asks for them
 * in its preflight, and one not listed fails the call ("Failed to fetch"). The retry count and timeout are read by
 * src/predictions/client-retries.ts. Firefox lets the SDK set User-Agent, which then needs allowing too.
 */
const SDK_HEADERS = [
  'X-Stainless-Arch',
  'X-Stainless-Lang',
  'X-Stainless-OS',
  'X-Stainless-Package-Version',
  'X-Stainless-Retry-Count',
  'X-Stainless-Runtime',
  'X-Stainless-Runtime-Version',
  'X-Stainless-Timeout',
  'User-Agent',
];

export async function buildApp(config: Config, deps: AppDeps = {}): Promise<FastifyInstance> {
  const metrics = new Metrics();
  const fail = makeFailureHandler(() => metrics.storeErrors.inc());

  const app = Fastify({
    loggerInstance: deps.logger ?? createLogger(config.LOG_LEVEL, deps.pretty),
    bodyLimit: config.BODY_LIMIT_BYTES,
    trustProxy: config.TRUST_PROXY,
    requestIdHeader: false,
    genReqId: (req) => {
      const given = req.headers['x-request-id'];
      return typeof given === 'string' && REQUEST_ID.test(given) ? given : randomUUID();
    },
    // One access line per request is written in onResponse (src/http/request-log.ts).
    logController: new LogController({ disableRequestLogging: true }),
    return503OnClosing: true,
    keepAliveTimeout: 72_000,
    // A client has REQUEST_TIMEOUT_MS to send its whole request (a body that never comes is cut off); Node checks
    // open requests every connectionsCheckingInterval (30 s by default, too coarse for short timeouts).
    requestTimeout: config.REQUEST_TIMEOUT_MS,
    connectionTimeout: config.CONNECTION_TIMEOUT_MS,
    // Also given to http.createServer: Node reads requestTimeout at construction (setting it later has no effect).
    http: { requestTimeout: config.REQUEST_TIMEOUT_MS, connectionsCheckingInterval: Math.min(30_000, Math.max(250, Math.floor(config.REQUEST_TIMEOUT_MS / 4))) },
    clientErrorHandler: makeClientErrorHandler(() => app.log),
    // A URL the router cannot read (bad %-encoding, an over-long id) fails before any hook runs: answer it the same way.
    frameworkErrors: (err, request, reply) => fail(err as FastifyError, request, reply.header('x-request-id', request.id)),
  }) as unknown as FastifyInstance;

  // The shared clients, each a named plugin that closes what it opened.
  await app.register(fp(async (a) => void a.decorate('config', config), { name: 'config' }));
  await app.register(fp(async (a) => void a.decorate('metrics', metrics), { name: 'metrics' }));
  // Tracing first, so that a request's span covers every other hook; off, it costs nothing (not even the import).
  await app.register(
    fp(async (a) => void a.decorate('tracing', config.OTEL_EXPORTER_OTLP_ENDPOINT ? (await import('./tracing.js')).startTracing(a, config) : undefined), {
      name: 'tracing',
      dependencies: ['config'],
    }),
  );
  await app.register(storePlugin, { state: deps.state });
  await app.register(tenantsPlugin, { tenants: deps.tenants, watch: deps.watchTenants });
  await app.register(adminPlugin);
  await app.register(upstreamPlugin, { upstream: deps.upstream, env: deps.env, watch: deps.watchTenants });
  await app.register(budgetsPlugin, { now: deps.now });
  await app.register(predictionsPlugin);
  await app.register(webhooksPlugin);
  await app.register(outputsPlugin);

  // The HTTP edge: failures as problem JSON, the JSON body, request ids and the access log.
  await app.register(problems, { fail });
  // Before every route: it collects them for GET /gateway/v1/openapi.json.
  await app.register(openapi);
  await app.register(jsonBody);
  await app.register(requestLog);
  await app.register(dashboardStats);

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
    origin: (origin, cb) => cb(null, origin ? app.tenants.someAllowOrigin(origin) : false),
    // QUERY: the model search of Replicate's new SDK (`models.search`).
    methods: ['GET', 'POST', 'DELETE', 'QUERY', 'OPTIONS'],
    allowedHeaders: ['Authorization', 'Content-Type', 'Prefer', 'Idempotency-Key', 'Cancel-After', 'X-Request-Id', 'Last-Event-ID', ...SDK_HEADERS],
    exposedHeaders: ['x-ratelimit-limit', 'x-ratelimit-remaining', 'x-ratelimit-reset', 'retry-after', 'x-cache', 'x-request-id', 'idempotent-replayed', 'server-timing', ...BUDGET_HEADERS],
    maxAge: 600,
  });

  // Before every route and hook that may answer under /gateway/admin, the dashboard's headers.
  await app.register(dashboardHeaders);
  await app.register(healthRoutes);
  await app.register(openapiRoute);
  // Links the upstream fetches files from (FILES_DELIVERY=url): outside auth, the signature is the permission.
  const fileSecret = config.FILES_URL_SECRET ?? config.TOKEN_SIGNING_SECRET;
  const fileSigner = config.FILES_DELIVERY === 'url' && fileSecret ? new FileUrlSigner(fileSecret) : undefined;
  if (fileSigner) await app.register(signedFileRoutes, { signer: fileSigner });
  // Links to kept outputs for <img> and <video> tags: outside auth too, signed with the same secret.
  const outputSigner = app.outputs && fileSecret ? new OutputLinkSigner(fileSecret) : undefined;
  if (app.outputs && outputSigner) await app.register(signedOutputRoutes, { outputs: app.outputs, signer: outputSigner });
  // The upstream's call back (WEBHOOK_MODE=upstream): outside auth, a hint that is verified and never trusted.
  if (config.WEBHOOK_MODE === 'upstream') await app.register(webhookReceiverRoutes);

  const signer = config.TOKEN_SIGNING_SECRET ? new TokenSigner(config.TOKEN_SIGNING_SECRET) : undefined;
  await app.register(async (api) => {
    // Rate-limit windows live in the shared store (src/store/index.ts chooses which).
    await api.register(rateLimit, { global: false, ...(app.rateLimitStore ? { store: app.rateLimitStore } : {}) });
    await api.register(auth, { signer });
    await api.register(limits);
    await api.register(budgetHeaders);
    await api.register(metricsRoute);
    const { versions } = app.predictions;
    await api.register(predictionRoutes, { prefix: '/replicate/v1', fileSigner });
    await api.register(fileRoutes, { prefix: '/replicate/v1' });
    await api.register(modelRoutes, { prefix: '/replicate/v1', versions });
    await api.register(accountRoutes, { prefix: '/replicate/v1' });
    await api.register(tokenRoutes, { prefix: '/gateway/v1', signer });
    await api.register(usageRoutes, { prefix: '/gateway/v1' });
    if (app.outputs) await api.register(outputRoutes, { prefix: '/gateway/v1', outputs: app.outputs, signer: outputSigner });
    await api.register(webhookRoutes, { prefix: '/gateway/v1' });
    await api.register(streamRoutes, { prefix: '/gateway/v1', streams: new PredictionStreams({ store: app.store, pubsub: app.pubsub, config, log: app.log.child({ component: 'streams' }) }) });
    await api.register(adminRoutes, { prefix: '/gateway/v1/admin' });
    await api.register(dashboardRoutes, { prefix: '/gateway/admin', stats: app.opsStats });
  });

  return app;
}
