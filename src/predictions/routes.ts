// The mirrored /replicate/v1 routes: parse the request, run the use case, render the answer for this request's base.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { checkAllowed, checkVersionAllowed } from '../access/allowlist.js';
import { inlineFiles } from '../files/inline.js';
import type { FileUrlSigner } from '../files/signed-urls.js';
import { publicBase } from '../http/base.js';
import { GatewayError } from '../errors.js';
import { parse } from '../http/validate.js';
import { EVENTS, type EventName, Webhooks } from '../webhooks/webhooks.js';
import { receiverKey, receiverToken } from '../webhooks/routes.js';
import { clientAttempt, preferWithin } from './client-retries.js';
import { createPrediction } from './create.js';
import type { Answer, Caller } from './deps.js';
import { createdWindow } from './list-window.js';
import { listPredictions } from './paging.js';
import { cancelPrediction, getPrediction } from './read.js';
import { untilStored } from './store-retry.js';
import { CreateByModelSchema, CreateByVersionSchema, IdParamsSchema, ListQuerySchema, ModelParamsSchema, PREDICTION_ID } from './schemas.js';

const WEBHOOK_FIELDS = new Set(['webhook', 'webhook_events_filter']);

/**
 * A body key an upstream may take for `webhook` or `webhook_events_filter` though it is not spelt so: Go's
 * encoding/json matches names case-insensitively, with Unicode folding (the Kelvin sign is a k, "ſ" an s). Such a key
 * would go upstream as sent and have the upstream call the URL itself, past the gateway's policy and signing.
 */
function webhookLookalike(body: Record<string, unknown>): string | undefined {
  return Object.keys(body).find((k) => !WEBHOOK_FIELDS.has(k) && WEBHOOK_FIELDS.has(k.normalize('NFKC').toLowerCase()));
}

/**
 * The id of GET and cancel, the hottest routes: a well-formed one is taken with one regular-expression test; only
 * a bad one goes through zod, for its 422 naming the field.
 */
function idOf(params: unknown): string {
  const id = (params as { id?: unknown }).id;
  return typeof id === 'string' && PREDICTION_ID.test(id) ? id : parse(IdParamsSchema, params, 'path').id;
}

const header = (request: FastifyRequest, name: string) => {
  const v = request.headers[name];
  return typeof v === 'string' ? v : undefined;
};

export async function predictionRoutes(app: FastifyInstance, opts: { fileSigner?: FileUrlSigner }): Promise<void> {
  const { config, metrics, webhooks } = app;
  const deps = app.predictions;
  const { versions } = deps;
  const base = (request: FastifyRequest) => publicBase(config, request);
  const inlining = { config, files: app.files, signer: opts.fileSigner };

  function caller(request: FastifyRequest, route: string): Caller {
    return {
      principal: request.principal!,
      requestId: request.id,
      log: request.log,
      trace: request.traceContext,
      observe: (ms, outcome) => {
        request.upstreamMs = (request.upstreamMs ?? 0) + ms;
        metrics.upstreamDuration.observe({ route, outcome }, ms / 1000);
      },
    };
  }

  function send(request: FastifyRequest, reply: FastifyReply, answer: Answer): FastifyReply {
    if (answer.cache) {
      request.cacheResult = answer.cache;
      reply.header('x-cache', answer.cache === 'HIT' ? 'HIT' : 'MISS');
    }
    if (answer.replayed) reply.header('idempotent-replayed', 'true');
    if (answer.headers) reply.headers(answer.headers);
    // The access line names the prediction a create started: one log line per create, not two.
    if (answer.created) request.createdPrediction = answer.created;
    return reply.code(answer.status).type('application/json; charset=utf-8').send(answer.body.render(base(request)));
  }

  async function create(
    request: FastifyRequest,
    path: string,
    body: { input: Record<string, unknown>; webhook?: string; webhook_events_filter?: EventName[] },
    model: () => Promise<string | undefined>,
  ): Promise<Answer> {
    // Exactly the bytes the client sent go upstream (unknown fields included), but for its gateway file URLs and its
    // webhook, which stays with the gateway: the upstream would sign with the account's secret and point at itself.
    const lookalike = webhookLookalike(body);
    if (lookalike !== undefined) {
      throw new GatewayError('VALIDATION', `${JSON.stringify(lookalike).slice(0, 80)} is not a field the gateway takes; write webhook or webhook_events_filter exactly so (in lower case)`);
    }
    const raw = request.rawBody ?? JSON.stringify(body);
    let forward = raw;
    let receiver: string | undefined;
    if (body.webhook !== undefined) {
      const refused = webhooks.refuse(body.webhook);
      if (refused) throw new GatewayError('VALIDATION', `webhook ${refused}`);
      const { webhook: _url, webhook_events_filter: _events, ...rest } = body as Record<string, unknown>;
      if (config.WEBHOOK_MODE === 'upstream') {
        receiver = receiverToken();
        Object.assign(rest, { webhook: `${config.PUBLIC_BASE_URL}/gateway/v1/webhooks/upstream/${receiver}`, webhook_events_filter: [...EVENTS] });
      }
      forward = JSON.stringify(rest);
    }
    const bases = [base(request), `${request.protocol}://${request.host}`];
    const spec = body.webhook !== undefined ? { url: body.webhook, events: body.webhook_events_filter, base: base(request) } : undefined;
    const attempt = clientAttempt(request.headers);
    const answer = await createPrediction(deps, caller(request, 'create'), {
      path,
      body: raw,
      forward: async () => {
        const sent = await inlineFiles(inlining, request.principal!, bases, forward, body);
        // A changed body means files were put in: the answers show the client's own input, not the upstream's echo.
        return sent === forward ? { body: sent } : { body: sent, input: body.input };
      },
      model,
      // A client that says when it gives up is answered before then, held or not (src/predictions/client-retries.ts).
      prefer: preferWithin(header(request, 'prefer'), attempt?.answerWithinMs),
      cancelAfter: header(request, 'cancel-after'),
      idempotencyKey: request.headers['idempotency-key'],
      webhook: spec && Webhooks.spec(spec),
      hinted: receiver !== undefined,
      attempt,
    });
    if (spec && answer.created) {
      const id = answer.created;
      const tenant = request.principal!.tenant.id;
      // The prediction exists upstream now, and its answer must not wait on the webhook queue (a stalled Redis would
      // hold it): the job starts in the background, with retries. Should it still fail, the watcher starts it at the
      // prediction's next change (the webhook is kept in the open set), and polling covers a lost receiver link.
      void (async () => {
        if (receiver) await untilStored(() => app.kv.set(receiverKey(receiver), id, config.PREDICTION_TTL_SECONDS * 1000));
        await untilStored(() => webhooks.watch({ id, tenant, ...spec, created: answer.body }));
      })().catch((err: unknown) => request.log.error({ prediction: id, err }, 'created the prediction but could not start watching it for its webhook yet'));
    }
    return answer;
  }

  app.post('/models/:owner/:name/predictions', { config: { create: true } }, async (request, reply) => {
    const { owner, name } = parse(ModelParamsSchema, request.params, 'path');
    const body = parse(CreateByModelSchema, request.body, 'body');
    checkAllowed(request.principal!, `${owner}/${name}`);
    return send(request, reply, await create(request, `/models/${owner}/${name}/predictions`, body, async () => `${owner}/${name}`));
  });

  app.post('/predictions', { config: { create: true } }, async (request, reply) => {
    const body = parse(CreateByVersionSchema, request.body, 'body');
    await checkVersionAllowed(request.principal!, body.version, (v) => versions.modelOf(v));
    // The price of a create by version is its model's, as the gateway has seen the version belong to one.
    return send(request, reply, await create(request, '/predictions', body, () => versions.modelOf(body.version)));
  });

  app.get('/predictions/:id', { config: { predictionScoped: true } }, async (request, reply) => {
    const id = idOf(request.params);
    return send(request, reply, await getPrediction(deps, caller(request, 'get'), id));
  });

  app.post('/predictions/:id/cancel', { config: { predictionScoped: true } }, async (request, reply) => {
    const id = idOf(request.params);
    return send(request, reply, await cancelPrediction(deps, caller(request, 'cancel'), id));
  });

  // Key only: a browser token would otherwise list every prediction of its tenant, other end users' included.
  app.get('/predictions', { config: { keyOnly: true } }, async (request, reply) => {
    const { cursor, created_after, created_before } = parse(ListQuerySchema, request.query, 'query');
    const window = createdWindow(created_after, created_before);
    const page = await listPredictions(deps, caller(request, 'get'), cursor, base(request), window);
    return reply.code(200).type('application/json; charset=utf-8').send(page);
  });
}
