// Model and catalogue reads: GET /models/{owner}/{name}, …/versions, …/versions/{id}, the model list and search
// (GET and QUERY /models), /collections, /collections/{slug} and /hardware. Forwarded for models the caller may use
// (lists keep only those), cached briefly (catalogue data is the same for every tenant), and each read teaches the
// VersionBook. Paged answers get gateway `next`/`previous` links: the upstream's point at its own host, and a client
// follows them verbatim with the tenant's key.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { z } from 'zod';
import { modelAllowed } from '../access/allowlist.js';
import { GatewayError } from '../errors.js';
import { publicBase } from '../http/base.js';
import { parse } from '../http/validate.js';
import { BoundedMap } from '../lib/bounded-map.js';
import { ModelParamsSchema } from '../predictions/schemas.js';
import type { UpstreamRequest } from '../upstream/client.js';
import type { VersionBook } from './versions.js';

const CACHE_MS = 60_000;
const VersionParamsSchema = ModelParamsSchema.extend({ id: z.string().regex(/^[A-Za-z0-9._-]{1,128}$/, 'is not a version id') });
const CollectionParamsSchema = z.object({ slug: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/, 'is not a collection slug') });
// Upstream cursors are opaque: any printable text, passed on encoded.
const PageQuerySchema = z.object({ cursor: z.string().regex(/^[\x21-\x7e]{1,1000}$/, 'is not a cursor').optional() });
const SEARCH_MAX_CHARS = 1000;
/** Upstream pages one model list read may go through to find one with a model the caller may use. */
const FILL_PAGES = 5;

type Json = Record<string, unknown>;

export async function modelRoutes(app: FastifyInstance, opts: { versions: VersionBook }): Promise<void> {
  const { upstream, metrics, config } = app;
  const cache = new BoundedMap<string>({ maxEntries: 2000, maxBytes: 16 * 1024 * 1024, ttlMs: CACHE_MS, sizeOf: (v) => v.length });

  const may = (request: FastifyRequest, model: string) => {
    const { tenant, token } = request.principal!;
    return modelAllowed(model, tenant.models) && (!token?.models || modelAllowed(model, token.models));
  };

  /** Someone else's model looks exactly like a missing one. */
  function allowed(request: FastifyRequest, model: string): void {
    if (!may(request, model)) throw new GatewayError('NOT_FOUND', `model ${model} was not found`);
  }

  /** A model object of a list, kept when the caller may use it. */
  const listed = (request: FastifyRequest) => (m: unknown) => {
    const { owner, name } = (m ?? {}) as Json;
    return typeof owner === 'string' && typeof name === 'string' && may(request, `${owner}/${name}`);
  };

  /** Teaches the VersionBook the latest version of each model object. */
  const learnModels = (models: unknown) => {
    if (!Array.isArray(models)) return;
    opts.versions.learn(models.map((m) => [(m as { latest_version?: { id?: unknown } })?.latest_version?.id, `${(m as Json)?.owner}/${(m as Json)?.name}`] as const));
  };

  /** The upstream's answer to a read, as text (cached) and parsed; `what` names it in errors. */
  async function read(request: FastifyRequest, what: string, up: Pick<UpstreamRequest, 'path' | 'body' | 'contentType'> & { method?: 'GET' | 'QUERY' }): Promise<{ raw: string; body: any }> {
    const method = up.method ?? 'GET';
    const key = `${method} ${up.path}${up.body === undefined ? '' : `\n${up.body}`}`;
    const hit = cache.get(key);
    if (hit) return { raw: hit, body: JSON.parse(hit) };
    let res;
    try {
      res = await upstream.request({
        ...up,
        method,
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
        throw new GatewayError('NOT_IMPLEMENTED', `the upstream does not serve model reads (it answered ${err.upstreamStatus} for ${what})`);
      }
      throw err;
    }
    let body: unknown;
    try {
      body = JSON.parse(res.body);
    } catch {
      throw new GatewayError('UPSTREAM_ERROR', `the upstream answered a read of ${what} with a body that is not JSON`);
    }
    if (!body || typeof body !== 'object') throw new GatewayError('UPSTREAM_ERROR', `the upstream answered a read of ${what} with a body that is not an object`);
    cache.set(key, res.body);
    return { raw: res.body, body };
  }

  const send = (reply: FastifyReply, json: string) => reply.code(200).type('application/json; charset=utf-8').send(json);
  const withCursor = (path: string, cursor: string | undefined) => (cursor === undefined ? path : `${path}?cursor=${encodeURIComponent(cursor)}`);

  /** The cursor of an upstream `next`/`previous` link, or null. */
  const cursorOf = (upstreamLink: unknown): string | null => {
    if (typeof upstreamLink !== 'string') return null;
    try {
      return new URL(upstreamLink, 'https://upstream.invalid').searchParams.get('cursor') || null;
    } catch {
      return null;
    }
  };

  /**
   * A paged answer with its links on the gateway: the same route with the upstream link's cursor, or null (a link
   * without a cursor is dropped rather than passed on). `last` is the page whose `next` counts (see models()).
   */
  function paged(request: FastifyRequest, path: string, body: Json, results: unknown = body.results, last: Json = body): string {
    const link = (upstreamLink: unknown) => {
      const cursor = cursorOf(upstreamLink);
      return cursor ? `${publicBase(config, request)}/replicate/v1${withCursor(path, cursor)}` : null;
    };
    return JSON.stringify({ ...body, next: link(last.next), previous: link(body.previous), results });
  }

  /**
   * A page of a model list (GET or QUERY /models) keeping the caller's models. A page left empty by the allowlist is
   * followed by the next, up to FILL_PAGES, because the SDK stops paging at an empty page.
   */
  async function models(request: FastifyRequest, what: string, up: { method?: 'GET' | 'QUERY'; body?: string; contentType?: string }, cursor: string | undefined): Promise<string> {
    const keep = listed(request);
    const first = (await read(request, what, { ...up, path: withCursor('/models', cursor) })).body;
    let last = first;
    let results: unknown[] = [];
    for (let pages = 1; ; pages++) {
      learnModels(last.results);
      results = Array.isArray(last.results) ? last.results.filter(keep) : [];
      const next = cursorOf(last.next);
      if (results.length > 0 || !next || pages >= FILL_PAGES) break;
      last = (await read(request, what, { ...up, path: withCursor('/models', next) })).body;
    }
    return paged(request, '/models', first, results, last);
  }

  const versionPairs = (model: string, list: unknown) => (Array.isArray(list) ? list : []).map((v) => [(v as { id?: unknown })?.id, model] as const);

  app.get('/models/:owner/:name', async (request, reply) => {
    const { owner, name } = parse(ModelParamsSchema, request.params, 'path');
    const model = `${owner}/${name}`;
    allowed(request, model);
    const { raw, body } = await read(request, model, { path: `/models/${owner}/${name}` });
    opts.versions.learn(versionPairs(model, [body.latest_version]));
    return send(reply, raw);
  });

  app.get('/models/:owner/:name/versions', async (request, reply) => {
    const { owner, name } = parse(ModelParamsSchema, request.params, 'path');
    const { cursor } = parse(PageQuerySchema, request.query, 'query');
    const model = `${owner}/${name}`;
    allowed(request, model);
    const path = `/models/${owner}/${name}/versions`;
    const { body } = await read(request, model, { path: withCursor(path, cursor) });
    opts.versions.learn(versionPairs(model, body.results));
    return send(reply, paged(request, path, body));
  });

  app.get('/models/:owner/:name/versions/:id', async (request, reply) => {
    const { owner, name, id } = parse(VersionParamsSchema, request.params, 'path');
    const model = `${owner}/${name}`;
    allowed(request, model);
    const { raw, body } = await read(request, model, { path: `/models/${owner}/${name}/versions/${id}` });
    // Only an answer about the version asked for teaches anything.
    if (body.id === id) opts.versions.learn([[id, model]]);
    return send(reply, raw);
  });

  // The catalogue: what the SDK's models.list/search, collections and hardware (and the MCP server's tools) call.
  app.get('/models', async (request, reply) => {
    const { cursor } = parse(PageQuerySchema, request.query, 'query');
    return send(reply, await models(request, 'the model list', {}, cursor));
  });

  app.route({
    method: 'QUERY',
    url: '/models',
    handler: async (request, reply) => {
      const { cursor } = parse(PageQuerySchema, request.query, 'query');
      // Replicate's search takes the words as a text/plain body (the SDK sends it so).
      if (typeof request.body !== 'string' || request.body.trim() === '') {
        throw new GatewayError('VALIDATION', 'send the search words as a non-empty text/plain body');
      }
      if (request.body.length > SEARCH_MAX_CHARS) throw new GatewayError('VALIDATION', `the search words must be at most ${SEARCH_MAX_CHARS} characters`);
      return send(reply, await models(request, 'the model search', { method: 'QUERY', body: request.body, contentType: 'text/plain; charset=utf-8' }, cursor));
    },
  });

  app.get('/collections', async (request, reply) => {
    const { cursor } = parse(PageQuerySchema, request.query, 'query');
    const { body } = await read(request, 'the collections', { path: withCursor('/collections', cursor) });
    return send(reply, paged(request, '/collections', body));
  });

  app.get('/collections/:slug', async (request, reply) => {
    const { slug } = parse(CollectionParamsSchema, request.params, 'path');
    const { body } = await read(request, `collection ${slug}`, { path: `/collections/${slug}` });
    learnModels(body.models);
    const models = Array.isArray(body.models) ? body.models.filter(listed(request)) : body.models;
    return send(reply, JSON.stringify({ ...body, models }));
  });

  app.get('/hardware', async (request, reply) => send(reply, (await read(request, 'the hardware list', { path: '/hardware' })).raw));
}
