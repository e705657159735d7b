// The operator's routes: liveness, readiness and Prometheus metrics.
import type { FastifyInstance } from 'fastify';
import { storeUnavailable } from '../errors.js';
import { problemReply } from './problems.js';

export async function healthRoutes(app: FastifyInstance): Promise<void> {
  const { store, upstream } = app;
  // Liveness stays 200 under load shedding: an overloaded process is alive, and restarting it would only shed more.
  app.get('/healthz', { config: { pressureHandler: () => undefined } }, async () => ({ status: 'ok' }));
  app.get('/readyz', async (request, reply) => {
    if (!store.isReady()) return problemReply(reply, storeUnavailable(undefined, `the ${store.kind} store is not connected`), request.id);
    // Not loaded yet (just booted, or the store was away at boot): try now rather than wait for the next check.
    if (!app.adminTenants.loaded) await app.adminTenants.refresh();
    if (!app.adminTenants.loaded) return problemReply(reply, storeUnavailable(undefined, 'the API-managed tenants and keys are not loaded yet'), request.id);
    // upstream_breaker: open only when every account's is (creates have nowhere to go); each account's in `upstreams`.
    return {
      status: 'ready',
      store: store.kind,
      upstream_breaker: upstream.breakerOpen ? 'open' : 'closed',
      tenant_breakers_open: upstream.openTenantBreakers(),
      upstreams: upstream.status().map((u) => ({ name: u.name, state: u.state, breaker: u.breaker })),
    };
  });
}

/** Prometheus text; registered where the auth plugin runs, which checks METRICS_TOKEN and limits failed guesses. */
export async function metricsRoute(app: FastifyInstance): Promise<void> {
  app.get('/metrics', { config: { auth: 'metrics' } }, async (_request, reply) => {
    reply.type(app.metrics.registry.contentType);
    return app.metrics.registry.metrics();
  });
}
