// The one failure path: every error (ours, Fastify's, the router's) is logged once, counted, and answered as
// problem JSON {type, title, status, detail} with the request id. Messages of 5xx are never a stack trace.
import { randomUUID } from 'node:crypto';
import { STATUS_CODES } from 'node:http';
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import { GatewayError } from '../errors.js';

export function problemReply(reply: FastifyReply, err: GatewayError, requestId: string): FastifyReply {
  for (const [k, v] of Object.entries(err.headers)) reply.header(k, v);
  return reply.code(err.statusCode).type('application/problem+json').send(err.toProblem(requestId));
}

/** Fastify's own errors (bad JSON, body too large, wrong content type) keep their 4xx status and safe message. */
export function toGatewayError(err: FastifyError, request?: FastifyRequest): GatewayError {
  if (err instanceof GatewayError) return err;
  const status = err.statusCode ?? 500;
  if (err.code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
    // A route with a smaller limit of its own (the dashboard's sign-in) says so, rather than naming the variable.
    const own = request?.routeOptions.bodyLimit;
    const limit = own !== undefined && own !== request?.server.initialConfig.bodyLimit ? `this route's limit of ${own} bytes` : 'BODY_LIMIT_BYTES';
    return new GatewayError('PAYLOAD_TOO_LARGE', `the request body is larger than ${limit} allows`);
  }
  if (err.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') return new GatewayError('UNSUPPORTED_MEDIA_TYPE', 'send the body as Content-Type: application/json');
  if (status >= 400 && status < 500) return new GatewayError('BAD_REQUEST', err.message, { status });
  return new GatewayError('INTERNAL', 'the gateway failed to handle this request', { cause: err });
}

/** The handler itself, shared with Fastify's `frameworkErrors` (which runs before any plugin). */
export function makeFailureHandler(onStoreError: () => void) {
  return function fail(err: FastifyError, request: FastifyRequest, reply: FastifyReply): FastifyReply {
    const e = toGatewayError(err, request);
    // Counted here, once per failed request, whichever part of the request path met the outage.
    if (e.code === 'STORE_UNAVAILABLE') onStoreError();
    if (e.statusCode >= 500) {
      request.log.error({ err, code: e.code }, e.message);
      // For the dashboard's recent failures: an error that is not the gateway's own may hold internals, so its code only.
      request.failure = { code: e.code, detail: e === err ? e.message : undefined };
    }
    else request.log.info({ code: e.code, status: e.statusCode }, e.message);
    return problemReply(reply, e, request.id);
  };
}

export default fp<{ fail: ReturnType<typeof makeFailureHandler> }>(
  async (app, opts) => {
    app.decorateRequest('failure', undefined);
    app.setErrorHandler(opts.fail);
    app.setNotFoundHandler((request) => {
      throw new GatewayError('NOT_FOUND', `no route for ${request.method} ${request.url.split('?')[0]}`);
    });
  },
  { name: 'problems' },
);

const CLIENT_ERRORS: Record<string, { code: 'BAD_REQUEST' | 'PAYLOAD_TOO_LARGE'; status: number; detail: string }> = {
  HPE_HEADER_OVERFLOW: { code: 'BAD_REQUEST', status: 431, detail: 'the request headers are too large' },
  ERR_HTTP_REQUEST_TIMEOUT: { code: 'BAD_REQUEST', status: 408, detail: 'the request was not received within REQUEST_TIMEOUT_MS' },
};

/**
 * Node's `clientError`: requests the HTTP parser refuses (a malformed request line, headers too large, a body that
 * never arrives) never reach Fastify's handlers. Answer them as problem JSON with a request id too, and log them.
 */
export function makeClientErrorHandler(log: () => { info(obj: object, msg: string): void }) {
  return (err: NodeJS.ErrnoException & { rawPacket?: unknown }, socket: import('node:net').Socket): void => {
    if (err.code === 'ECONNRESET' || !socket.writable) {
      socket.destroy();
      return;
    }
    const known = CLIENT_ERRORS[err.code ?? ''] ?? { code: 'BAD_REQUEST' as const, status: 400, detail: 'the request could not be parsed as HTTP' };
    const requestId = randomUUID();
    const body = JSON.stringify(new GatewayError(known.code, known.detail, { status: known.status }).toProblem(requestId));
    log().info({ code: err.code, status: known.status, reqId: requestId }, known.detail);
    socket.end(
      `HTTP/1.1 ${known.status} ${STATUS_CODES[known.status] ?? 'Bad Request'}\r\n` +
        `content-type: application/problem+json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nx-request-id: ${requestId}\r\nconnection: close\r\n\r\n${body}`,
    );
  };
}
