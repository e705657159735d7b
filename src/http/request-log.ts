// Per-request bookkeeping: the x-request-id header, one access line and one request count per request, and
// `connection: close` while draining.
import type { FastifyReply, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';

export default fp(
  async (app) => {
    const { config, metrics } = app;
    app.decorateRequest('upstreamMs', undefined);
    app.decorateRequest('cacheResult', undefined);
    app.decorateRequest('createdPrediction', undefined);

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
  },
  { name: 'request-log', dependencies: ['config', 'metrics'] },
);
