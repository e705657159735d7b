// Per-request bookkeeping: the x-request-id header, `Server-Timing` on proxied answers, one access line and one
// request count per request, and `connection: close` while draining.
import type { FastifyReply, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';

/**
 * The URL as logged: capability URLs are credentials (a signed file link's signature, the upstream's webhook
 * receiver token, a browser stream's `?token=`), and anyone who can read the logs must not be able to use them.
 */
const RECEIVER = '/gateway/v1/webhooks/upstream/';

export function loggableUrl(url: string): string {
  // Nearly every URL holds none: substring checks instead of regular expressions on every access line.
  if (!url.includes('signature=') && !url.includes('token=') && !url.startsWith(RECEIVER)) return url;
  return url
    .replace(/([?&](?:signature|token)=)[^&]*/g, '$1[redacted]')
    .replace(/^(\/gateway\/v1\/webhooks\/upstream\/)[^/?]+/, '$1[redacted]');
}

export default fp(
  async (app) => {
    const { config, metrics } = app;
    app.decorateRequest('upstreamMs', undefined);
    app.decorateRequest('cacheResult', undefined);
    app.decorateRequest('createdPrediction', undefined);
    app.decorateRequest('gatewayMs', undefined);

    // The hooks every request runs are callback-style and synchronous: an async hook costs a promise and a
    // microtask turn per request for nothing to await.
    app.addHook('onRequest', (request, reply, done) => {
      reply.header('x-request-id', request.id);
      done();
    });
    // While draining, close each keep-alive connection after its response: an idle keep-alive socket would otherwise
    // hold the process open until SHUTDOWN_GRACE_MS runs out, and the exit would count as a failure.
    let draining = false;
    app.addHook('preClose', async () => {
      draining = true;
    });
    app.addHook('onSend', (request, reply, payload, done) => {
      if (draining) reply.header('connection', 'close');
      // The gateway's own time and the upstream's (RFC Server-Timing), so a client sees the overhead without a
      // benchmark. Measured as the answer is handed over; the access line repeats the same two figures.
      if (request.url.startsWith('/replicate/v1')) reply.header('server-timing', serverTiming(request, reply.elapsedTime));
      done(null, payload);
    });
    app.addHook('onResponse', (request: FastifyRequest, reply: FastifyReply, done: () => void) => {
      const route = request.routeOptions.url ?? 'unmatched';
      const tenant = request.principal?.tenant.id ?? '';
      // /metrics and the dashboard (with ADMIN_API_KEY set) count from this one call.
      metrics.answered({
        tenant,
        route,
        method: request.method,
        status: reply.statusCode,
        create: request.routeOptions.config.create === true,
        requestId: request.id,
        upstreamMs: request.upstreamMs,
        cache: request.cacheResult,
        code: request.failure?.code,
        detail: request.failure?.detail,
      });
      // Without the access log, failures are still logged: the error handler writes a line for each.
      if (!config.ACCESS_LOG) return done();
      request.log.info(
        {
          method: request.method,
          url: loggableUrl(request.url),
          statusCode: reply.statusCode,
          responseTime: Math.round(reply.elapsedTime * 100) / 100,
          upstreamMs: request.upstreamMs === undefined ? undefined : round2(request.upstreamMs),
          gatewayMs: request.gatewayMs,
          cache: request.cacheResult,
          prediction: request.createdPrediction,
        },
        'request completed',
      );
      done();
    });
  },
  { name: 'request-log', dependencies: ['config', 'metrics'] },
);

const round2 = (ms: number) => Math.round(ms * 100) / 100;

/** `gateway;dur=…, upstream;dur=…, cache;desc=HIT`: gateway = total so far − upstream; no upstream entry without a call. */
export function serverTiming(request: FastifyRequest, totalMs: number): string {
  const up = request.upstreamMs;
  const gateway = round2(Math.max(0, totalMs - (up ?? 0)));
  request.gatewayMs = gateway;
  let value = `gateway;dur=${gateway}`;
  if (up !== undefined) value += `, upstream;dur=${round2(up)}`;
  if (request.cacheResult) value += `, cache;desc=${request.cacheResult}`;
  return value;
}
