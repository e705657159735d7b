// The prediction object as the gateway handles it: what counts as terminal, reading one from an upstream answer,
// and rendering it with URLs that point back at the gateway.
import { GatewayError } from '../errors.js';
import { deeperThan } from '../lib/json-depth.js';
import { withOutputLinks } from '../outputs/links.js';
import { PREDICTION_ID } from './schemas.js';

export type Prediction = Record<string, unknown> & { id?: unknown; status?: unknown; urls?: Record<string, unknown> };

export const TERMINAL_STATUSES: ReadonlySet<string> = new Set(['succeeded', 'failed', 'canceled', 'aborted']);

export const isTerminal = (p: Prediction): boolean => typeof p.status === 'string' && TERMINAL_STATUSES.has(p.status);

/** A string from outside for a log line: JSON-quoted, printable ASCII only (no control or bidi characters), cut short. */
export function logSafe(s: string, max = 200): string {
  const shown = JSON.stringify(s.slice(0, max)).replace(/[^\x20-\x7e]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
  return s.length > max ? `${shown}... (${s.length} characters)` : shown;
}

/** Bodies above this size are never kept in process memory (they can carry whole images as data: URIs). */
export const MAX_REMEMBERED_BODY = 256 * 1024;

/**
 * URLs in predictions point back at the gateway: the official client follows urls.get and list `next` verbatim,
 * with the tenant's key, so any other host would receive that key. Rewrites urls.get and urls.cancel in place;
 * urls.stream and urls.web are capability URLs and stay.
 */
export function rewriteUrls(p: Prediction, base: string): Prediction {
  if (typeof p.id !== 'string') return p;
  const self = `${base}/replicate/v1/predictions/${encodeURIComponent(p.id)}`;
  const urls = p.urls && typeof p.urls === 'object' ? p.urls : {};
  urls.get = self;
  urls.cancel = `${self}/cancel`;
  p.urls = urls;
  return p;
}

/**
 * One prediction body as received (`raw`, what the store keeps) and its last rendering for a client. Every request
 * that gets the same body (a cached terminal one, a coalesced or micro-cached poll) shares one rendering while
 * the gateway's base URL stays the same.
 */
export class PredictionBody {
  #parsed: Prediction | undefined;
  #base: string | undefined;
  #rendered: string | undefined;

  constructor(
    readonly raw: string,
    parsed?: Prediction,
  ) {
    this.#parsed = parsed;
  }

  /** Reads an upstream answer; anything but a JSON object with a string id is the upstream's fault (502). */
  static fromUpstream(raw: string, maxDepth = 64): PredictionBody {
    // Nothing deeper than a client may send is stored: it would break every later list of the tenant.
    if (deeperThan(raw, maxDepth)) throw new GatewayError('UPSTREAM_ERROR', `the upstream answered with JSON nested deeper than JSON_MAX_DEPTH (${maxDepth})`);
    let p: unknown;
    try {
      p = JSON.parse(raw);
    } catch {
      p = undefined;
    }
    if (!p || typeof p !== 'object' || Array.isArray(p) || typeof (p as Prediction).id !== 'string') {
      throw new GatewayError('UPSTREAM_ERROR', 'the upstream answered with a body that is not a prediction');
    }
    const id = (p as Prediction).id as string;
    // An id the gateway's own routes refuse could never be read, canceled or listed through them (its urls.get would
    // answer 422), and '/' or '..' would reach other upstream paths: refuse the answer. The id goes to the log only,
    // as the cause, escaped and cut short.
    if (!PREDICTION_ID.test(id)) {
      throw new GatewayError('UPSTREAM_ERROR', 'the upstream answered with a prediction id the gateway cannot serve (letters, digits, "_" and "-", at most 128)', {
        cause: new Error(`upstream prediction id ${logSafe(id)}`),
      });
    }
    return new PredictionBody(raw, p as Prediction);
  }

  get prediction(): Prediction {
    return (this.#parsed ??= JSON.parse(this.raw) as Prediction);
  }

  /** The same prediction with another `input` (the client's own, where the upstream echoes what the gateway sent). */
  withInput(input: unknown): PredictionBody {
    const p: Prediction = { ...this.prediction, input };
    return new PredictionBody(JSON.stringify(p), p);
  }

  get id(): string {
    return this.prediction.id as string;
  }

  get terminal(): boolean {
    return isTerminal(this.prediction);
  }

  /** The JSON a client gets, with urls.get and urls.cancel under `base`. */
  render(base: string): string {
    if (this.#base !== base || this.#rendered === undefined) {
      // The parsed object is rewritten in place: the rewrite depends only on the id and the base, and `raw` stays.
      // Kept outputs (src/outputs/) are stored as gateway paths and get this request's base too.
      this.#rendered = withOutputLinks(JSON.stringify(rewriteUrls(this.prediction, base)), this.raw, this.id, base);
      this.#base = base;
    }
    return this.#rendered;
  }
}

/** An upstream answer about another prediction than the one asked for is the upstream's fault: never stored. */
export function sameId(body: PredictionBody, id: string): PredictionBody {
  if (body.id !== id) throw new GatewayError('UPSTREAM_ERROR', `the upstream answered for prediction ${id} with a different prediction`);
  return body;
}
