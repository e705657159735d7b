// The price table (PRICES_FILE): what a model costs per output image and per second of predict_time, in the
// operator's currency, and the predict time to reserve before a prediction has run.
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { ConfigError } from '../config.js';

const amount = z.number({ error: 'must be a number' }).nonnegative('must be 0 or more');

const PriceSchema = z
  .strictObject({
    perImage: amount.optional(),
    perSecond: amount.optional(),
    /** Predict time reserved at create (default BUDGET_EXPECTED_SECONDS). */
    expectedSeconds: z.number({ error: 'must be a number' }).positive('must be above 0').optional(),
    /** Images reserved at create for perImage (default 1). */
    expectedImages: z.number({ error: 'must be a number' }).int('must be a whole number').positive('must be above 0').optional(),
  })
  .refine((p) => p.perImage !== undefined || p.perSecond !== undefined, 'needs perImage or perSecond');

export type Price = z.output<typeof PriceSchema>;

const MODEL_KEY = /^[a-z0-9][a-z0-9._-]*\/(\*|[a-z0-9][a-z0-9._-]*)$/i;

export const PricesFileSchema = z.strictObject({
  currency: z.string().min(1).max(16).optional(),
  /** The price of a model the table does not name. Without it, the most expensive entry is used. */
  default: PriceSchema.optional(),
  models: z
    .record(z.string(), PriceSchema)
    .superRefine((models, ctx) => {
      for (const k of Object.keys(models)) {
        if (!MODEL_KEY.test(k)) ctx.addIssue({ code: 'custom', path: [k], message: 'is not a model: use "owner/name" or "owner/*"' });
      }
    })
    .refine((m) => Object.keys(m).length > 0, 'needs at least one model'),
});

export class PricesError extends ConfigError {
  override name = 'PricesError';
}

export interface Amounts {
  seconds: number;
  cost: number;
}

/** How many images a finished prediction made: metrics.image_count, else its output's length when it succeeded. */
function imagesOf(p: Record<string, unknown>): number {
  const m = p.metrics as { image_count?: unknown } | undefined;
  if (typeof m?.image_count === 'number' && Number.isFinite(m.image_count)) return Math.max(0, m.image_count);
  if (p.status !== 'succeeded' || p.output === null || p.output === undefined) return 0;
  return Array.isArray(p.output) ? p.output.length : 1;
}

export function predictTimeOfPrediction(p: Record<string, unknown>): number {
  const m = p.metrics as { predict_time?: unknown } | undefined;
  return typeof m?.predict_time === 'number' && Number.isFinite(m.predict_time) && m.predict_time > 0 ? m.predict_time : 0;
}

export class PriceTable {
  readonly currency: string;
  readonly hasDefault: boolean;
  readonly #models: Map<string, Price>;
  readonly #fallback: Price;

  constructor(doc: z.output<typeof PricesFileSchema>, readonly defaultSeconds: number) {
    this.currency = doc.currency ?? '';
    this.hasDefault = doc.default !== undefined;
    // A reservation must be a number Redis can add: an estimate that overflows (perImage 1e308 × expectedImages 10)
    // would fail every create of that model in the store, so it stops the boot, naming the entry.
    for (const [name, p] of [...Object.entries(doc.models).map(([k, v]) => [`models.${k}`, v] as const), ['default', doc.default] as const]) {
      if (p && !Number.isFinite(this.#expected(p))) {
        throw new PricesError(`invalid configuration: PRICES_FILE ${name}: its estimate (perImage × expectedImages + perSecond × expectedSeconds) is too large to count`);
      }
    }
    this.#models = new Map(Object.entries(doc.models).map(([k, v]) => [k.toLowerCase(), v]));
    // An unknown model costs what the operator says, or else the most the table charges: a budget in money must not
    // be passed by naming a model the table forgot.
    this.#fallback = doc.default ?? [...this.#models.values()].reduce((a, b) => (this.#expected(b) > this.#expected(a) ? b : a));
  }

  /** The price of a model: its own, its owner's (`owner/*`), or the fallback; `known` says which. */
  priceOf(model: string | undefined): { price: Price; known: boolean } {
    const m = model?.toLowerCase();
    const own = m === undefined ? undefined : this.#models.get(m) ?? this.#models.get(`${m.slice(0, m.indexOf('/'))}/*`);
    return own ? { price: own, known: true } : { price: this.#fallback, known: false };
  }

  knows(model: string): boolean {
    return this.priceOf(model).known;
  }

  #seconds(p: Price): number {
    return p.expectedSeconds ?? this.defaultSeconds;
  }

  #expected(p: Price): number {
    return (p.perImage ?? 0) * (p.expectedImages ?? 1) + (p.perSecond ?? 0) * this.#seconds(p);
  }

  /** What a create of this model is expected to spend: reserved until the prediction ends. */
  estimate(model: string | undefined): Amounts {
    const { price } = this.priceOf(model);
    return { seconds: this.#seconds(price), cost: this.#expected(price) };
  }

  /** What a finished prediction really spent. */
  actual(model: string | undefined, p: Record<string, unknown>): Amounts {
    const { price } = this.priceOf(model);
    const seconds = predictTimeOfPrediction(p);
    return { seconds, cost: (price.perImage ?? 0) * imagesOf(p) + (price.perSecond ?? 0) * seconds };
  }
}

export function readPricesFile(path: string, defaultSeconds: number): PriceTable {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new PricesError(`invalid configuration: PRICES_FILE ${path} cannot be read: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  let doc: unknown;
  const yaml = /\.ya?ml$/i.test(path);
  try {
    doc = yaml ? parseYaml(text) : JSON.parse(text);
  } catch {
    throw new PricesError(`invalid configuration: PRICES_FILE ${path} is not valid ${yaml ? 'YAML' : 'JSON'}`);
  }
  const parsed = PricesFileSchema.safeParse(doc);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new PricesError(`invalid configuration: PRICES_FILE ${issue.path.join('.') || 'the file'}: ${issue.message}`);
  }
  return new PriceTable(parsed.data, defaultSeconds);
}
