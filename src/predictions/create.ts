// Creating a prediction: idempotency, the token budget, one upstream call that is never retried, and one store
// write that records the owner, the index, usage, the idempotency record and either the end (a create that came back
// terminal) or the prediction's entry in the open set, which the watcher follows to its end (src/lifecycle/).
import { spendTokenCreate } from '../access/tokens.js';
import { GatewayError, storeUnavailable } from '../errors.js';
import { today } from '../usage/day.js';
import type { Answer, Caller, PredictionDeps } from './deps.js';
import { claimCreate } from './idempotency.js';
import type { ClientAttempt } from './client-retries.js';
import { PredictionBody } from './prediction.js';
import { normalizePrefer } from './prefer.js';
import { untilStored } from './store-retry.js';
import { predictTimeOf } from '../lifecycle/lifecycle.js';

export interface CreateInput {
  /** Upstream path: /models/{owner}/{name}/predictions or /predictions. */
  path: string;
  /** The body as the client sent it (and as the idempotency fingerprint sees it). */
  body: string;
  /**
   * The body that goes upstream (files inlined), made once the create is admitted; default: `body`. With `input`
   * when the gateway changed the input on its way (its files): the answers show that input, not the upstream's echo.
   */
  forward?: () => Promise<{ body: string; input?: unknown }>;
  /** The model created, for its price (by version: as the version book knows it); asked only when budgets apply. */
  model?: () => Promise<string | undefined>;
  prefer?: string;
  cancelAfter?: string;
  idempotencyKey?: unknown;
  /** The tenant's webhook for this prediction (src/webhooks/), kept with it in the open set. */
  webhook?: string;
  /** The upstream was given the gateway's receiver: it calls back, and polling is only the fallback. */
  hinted?: boolean;
  /** The client's own retry marker (X-Stainless-Retry-Count), if it sends one. */
  attempt?: ClientAttempt;
}

/** How deep an upstream prediction may nest: the client's own limit, plus the prediction and its `input`. */
export const upstreamDepth = (config: { JSON_MAX_DEPTH: number }) => config.JSON_MAX_DEPTH + 2;


export async function createPrediction(deps: PredictionDeps, caller: Caller, input: CreateInput): Promise<Answer> {
  const { config, store, upstream, metrics, facts } = deps;
  const tenant = caller.principal.tenant.id;
  const prefer = normalizePrefer(input.prefer);
  // Sync mode extends the deadline to wait + 10 s; it never shortens the configured one.
  const timeoutMs = Math.max(config.UPSTREAM_TIMEOUT_MS, prefer.waitSeconds ? (prefer.waitSeconds + 10) * 1000 : 0);
  // A create the gateway could not record would be a paid job nobody can read: refuse it up front.
  if (!store.isReady()) throw storeUnavailable();

  // Keys are scoped to the credential: two browser tokens of one tenant never replay each other's creates.
  const token = caller.principal.token;
  const { idem, replay } = await claimCreate(store, token ? `${tenant}:token:${token.jti}` : tenant, input, timeoutMs);
  if (replay) {
    metrics.idempotentReplays.inc();
    // The prediction as it is now (its record), under the create's status: the same prediction, never a second copy.
    const raw = replay.raw ?? (replay.id !== undefined ? (facts.terminal(replay.id)?.raw ?? (await store.current(replay.id)).record) : null);
    if (raw === null) throw new GatewayError('CONFLICT', 'the prediction this Idempotency-Key created is no longer stored; use a new key to create another');
    return { status: replay.status, body: new PredictionBody(raw), replayed: true };
  }

  // Asked at most once: budgets price the create by it, and accounts that take only some models route by it.
  let modelOnce: Promise<string | undefined> | undefined;
  const model = input.model && (() => (modelOnce ??= input.model!()));

  let res;
  let pinned: string;
  let reservation;
  let body: PredictionBody;
  let clientInput: unknown;
  try {
    // Budgets, the running cap and the share of the upstream account: admitted (and reserved) without a race, or a
    // 429. Running slots are freed by the watcher when predictions end, whether or not anyone asks about them.
    reservation = await deps.budgets.reserve(caller.principal, model, timeoutMs);
    const sent = input.forward ? await input.forward() : { body: input.body };
    clientInput = sent.input;
    await spendTokenCreate(store, caller.principal.token);
    // One account runs it; another is tried only after an answer that started no job (src/upstream/upstreams.ts).
    const routed = await upstream.create(upstream.restricted && model ? await model() : undefined, (client) =>
      client.request({
        method: 'POST',
        path: input.path,
        body: sent.body,
        requestId: caller.requestId,
        tenant,
        prefer: prefer.header,
        cancelAfter: input.cancelAfter,
        retry: false,
        timeoutMs,
        observe: caller.observe,
        trace: caller.trace,
      }),
    );
    res = routed.value;
    pinned = routed.upstream;
    // A 2xx that is not a prediction started nothing the gateway could ever follow: a failed create like any other.
    body = PredictionBody.fromUpstream(res.body, upstreamDepth(config));
    // The upstream echoes the files it was given (megabytes of data: URIs): the client, the store and every later
    // answer get the gateway URLs the client sent instead.
    if (clientInput !== undefined) body = body.withInput(clientInput);
  } catch (err) {
    // After a timeout the upstream may have created the job: keep the key claimed until its lease ends, so a
    // retry cannot start it a second time. Any other failure created nothing, or nothing the gateway can hand over
    // (an answer that is not a prediction, an id its routes refuse): the key and the reservation are freed.
    const timedOut = err instanceof GatewayError && err.code === 'UPSTREAM_TIMEOUT';
    if (idem && !timedOut) await idem.release();
    if (reservation) await deps.budgets.end(reservation, timedOut);
    throw err;
  }
  const id = body.id;
  const now = Date.now();
  deps.versions.learnFromPrediction(body.prediction);
  // A create that came back terminal (Prefer: wait) ends in the same store step that records it.
  const terminal = body.terminal ? { status: body.prediction.status as string, predictTime: predictTimeOf(body), cost: deps.budgets.actual(body.prediction).cost } : undefined;
  // The upstream job exists now (and is paid for): a store blip must not turn it into a 503 the client retries
  // into a second job. Keep trying to record it; only if the store stays down is the job canceled.
  let recorded: boolean;
  try {
    recorded = await untilStored(() =>
      store.recordCreate({
        tenant,
        id,
        score: now * 1000 + Math.floor(Math.random() * 1000),
        json: body.raw,
        day: today(),
        terminal,
        idem: idem && { key: idem.key, record: idem.done(res.status, id), ttlSeconds: idem.ttlSeconds ?? config.IDEMPOTENCY_TTL_SECONDS },
        upstream: pinned,
        // Settled when the gateway sees the prediction end; the watcher gives up on it (and settles it as expired)
        // after PREDICTION_MAX_OPEN_SECONDS, and the reservation lapses a minute after that if even that failed.
        reservation: reservation && { rid: reservation.rid, expiresAt: deps.budgets.now() + config.PREDICTION_MAX_OPEN_SECONDS * 1000 + 60_000 },
        open: terminal
          ? undefined
          : { due: now + (input.hinted ? config.WATCH_MAX_MS : config.WATCH_MIN_MS), meta: { tenant, createdAt: now, webhook: input.webhook, hinted: input.hinted || undefined, upstream: pinned } },
      }),
    );
  } catch (err) {
    caller.log.error({ prediction: id, err }, 'created upstream but could not record it; canceling the upstream prediction');
    await upstream.client(pinned).request({ method: 'POST', path: `/predictions/${encodeURIComponent(id)}/cancel`, requestId: caller.requestId, tenant, retry: true }).catch(() => {});
    throw err;
  }
  if (!recorded) {
    // A deduplicating or confused upstream answered with a prediction another tenant owns: never hand it over.
    if (idem) await idem.release();
    if (reservation) await deps.budgets.end(reservation, false);
    caller.log.error({ prediction: id }, 'the upstream answered a create with an id another tenant owns; refused');
    throw new GatewayError('UPSTREAM_ERROR', 'the upstream answered this create with a prediction that belongs to someone else; nothing was created for you');
  }
  facts.owners.set(id, tenant);
  if (clientInput !== undefined) deps.inputs.remember(id, clientInput);
  if (terminal) {
    facts.setTerminal(id, body);
    deps.lifecycle.createdTerminal(tenant, body);
  }
  return { status: res.status, body, created: id, headers: reservation?.headers };
}
