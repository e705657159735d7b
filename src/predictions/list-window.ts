// `created_after` / `created_before` on the prediction list (Replicate's new SDK types them, its paginator re-sends
// them, its MCP server offers them to agents): a window on the tenant's index, whose scores are create times in
// microseconds (src/predictions/create.ts), so the store still reads one range per page.
import { GatewayError } from '../errors.js';
import type { IndexEntry, ListQuery, Store } from '../store/store.js';

export interface CreatedWindow {
  /** Scores at or above this (created_after, inclusive). */
  min?: number;
  /** Scores below this (created_before, exclusive). */
  max?: number;
  /** The window as the client wrote it, for the next and previous links (`&created_after=…`), or ''. */
  query: string;
}

// RFC 3339 / ISO 8601 extended: a date, or a date and time with optional seconds, fraction (to the nanosecond) and
// offset; a time without an offset is UTC, as Replicate reads it.
const ISO = /^(\d{4})-(\d{2})-(\d{2})(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?([Zz]|[+-]\d{2}(?::?\d{2})?)?)?$/;

/** Microseconds since the epoch of an ISO 8601 date-time; 422 naming `field` when it is not one. */
export function isoMicros(value: string, field: string): number {
  const bad = () => new GatewayError('VALIDATION', `query ${field} must be an ISO 8601 date-time, e.g. 2025-01-31T12:00:00Z`);
  const m = ISO.exec(value);
  if (!m) throw bad();
  const [, y, mo, d, h = '0', mi = '0', s = '0', frac = '', zone = 'Z'] = m;
  const n = (v: string) => Number(v);
  const ms = Date.UTC(n(y!), n(mo!) - 1, n(d!), n(h), n(mi), n(s));
  const back = new Date(ms);
  // Date.UTC rolls 2025-02-30 over to March: a field out of range shows as a different date coming back.
  if (!Number.isFinite(ms) || back.getUTCDate() !== n(d!) || back.getUTCMonth() !== n(mo!) - 1 || n(h) > 23 || n(mi) > 59 || n(s) > 59) throw bad();
  let offsetMin = 0;
  if (zone !== 'Z' && zone !== 'z') {
    const z = /^([+-])(\d{2}):?(\d{2})?$/.exec(zone)!;
    const [hh, mm] = [n(z[2]!), n(z[3] ?? '0')];
    if (hh > 23 || mm > 59) throw bad();
    offsetMin = (z[1] === '-' ? -1 : 1) * (hh * 60 + mm);
  }
  return (ms - offsetMin * 60_000) * 1000 + n(frac.padEnd(6, '0').slice(0, 6));
}

export function createdWindow(after: string | undefined, before: string | undefined): CreatedWindow {
  const w: CreatedWindow = { query: '' };
  if (after !== undefined) {
    w.min = isoMicros(after, 'created_after');
    w.query += `&created_after=${encodeURIComponent(after)}`;
  }
  if (before !== undefined) {
    w.max = isoMicros(before, 'created_before');
    w.query += `&created_before=${encodeURIComponent(before)}`;
  }
  return w;
}

/**
 * One page of the tenant's index inside the window. The cursor's range is narrowed to the window's near side, and
 * one entry more is read so that a page ending at the window's far side says so (no `next` to an empty page).
 */
export async function windowPage(store: Store, tenant: string, q: ListQuery, w: CreatedWindow): Promise<{ entries: IndexEntry[]; hasMore: boolean }> {
  if (w.min === undefined && w.max === undefined) return store.listPage(tenant, q);
  const ask: ListQuery = { limit: q.limit + 1 };
  const forward = q.after !== undefined;
  if (forward) ask.after = w.min === undefined ? q.after : Math.max(q.after!, w.min - 1);
  else if (q.before !== undefined || w.max !== undefined) ask.before = Math.min(q.before ?? Infinity, w.max ?? Infinity);
  const { entries, hasMore } = await store.listPage(tenant, ask);
  const inside = entries.filter((e) => (w.min === undefined || e.score >= w.min) && (w.max === undefined || e.score < w.max));
  const more = inside.length > q.limit || (hasMore && inside.length === entries.length);
  // Newest first either way: going back the extra entry is the oldest (last), going forward the newest (first).
  return { entries: forward ? inside.slice(Math.max(0, inside.length - q.limit)) : inside.slice(0, q.limit), hasMore: more };
}
