// The tenant's prediction list, from its own index in the store (never the upstream's list, which on the shared
// key holds every team's predictions), with opaque cursors both ways and running entries refreshed.
import { GatewayError } from '../errors.js';
import type { IndexEntry, ListQuery } from '../store/store.js';
import type { Caller, PredictionDeps } from './deps.js';
import { type CreatedWindow, windowPage } from './list-window.js';
import { keepTerminal } from './read.js';
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

/** Listed predictions refreshed at once, and how long a page may wait for them. */
const REFRESH_CONCURRENCY = 8;
const REFRESH_BUDGET_MS = 3000;

/**
 * The page's non-terminal entries as the upstream has them now. The create-time copy says `starting` forever when
 * nobody polls (the usual case with webhooks). Each refresh goes through the poller (coalesced with concurrent
 * polls), at most REFRESH_CONCURRENCY at once, within REFRESH_BUDGET_MS (or the upstream deadline if shorter); a
 * slow or failing one leaves its entry as it was rather than failing the page. Terminal answers are stored.
 */
async function refreshed(deps: PredictionDeps, caller: Caller, bodies: PredictionBody[]): Promise<PredictionBody[]> {
  const stale = bodies.map((b, i) => [b, i] as const).filter(([b]) => !b.terminal);
  if (!stale.length) return bodies;
  const out = [...bodies];
  const tenant = caller.principal.tenant.id;
  const until = Date.now() + Math.min(REFRESH_BUDGET_MS, deps.config.UPSTREAM_TIMEOUT_MS);
  let next = 0;
  async function worker(): Promise<void> {
    while (next < stale.length && Date.now() < until) {
      const [old, i] = stale[next++]!;
      const fresh = deps.poller.get(old.id, { requestId: caller.requestId, tenant, observe: caller.observe, trace: caller.trace }).then(async ({ body, shared }) => {
        if (body.terminal && !shared) {
          deps.poller.forget(body.id);
          await keepTerminal(deps, tenant, body);
        }
        return body;
      });
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<undefined>((r) => (timer = setTimeout(r, Math.max(0, until - Date.now()), undefined)));
      try {
        out[i] = (await Promise.race([fresh, late])) ?? old;
      } catch (err) {
        caller.log.info({ err, prediction: old.id }, 'could not refresh a listed prediction; listing it as last seen');
      } finally {
        clearTimeout(timer);
        fresh.catch(() => {});
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(REFRESH_CONCURRENCY, stale.length) }, worker));
  return out;
}

/**
 * At the running cap: the tenant's newest listed predictions still running, asked again upstream as a list would,
 * so that those which ended unseen (webhook users seldom poll) settle and free their slots. How many ended.
 */
export async function refreshRunning(deps: PredictionDeps, caller: Caller): Promise<number> {
  // A tenant that keeps retrying at its cap shares the last few seconds' refresh instead of starting another:
  // each 429 would otherwise cost up to PAGE_SIZE upstream reads on the shared account.
  const tenant = caller.principal.tenant.id;
  const recent = deps.runningRefreshes.get(tenant);
  if (recent) return recent;
  const fresh = refreshRunningNow(deps, caller);
  deps.runningRefreshes.set(tenant, fresh);
  return fresh.catch((err: unknown) => {
    deps.runningRefreshes.delete(tenant);
    throw err;
  });
}

async function refreshRunningNow(deps: PredictionDeps, caller: Caller): Promise<number> {
  const { entries } = await deps.store.listPage(caller.principal.tenant.id, { limit: PAGE_SIZE });
  const before = entries.map((e) => new PredictionBody(e.json));
  const after = await refreshed(deps, caller, before);
  return after.filter((b, i) => b.terminal && !before[i]!.terminal).length;
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
  const bodies = await refreshed(deps, caller, entries.map((e) => new PredictionBody(e.json)));
  const results = bodies.map((b) => b.render(base));
  return `{"next":${JSON.stringify(link('n', next))},"previous":${JSON.stringify(link('p', previous))},"results":[${results.join(',')}]}`;
}
