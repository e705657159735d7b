// The mirrored /replicate/v1 routes: parse the request, run the use case, render the answer for this request's base.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { checkAllowed, checkVersionAllowed } from '../access/allowlist.js';
import { inlineFiles } from '../files/inline.js';
import type { FileUrlSigner } from '../files/signed-urls.js';
import { publicBase } from '../http/base.js';
import type { VersionBook } from '../models/versions.js';
import { parse } from '../http/validate.js';
import { createPrediction, upstreamDepth } from './create.js';
import type { Answer, Caller, PredictionDeps } from './deps.js';
import { Facts } from './facts.js';
import { listPredictions } from './paging.js';
import { Poller } from './poller.js';
import { cancelPrediction, getPrediction } from './read.js';
import { CreateByModelSchema, CreateByVersionSchema, IdParamsSchema, ListQuerySchema, ModelParamsSchema } from './schemas.js';

const header = (request: FastifyRequest, name: string) => {
  const v = request.headers[name];
  return typeof v === 'string' ? v : undefined;
};

export async function predictionRoutes(app: FastifyInstance, opts: { versions: VersionBook; fileSigner?: FileUrlSigner }): Promise<void> {
  const { config, store, upstream, metrics } = app;
  const facts = new Facts();
  const poller = new Poller(upstream, config.POLL_CACHE_MS, upstreamDepth(config));
  const deps: PredictionDeps = { config, store, upstream, metrics, facts, poller, versions: opts.versions, budgets: app.budgets };
  const base = (request: FastifyRequest) => publicBase(config, request);
  const inlining = { config, files: app.files, signer: opts.fileSigner };

  function caller(request: FastifyRequest, route: string): Caller {
    return {
      principal: request.principal!,
      requestId: request.id,
      log: request.log,
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

  function create(request: FastifyRequest, path: string, body: { input: Record<string, unknown> }, model: () => Promise<string | undefined>) {
    // Exactly the bytes the client sent go upstream (unknown fields included), but for its gateway file URLs.
    const raw = request.rawBody ?? JSON.stringify(body);
    const bases = [base(request), `${request.protocol}://${request.host}`];
    return createPrediction(deps, caller(request, 'create'), {
      path,
      body: raw,
      forward: () => inlineFiles(inlining, request.principal!, bases, raw, body),
      model,
      prefer: header(request, 'prefer'),
      cancelAfter: header(request, 'cancel-after'),
      idempotencyKey: request.headers['idempotency-key'],
    });
  }

  app.post('/models/:owner/:name/predictions', { config: { create: true } }, async (request, reply) => {
    const { owner, name } = parse(ModelParamsSchema, request.params, 'path');
    const body = parse(CreateByModelSchema, request.body, 'body');
    checkAllowed(request.principal!, `${owner}/${name}`);
    return send(request, reply, await create(request, `/models/${owner}/${name}/predictions`, body, async () => `${owner}/${name}`));
  });

  app.post('/predictions', { config: { create: true } }, async (request, reply) => {
    const body = parse(CreateByVersionSchema, request.body, 'body');
    await checkVersionAllowed(request.principal!, body.version, (v) => opts.versions.modelOf(v));
    // The price of a create by version is its model's, as the gateway has seen the version belong to one.
    return send(request, reply, await create(request, '/predictions', body, () => opts.versions.modelOf(body.version)));
  });

  app.get('/predictions/:id', async (request, reply) => {
    const { id } = parse(IdParamsSchema, request.params, 'path');
    return send(request, reply, await getPrediction(deps, caller(request, 'get'), id));
  });

  app.post('/predictions/:id/cancel', async (request, reply) => {
    const { id } = parse(IdParamsSchema, request.params, 'path');
    return send(request, reply, await cancelPrediction(deps, caller(request, 'cancel'), id));
  });

  // Key only: a browser token would otherwise list every prediction of its tenant, other end users' included.
  app.get('/predictions', { config: { keyOnly: true } }, async (request, reply) => {
    const { cursor } = parse(ListQuerySchema, request.query, 'query');
    const page = await listPredictions(deps, caller(request, 'get'), cursor, base(request));
    return reply.code(200).type('application/json; charset=utf-8').send(page);
  });
}
