// Reading a prediction (GET) and canceling it: ownership first, then the terminal cache, then the upstream. What
// the upstream answers is reported to the lifecycle (src/lifecycle/), which decides what it means.
import { GatewayError } from '../errors.js';
import { upstreamDepth } from './create.js';
import type { Answer, Caller, PredictionDeps } from './deps.js';
import { PredictionBody, sameId } from './prediction.js';

const notFound = (id: string) => new GatewayError('NOT_FOUND', `prediction ${id} was not found`);

/**
 * What is already known of an id the caller may read: its terminal body, or (for a poll) a fresh answer. The owner
 * comes from this process's memory when it has seen the id (an owner never changes), else from the store together
 * with the cached terminal prediction in one trip. Someone else's prediction looks exactly like a missing one.
 */
async function known(deps: PredictionDeps, tenant: string, id: string, poll: boolean): Promise<{ terminal?: PredictionBody; fresh?: PredictionBody; upstream?: string }> {
  const { facts, store, poller } = deps;
  const owner = facts.owners.get(id);
  if (owner !== undefined) {
    if (owner !== tenant) throw notFound(id);
    const local = facts.terminal(id);
    if (local) return { terminal: local };
    const fresh = poll ? poller.peek(id) : undefined;
    if (fresh) return { fresh };
  }
  const found = await store.lookup(id);
  if (found.owner !== tenant) throw notFound(id);
  facts.owners.set(id, tenant);
  // The same trip names its account; none stored: created before there were several, on the first one listed.
  const upstream = deps.upstream.resolve(found.upstream);
  if (!found.terminal) return { upstream };
  const terminal = new PredictionBody(found.terminal);
  facts.setTerminal(id, terminal);
  return { terminal, upstream };
}

function hit(body: PredictionBody): Answer {
  return { status: 200, body, cache: 'HIT' };
}

export async function getPrediction(deps: PredictionDeps, caller: Caller, id: string): Promise<Answer> {
  const tenant = caller.principal.tenant.id;
  const { terminal, fresh, upstream } = await known(deps, tenant, id, true);
  if (terminal) return hit(terminal);
  const { body, shared } = fresh ? { body: fresh, shared: true } : await deps.poller.get(id, { requestId: caller.requestId, tenant, observe: caller.observe, trace: caller.trace, upstream });
  if (shared) deps.metrics.coalesced.inc();
  // Only the request that fetched it reports it; those that shared the answer need not write it again. The end is
  // awaited (the next GET must find it cached); a running state is recorded without holding the answer.
  if (!shared) {
    if (body.terminal) await deps.lifecycle.ended(tenant, body);
    else deps.lifecycle.observedInBackground(tenant, body);
    deps.versions.learnFromPrediction(body.prediction);
  }
  return { status: 200, body, cache: shared ? 'COALESCED' : 'MISS' };
}

export async function cancelPrediction(deps: PredictionDeps, caller: Caller, id: string): Promise<Answer> {
  const tenant = caller.principal.tenant.id;
  const { terminal, upstream } = await known(deps, tenant, id, false);
  if (terminal) return hit(terminal);
  let res;
  try {
    res = await deps.upstream.client(upstream).request({
      method: 'POST',
      path: `/predictions/${encodeURIComponent(id)}/cancel`,
      requestId: caller.requestId,
      tenant,
      retry: true,
      observe: caller.observe,
      trace: caller.trace,
    });
  } finally {
    deps.poller.forget(id);
  }
  const body = await deps.inputs.restore(sameId(PredictionBody.fromUpstream(res.body, upstreamDepth(deps.config)), id));
  if (body.terminal) await deps.lifecycle.ended(tenant, body);
  else deps.lifecycle.observedInBackground(tenant, body);
  return { status: res.status, body, cache: 'MISS' };
}
