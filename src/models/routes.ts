// Model and version reads (GET /models/{owner}/{name}, …/versions, …/versions/{id}): forwarded for models the caller
// may use, cached briefly (model data is the same for every tenant), and each read teaches the VersionBook.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { modelAllowed } from '../access/allowlist.js';
import { GatewayError } from '../errors.js';
import { parse } from '../http/validate.js';
import { BoundedMap } from '../lib/bounded-map.js';
import { ModelParamsSchema } from '../predictions/schemas.js';
import { z } from 'zod';
import type { VersionBook } from './versions.js';

const CACHE_MS = 60_000;
const VersionParamsSchema = ModelParamsSchema.extend({ id: z.string().regex(/^[A-Za-z0-9._-]{1,128}$/, 'is not a version id') });

export async function modelRoutes(app: FastifyInstance, opts: { versions: VersionBook }): Promise<void> {
  const { upstream, metrics } = app;
  const cache = new BoundedMap<string>({ maxEntries: 2000, maxBytes: 16 * 1024 * 1024, ttlMs: CACHE_MS, sizeOf: (v) => v.length });

  /** Someone else's model looks exactly like a missing one. */
  function allowed(request: FastifyRequest, model: string): void {
    const { tenant, token } = request.principal!;
    if (!modelAllowed(model, tenant.models) || (token?.models && !modelAllowed(model, token.models))) {
      throw new GatewayError('NOT_FOUND', `model ${model} was not found`);
    }
  }

  async function read(request: FastifyRequest, model: string, path: string, learn: (body: any) => void): Promise<string> {
    const hit = cache.get(path);
    if (hit) return hit;
    let res;
    try {
      res = await upstream.request({
        method: 'GET',
        path,
        requestId: request.id,
        tenant: request.principal!.tenant.id,
        retry: true,
        trace: request.traceContext,
        observe: (ms, outcome) => {
          request.upstreamMs = (request.upstreamMs ?? 0) + ms;
          metrics.upstreamDuration.observe({ route: 'model', outcome }, ms / 1000);
        },
      });
    } catch (err) {
      if (err instanceof GatewayError && (err.upstreamStatus === 405 || err.upstreamStatus === 501)) {
        throw new GatewayError('NOT_IMPLEMENTED', `the upstream does not serve model reads (it answered ${err.upstreamStatus} for ${model})`);
      }
      throw err;
    }
    let body: unknown;
    try {
      body = JSON.parse(res.body);
    } catch {
      throw new GatewayError('UPSTREAM_ERROR', `the upstream answered a read of ${model} with a body that is not JSON`);
    }
    if (!body || typeof body !== 'object') throw new GatewayError('UPSTREAM_ERROR', `the upstream answered a read of ${model} with a body that is not an object`);
    learn(body);
    cache.set(path, res.body);
    return res.body;
  }

  const send = (reply: import('fastify').FastifyReply, json: string) => reply.code(200).type('application/json; charset=utf-8').send(json);
  const versionPairs = (model: string, list: unknown) => (Array.isArray(list) ? list : []).map((v) => [(v as { id?: unknown })?.id, model] as const);

  app.get('/models/:owner/:name', async (request, reply) => {
    const { owner, name } = parse(ModelParamsSchema, request.params, 'path');
    const model = `${owner}/${name}`;
    allowed(request, model);
    const json = await read(request, model, `/models/${owner}/${name}`, (b) => opts.versions.learn(versionPairs(model, [b.latest_version])));
    return send(reply, json);
  });

  app.get('/models/:owner/:name/versions', async (request, reply) => {
    const { owner, name } = parse(ModelParamsSchema, request.params, 'path');
    const model = `${owner}/${name}`;
    allowed(request, model);
    const json = await read(request, model, `/models/${owner}/${name}/versions`, (b) => opts.versions.learn(versionPairs(model, b.results)));
    return send(reply, json);
  });

  app.get('/models/:owner/:name/versions/:id', async (request, reply) => {
    const { owner, name, id } = parse(VersionParamsSchema, request.params, 'path');
    const model = `${owner}/${name}`;
    allowed(request, model);
    const path = `/models/${owner}/${name}/versions/${id}`;
    const json = await read(request, model, path, (b) => {
      // Only an answer about the version asked for teaches anything.
      if (b.id === id) opts.versions.learn([[id, model]]);
    });
    return send(reply, json);
  });
}
