// Which model a version hash belongs to. The official client's run("owner/name:version") sends only the hash, and
// the upstream runs a version by its hash whatever name precedes it, so the allowlist can only judge a version by
// the model the gateway has seen it belong to: in model reads, and in every prediction (`model` + `version`).
import type { FastifyBaseLogger } from 'fastify';
import { BoundedMap } from '../lib/bounded-map.js';
import type { Store } from '../store/store.js';

const MODEL = /^[A-Za-z0-9][A-Za-z0-9._-]*\/[A-Za-z0-9][A-Za-z0-9._-]*$/;
const VERSION = /^[A-Za-z0-9._-]{8,128}$/;

/** The hash of a version as a client names it: "owner/name:hash" or the bare hash. */
export const hashOf = (version: string): string => version.slice(version.lastIndexOf(':') + 1);

export class VersionBook {
  /** What this process has seen or looked up; a version never changes model, so nothing here goes stale. */
  readonly #known = new BoundedMap<string>({ maxEntries: 50_000 });

  constructor(
    readonly store: Store,
    readonly log: FastifyBaseLogger,
  ) {}

  async modelOf(version: string): Promise<string | undefined> {
    const hash = hashOf(version);
    const local = this.#known.get(hash);
    if (local) return local;
    const model = await this.store.versionModel(hash);
    if (model) this.#known.set(hash, model);
    return model ?? undefined;
  }

  /** Learns from version → model pairs not known yet; a store failure only costs the lesson (logged). */
  learn(pairs: Iterable<readonly [version: unknown, model: unknown]>): void {
    const fresh: [string, string][] = [];
    for (const [version, model] of pairs) {
      if (typeof version !== 'string' || typeof model !== 'string' || !VERSION.test(version) || !MODEL.test(model)) continue;
      if (this.#known.peek(version) !== undefined) continue;
      this.#known.set(version, model);
      fresh.push([version, model]);
    }
    if (fresh.length) this.store.learnVersions(fresh).catch((err) => this.log.warn({ err }, 'could not remember model versions'));
  }

  /** From a prediction object: its `model` and `version` ("hidden" for official models names no version). */
  learnFromPrediction(p: Record<string, unknown>): void {
    if (p.version !== 'hidden') this.learn([[p.version, p.model]]);
  }
}
