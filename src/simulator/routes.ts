// The HTTP surface: body parsing, errors, and the prediction routes (create, get, cancel, list, stream).
import { Readable } from 'node:stream';
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { isTerminalStatus, type Prediction, type PredictionStore } from './predictions.js';
import { ModelCatalog, registerModelRoutes } from './models.js';
import { NOT_FOUND, ROUTES, isPlainObject, newApiError, parsePreferWait, problem } from './protocol.js';
import type { Billing } from './billing.js';
import type { TimerSet } from './timers.js';

/** A file the output CDN stand-in serves under any prediction's folder (by name). */
export interface DeliveryFile {
  contentType: string;
  bytes: Buffer;
}

export interface RouteDeps {
  store: PredictionStore;
  /** Files served by name on the output CDN stand-in, besides its default image. */
  deliveryFiles?: Record<string, DeliveryFile>;
  /** Told the path of every request to the output CDN stand-in (tests count the copies). */
  onDelivery?: (path: string) => void;
  timers: TimerSet;
  /** True once close() began: held creates are then dropped rather than answered. */
  isClosed: () => boolean;
  /** The account's balance, when the simulator stands for a reseller account. */
  billing?: Billing;
}

/** `hold_ms` of a create's input: how long its answer is held back, like a slow upstream for that one request. */
function holdMsOf(input: Record<string, unknown>): number {
  const h = input.hold_ms;
  return typeof h === 'number' && Number.isFinite(h) && h > 0 ? h : 0;
}

function modelError(model: string, reply: FastifyReply): FastifyReply | undefined {
  if (model === 'sim/quota-exceeded') {
    return reply.code(403).send(newApiError('user quota is not enough', 'insufficient_user_quota'));
  }
  if (model === 'sim/no-channel') {
    return reply.code(503).send(newApiError(`no available channel for model ${model}`, null));
  }
  return undefined;
}

function invalidInput(input: unknown): string {
  return '- input: Invalid type. Expected: object, given: ' + (input === undefined ? 'null' : Array.isArray(input) ? 'array' : typeof input);
}

export function registerRoutes(app: FastifyInstance, deps: RouteDeps): void {
  const { store, timers, isClosed, deliveryFiles = {} } = deps;
  const catalog = new ModelCatalog();
  registerModelRoutes(app, catalog);

  async function create(
    request: FastifyRequest,
    reply: FastifyReply,
    model: string,
    version: string,
    body: Record<string, unknown>,
  ): Promise<FastifyReply> {
    const errorReply = modelError(model, reply);
    if (errorReply !== undefined) return errorReply;
    const input = body.input;
    if (!isPlainObject(input)) return reply.code(422).send(problem(422, 'Invalid input', invalidInput(input)));
    if (deps.billing && !deps.billing.spend()) return reply.code(403).send(newApiError('user quota is not enough', 'insufficient_user_quota'));
    const holdMs = holdMsOf(input);
    const holdUntil = holdMs > 0 ? Date.now() + holdMs : 0;
    const p = store.create(model, version, body, input);
    const res = reply.raw;
    const wait = parsePreferWait(request.headers.prefer);
    let held = false;
    if (wait !== undefined && !isTerminalStatus(p.status)) {
      await store.waitForTerminal(p, wait, res, isClosed);
      held = true;
    }
    // hold_ms runs from arrival, alongside any Prefer: wait: the answer leaves when both are over.
    if (holdUntil > 0 && !isClosed() && !res.destroyed) {
      await timers.pause(holdUntil - Date.now(), res);
      store.refresh(p);
      held = true;
    }
    if (held) {
      // a closing simulator drops held creates like a dying upstream would
      if (isClosed()) {
        reply.hijack();
        res.destroy();
        return reply;
      }
      // the client left while held: nobody to answer
      if (res.destroyed) {
        reply.hijack();
        return reply;
      }
    }
    return reply.code(201).send(p);
  }

  // The official client cancels with `Content-Type: application/json` and an empty body.
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (_req, body, done) => {
    const text = body as string;
    if (text.length === 0 || text.trim().length === 0) {
      done(null, undefined);
      return;
    }
    try {
      done(null, JSON.parse(text));
    } catch {
      const err = new Error('Request body is not valid JSON') as FastifyError;
      err.statusCode = 400;
      done(err, undefined);
    }
  });

  app.setErrorHandler((err: FastifyError, _request, reply) => {
    const status = err.statusCode !== undefined && err.statusCode >= 400 ? err.statusCode : 500;
    const title = status === 400 ? 'Bad request' : status === 413 ? 'Payload too large' : status === 415 ? 'Unsupported media type' : status < 500 ? 'Invalid request' : 'Internal server error';
    return reply.code(status).send(problem(status, title, err.message));
  });

  app.setNotFoundHandler((_request, reply) => reply.code(404).send(NOT_FOUND));

  app.post<{ Params: { owner: string; name: string } }>(ROUTES.createByModel, async (request, reply) => {
    const body = request.body;
    if (!isPlainObject(body)) {
      return reply.code(422).send(problem(422, 'Invalid input', '- input: Invalid type. Expected: object, given: null'));
    }
    if ('version' in body) {
      return reply.code(422).send(problem(422, 'Input validation failed', '- (root): Additional property version is not allowed'));
    }
    const { owner, name } = request.params;
    return create(request, reply, `${owner}/${name}`, 'hidden', body);
  });

  app.post(ROUTES.createByVersion, async (request, reply) => {
    const body = request.body;
    if (!isPlainObject(body)) {
      return reply.code(422).send(problem(422, 'Invalid input', '- input: Invalid type. Expected: object, given: null'));
    }
    const version = body.version;
    if (typeof version !== 'string' || version.length === 0) {
      return reply.code(422).send(problem(422, 'Invalid version', '- version: version is required and must be a string'));
    }
    const colon = version.lastIndexOf(':');
    let hash = version;
    if (colon !== -1) hash = version.slice(colon + 1);
    // The real API runs a version by its hash, whatever name precedes it.
    const model = catalog.modelOf(hash) ?? (colon !== -1 ? version.slice(0, colon) : 'unknown/unknown');
    return create(request, reply, model, hash, body);
  });

  app.get<{ Params: { id: string } }>(ROUTES.get, async (request, reply) => {
    const p = store.get(request.params.id);
    if (p === undefined) return reply.code(404).send(NOT_FOUND);
    return reply.send(p);
  });

  app.post<{ Params: { id: string } }>(ROUTES.cancel, async (request, reply) => {
    const p = store.get(request.params.id);
    if (p === undefined) return reply.code(404).send(NOT_FOUND);
    store.cancel(p);
    return reply.send(p);
  });

  app.get(ROUTES.list, async (_request, reply) => {
    const results: Prediction[] = [];
    for (const p of store.map.values()) results.push(p);
    results.reverse();
    return reply.send({ next: null, previous: null, results });
  });

  // Stand-in for urls.stream (which stays on stream.replicate.com); unauthenticated like the real one.
  app.get<{ Params: { id: string } }>(ROUTES.stream, async (request, reply) => {
    if (!store.has(request.params.id)) return reply.code(404).send(NOT_FOUND);
    return reply
      .header('content-type', 'text/event-stream')
      .header('cache-control', 'no-store')
      .send('event: output\ndata: hello\n\nevent: done\ndata: {}\n\n');
  });

  // Stand-in for the output CDN (replicate.delivery/xezq/<id>/out-0.webp): clients that download their images (the
  // AI SDK's generateImage) get a small WebP here when a test points the CDN's host at this simulator.
  // Also what outputs are copied from (selfOutputUrls): a file given in deliveryFiles by its name; `big-<n>.bin`, n
  // bytes streamed without a length (a file that turns out too large only while it is read); `gone*` answers 404,
  // like a file the CDN already deleted; `flaky*` answers 503 the first time it is asked for; any other name is the
  // image.
  const asked = new Set<string>();
  app.get<{ Params: { id: string; name: string } }>('/delivery/xezq/:id/:name', async (request, reply) => {
    const { id, name } = request.params;
    deps.onDelivery?.(request.url);
    if (!store.has(id) || name.startsWith('gone')) return reply.code(404).send(NOT_FOUND);
    if (name.startsWith('flaky') && !asked.has(request.url)) {
      // Bounded like the predictions it names: one entry per flaky file of a stored prediction.
      if (asked.size > 10_000) asked.clear();
      asked.add(request.url);
      return reply.code(503).send(problem(503, 'Service unavailable', 'simulated CDN outage'));
    }
    const file = deliveryFiles[name];
    if (file) return reply.header('content-type', file.contentType).send(file.bytes);
    const big = /^big-(\d{1,10})\.bin$/.exec(name);
    if (big) {
      let left = Number(big[1]);
      const chunk = Buffer.alloc(64 * 1024, 0x61);
      const body = Readable.from((function* () {
        while (left > 0) {
          const n = Math.min(left, chunk.length);
          left -= n;
          yield chunk.subarray(0, n);
        }
      })());
      return reply.header('content-type', 'application/octet-stream').send(body);
    }
    return reply.header('content-type', 'image/webp').send(OUTPUT_IMAGE);
  });
}

/** A 1x1 lossless WebP: the bytes the simulator's output URLs serve. */
export const OUTPUT_IMAGE = Buffer.from('UklGRhoAAABXRUJQVlA4TA0AAAAvAAAAEAcQERGIiP4HAA==', 'base64');

