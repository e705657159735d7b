// zod at the edge: a request part that does not fit its schema is a 422 naming the field (a missing body, 400).
import type { z } from 'zod';
import { GatewayError } from '../errors.js';

export function parse<S extends z.ZodType>(schema: S, value: unknown, where: 'body' | 'path' | 'query'): z.output<S> {
  if (where === 'body' && (value === undefined || value === null || typeof value !== 'object' || Array.isArray(value))) {
    throw new GatewayError('BAD_REQUEST', 'the request body must be a JSON object');
  }
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  const issue = r.error.issues[0]!;
  const field = issue.path.length ? issue.path.join('.') : where;
  throw new GatewayError('VALIDATION', `${where === 'body' ? '' : `${where} `}${field} ${issue.message}`.trim());
}
