// Model and version reads, as Replicate serves them: every model "owner/name" exists with one version whose id is
// derived from its name (so tests can compute it), except models named "missing-*". A create by a bare version
// hash runs the model that version belongs to, as the real API does.
import { createHash } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import { NOT_FOUND, SIM_PREFIX } from './protocol.js';

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

  version(model: string) {
    const id = simVersionOf(model);
    this.#byVersion.set(id, model);
    return { id, created_at: '2026-01-01T00:00:00.000Z', cog_version: '0.16.0', openapi_schema: {} };
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
  app.get<P>(`${SIM_PREFIX}/models/:owner/:name/versions`, async (request, reply) => {
    const m = known(request.params);
    return m ? { next: null, previous: null, results: [catalog.version(m)] } : reply.code(404).send(NOT_FOUND);
  });
  app.get<P>(`${SIM_PREFIX}/models/:owner/:name/versions/:id`, async (request, reply) => {
    const m = known(request.params);
    if (!m || request.params.id !== simVersionOf(m)) return reply.code(404).send(NOT_FOUND);
    return catalog.version(m);
  });
}
