// The tenant's prediction list, from its own index in the store only (never the upstream's list, which on the shared
// key holds every team's predictions), with opaque cursors both ways. It makes no upstream call: each entry's record
// is the prediction as the gateway last saw it, which the watcher keeps current (src/lifecycle/).
import { GatewayError } from '../errors.js';
import type { IndexEntry, ListQuery } from '../store/store.js';
import type { Caller, PredictionDeps } from './deps.js';
import { type CreatedWindow, windowPage } from './list-window.js';
import { PredictionBody } from './prediction.js';

export const PAGE_SIZE = 100;

/** A cursor the gateway issued: `n<score>` (older, the next page) or `p<score>` (newer), base64url. */
export function encodeCursor(dir: 'n' | 'p', score: number): string {
  return Buffer.from(`${dir}${score}`).toString('base64url');
}

export function decodeCursor(cursor: string | undefined, limit = PAGE_SIZE): ListQuery {
  if (!cursor) return { limit };
  const m = /^([np])(\d+)$/.exec(Buffer.from(cursor, 'base64url').toString());
  if (!m) throw new GatewayError('VALIDATION', 'query cursor is not a cursor this gateway issued');
  return m[1] === 'n' ? { limit, before: Number(m[2]) } : { limit, after: Number(m[2]) };
}

/** Which neighbouring pages exist, as the scores their cursors start from. */
export function neighbours(q: ListQuery, entries: IndexEntry[], hasMore: boolean): { next?: number; previous?: number } {
  const first = entries[0];
  const last = entries.at(-1);
  // Older pages exist when this page is full going back, or when we came here going forward.
  const olderExist = q.after !== undefined ? entries.length > 0 : hasMore;
  const newerExist = q.after !== undefined ? hasMore : q.before !== undefined && entries.length > 0;
  return { next: olderExist && last ? last.score : undefined, previous: newerExist && first ? first.score : undefined };
}

/**
 * One page as the client gets it: `next`/`previous` absolute gateway URLs (the client follows them verbatim), which
 * keep the `created_after`/`created_before` window (the SDK re-sends only what the link holds after its first page).
 */
export async function listPredictions(deps: PredictionDeps, caller: Caller, cursor: string | undefined, base: string, window: CreatedWindow = { query: '' }): Promise<string> {
  const q = decodeCursor(cursor);
  const { entries, hasMore } = await windowPage(deps.store, caller.principal.tenant.id, q, window);
  const { next, previous } = neighbours(q, entries, hasMore);
  const link = (dir: 'n' | 'p', score: number | undefined) =>
    score === undefined ? null : `${base}/replicate/v1/predictions?cursor=${encodeCursor(dir, score)}${window.query}`;
  const results = entries.map((e) => new PredictionBody(e.json).render(base));
  return `{"next":${JSON.stringify(link('n', next))},"previous":${JSON.stringify(link('p', previous))},"results":[${results.join(',')}]}`;
}
