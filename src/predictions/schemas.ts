// Request shapes checked before anything leaves the gateway. Unknown body fields pass through unchanged.
import { z } from 'zod';

const slug = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/, 'may hold only letters, digits, ".", "_" and "-"');

export const ModelParamsSchema = z.object({ owner: slug, name: slug });
/** A prediction id the gateway's routes serve: also what an upstream answer's id must be (src/predictions/prediction.ts). */
export const PREDICTION_ID = /^[A-Za-z0-9_-]{1,128}$/;
export const IdParamsSchema = z.object({
  id: z.string().regex(PREDICTION_ID, 'may hold only letters, digits, "_" and "-"'),
});

const EVENTS = ['start', 'output', 'logs', 'completed'] as const;

const common = {
  input: z.record(z.string(), z.unknown(), { error: 'must be a JSON object' }),
  // Which URLs may receive webhooks is the webhook policy's call (src/webhooks/deliver.ts), at create.
  webhook: z.string({ error: 'must be a string' }).max(2048, 'must be at most 2048 characters').optional(),
  webhook_events_filter: z
    .array(z.enum(EVENTS, { error: `must be one of ${EVENTS.join(', ')}` }), { error: 'must be an array' })
    .optional(),
};

export const CreateByModelSchema = z.looseObject({
  ...common,
  // Replicate rejects a version on this route; say so before it costs a round trip.
  version: z.undefined({ error: 'is not accepted here; to pin a version use POST /replicate/v1/predictions' }).optional(),
});

export const CreateByVersionSchema = z.looseObject({
  ...common,
  version: z.string({ error: 'is required (a non-empty string)' }).min(1, 'is required (a non-empty string)'),
});

const isoQuery = z.string({ error: 'must be given once, as an ISO 8601 date-time' }).max(64, 'must be an ISO 8601 date-time').optional();
export const ListQuerySchema = z.object({ cursor: z.string().max(200).optional(), created_after: isoQuery, created_before: isoQuery });
