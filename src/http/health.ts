// The routes outside the API: liveness, readiness and Prometheus metrics.
import type { FastifyInstance } from 'fastify';
import { credentialOf, sameSecret } from '../access/credentials.js';
import { GatewayError, storeUnavailable } from '../errors.js';
import { problemReply } from './problems.js';

export async function healthRoutes(app: FastifyInstance): Promise<void> {
  const { config, store, upstream, metrics } = app;
  // Liveness stays 200 under load shedding: an overloaded process is alive, and restarting it would only shed more.
  app.get('/healthz', { config: { pressureHandler: () => undefined } }, async () => ({ status: 'ok' }));
  app.get('/readyz', async (request, reply) => {
    if (!store.isReady()) return problemReply(reply, storeUnavailable(undefined, `the ${store.kind} store is not connected`), request.id);
    return { status: 'ready', store: store.kind, upstream_breaker: upstream.breakerOpen ? 'open' : 'closed' };
  });
  app.get('/metrics', async (request, reply) => {
    if (config.METRICS_TOKEN && !sameSecret(credentialOf(request) ?? '', config.METRICS_TOKEN)) {
      throw new GatewayError('UNAUTHENTICATED', 'send "Authorization: Bearer <METRICS_TOKEN>"');
    }
    reply.type(metrics.registry.contentType);
    return metrics.registry.metrics();
  });
}
