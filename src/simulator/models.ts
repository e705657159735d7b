// Model and version reads, as Replicate serves them: every model "owner/name" exists with one version whose id is
// derived from its name (so tests can compute it), except models named "missing-*"; models named "versioned-*" have
// three, two to a page. A create by a bare version hash runs the model that version belongs to, as the real API does.
// The catalogue reads (hardware, collections, the model list and search) serve a small fixed catalogue, two to a
// page, with `next`/`previous` pointing at api.replicate.com as the resellers relay them.
import { createHash } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import { NOT_FOUND, SIM_PREFIX } from './protocol.js';

/** Where the upstream's paged links point: Replicate itself (the resellers pass its bodies through). */
export const REPLICATE_API = 'https://api.replicate.com/v1';
const PAGE = 2;

/** The models GET /models lists and QUERY /models searches, in list order. */
export const CATALOGUE = ['black-forest-labs/flux-schnell', 'black-forest-labs/flux-dev', 'stability-ai/sdxl', 'openai/whisper', 'meta/meta-llama-3-8b'];

export const HARDWARE = [
  { name: 'CPU', sku: 'cpu' },
  { name: 'Nvidia T4 GPU', sku: 'gpu-t4' },
  { name: 'Nvidia L40S GPU', sku: 'gpu-l40s' },
  { name: 'Nvidia A100 (80GB) GPU', sku: 'gpu-a100-large' },
];

export const COLLECTIONS = [
  { name: 'Text to image', slug: 'text-to-image', description: 'Make images from words', models: ['black-forest-labs/flux-schnell', 'black-forest-labs/flux-dev', 'stability-ai/sdxl'] },
  { name: 'Speech to text', slug: 'speech-to-text', description: 'Transcribe speech', models: ['openai/whisper'] },
  { name: 'Language models', slug: 'language-models', description: 'Chat and complete text', models: ['meta/meta-llama-3-8b'] },
];

/** One page of `items` as Replicate answers it: an opaque cursor, and absolute links to its own host. */
function page<T>(items: readonly T[], cursor: string | undefined, path: string): { next: string | null; previous: string | null; results: T[] } {
  const from = cursor ? Number(Buffer.from(cursor, 'base64url').toString().replace(/^o/, '')) || 0 : 0;
  const link = (at: number) => `${REPLICATE_API}${path}?cursor=${Buffer.from(`o${at}`).toString('base64url')}`;
  return {
    next: from + PAGE < items.length ? link(from + PAGE) : null,
    previous: from > 0 ? link(Math.max(0, from - PAGE)) : null,
    results: items.slice(from, from + PAGE),
  };
}

/** The one version of a simulated model: 64 hex digits, like Replicate's. */
export function simVersionOf(model: string): string {
  return createHash('sha256').update(`sim-version:${model}`).digest('hex');
}

export class ModelCatalog {
  /** Versions handed out so far, so a create by bare hash knows its model. */
  readonly #byVersion = new Map<string, string>();

  exists(model: string): boolean {
    return !model.split('/')[1]!.startsWith('missing-');
  }

  version(model: string, n = 0) {
    const id = simVersionOf(n === 0 ? model : `${model}#${n}`);
    this.#byVersion.set(id, model);
    return { id, created_at: '2026-01-01T00:00:00.000Z', cog_version: '0.16.0', openapi_schema: {} };
  }

  /** Every version of a model, newest first. */
  versions(model: string) {
    const count = model.split('/')[1]!.startsWith('versioned-') ? 3 : 1;
    return Array.from({ length: count }, (_, n) => this.version(model, n));
  }

  model(model: string) {
    const [owner, name] = model.split('/') as [string, string];
    return {
      url: `https://replicate.com/${model}`,
      owner,
      name,
      description: `simulated ${model}`,
      visibility: 'public',
      run_count: 0,
      latest_version: this.version(model),
    };
  }

  /** The model a bare version hash belongs to, once that model was seen (read, or created by name). */
  modelOf(version: string): string | undefined {
    return this.#byVersion.get(version);
  }

}

export function registerModelRoutes(app: FastifyInstance, catalog: ModelCatalog): void {
  type P = { Params: { owner: string; name: string; id?: string } };
  const known = (p: { owner: string; name: string }) => {
    const m = `${p.owner}/${p.name}`;
    return catalog.exists(m) ? m : undefined;
  };
  app.get<P>(`${SIM_PREFIX}/models/:owner/:name`, async (request, reply) => {
    const m = known(request.params);
    return m ? catalog.model(m) : reply.code(404).send(NOT_FOUND);
  });
  type Q = { Querystring: { cursor?: string } };
  app.get<P & Q>(`${SIM_PREFIX}/models/:owner/:name/versions`, async (request, reply) => {
    const m = known(request.params);
    return m ? page(catalog.versions(m), request.query.cursor, `/models/${m}/versions`) : reply.code(404).send(NOT_FOUND);
  });
  app.get<P>(`${SIM_PREFIX}/models/:owner/:name/versions/:id`, async (request, reply) => {
    const m = known(request.params);
    const v = m && catalog.versions(m).find((x) => x.id === request.params.id);
    return v ?? reply.code(404).send(NOT_FOUND);
  });

  app.get(`${SIM_PREFIX}/hardware`, async () => HARDWARE);
  app.get<Q>(`${SIM_PREFIX}/collections`, async (request) =>
    page(COLLECTIONS.map(({ models: _, ...c }) => c), request.query.cursor, '/collections'),
  );
  app.get<{ Params: { slug: string } }>(`${SIM_PREFIX}/collections/:slug`, async (request, reply) => {
    const c = COLLECTIONS.find((x) => x.slug === request.params.slug);
    return c ? { ...c, models: c.models.map((m) => catalog.model(m)) } : reply.code(404).send(NOT_FOUND);
  });
  app.get<Q>(`${SIM_PREFIX}/models`, async (request) => page(CATALOGUE.map((m) => catalog.model(m)), request.query.cursor, '/models'));
  // The search: QUERY with the words as a text/plain body (RFC 10008); the words are in the body, not the links.
  app.route<Q>({
    method: 'QUERY',
    url: `${SIM_PREFIX}/models`,
    handler: async (request, reply) => {
      if (typeof request.body !== 'string') return reply.code(400).send({ title: 'Bad request', detail: 'send the search query as a text/plain body', status: 400 });
      const words = request.body.trim().toLowerCase();
      const found = CATALOGUE.filter((m) => m.includes(words) || `simulated ${m}`.includes(words)).map((m) => catalog.model(m));
      return page(found, request.query.cursor, '/models');
    },
  });
}
