// The mirrored /replicate/v1 routes: create (by model, by version), get, cancel, list. Ownership, the terminal
// cache, idempotent creates and URL rewriting are decided here; the upstream client does the transport.
import { createHash, randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { GatewayError, storeUnavailable } from '../errors.js';
import { modelAllowed } from '../gateway/models.js';
import { type IdempotencyRecord, TERMINAL_STATUSES } from '../store/store.js';
import type { Principal } from '../types.js';
import { normalizePrefer, type UpstreamResponse } from '../upstream.js';
import { Facts } from './facts.js';
import { Poller } from './poller.js';
import { type Prediction, publicBase, rewriteUrls } from './rewrite.js';
import { CreateByModelSchema, CreateByVersionSchema, IdParamsSchema, ListQuerySchema, ModelParamsSchema, parse } from './schemas.js';

const PAGE_SIZE = 100;
const IDEMPOTENCY_POLL_MS = 100;

/** How long a create that succeeded upstream keeps retrying to record itself while the store is unavailable. */
const RECORD_RETRY_MS = 10_000;

/** Runs a store call, retrying on STORE_UNAVAILABLE (Redis reconnecting) for up to RECORD_RETRY_MS. */
async function untilStored<T>(write: () => Promise<T>): Promise<T> {
  const until = Date.now() + RECORD_RETRY_MS;
  for (let pause = 50; ; pause = Math.min(pause * 2, 500)) {
    try {
      return await write();
    } catch (err) {
      if (!(err instanceof GatewayError && err.code === 'STORE_UNAVAILABLE') || Date.now() + pause > until) throw err;
      await sleep(pause);
    }
  }
}

// The UTC day usage is counted under; worked out again only when a day has ended.
let day = { name: '', startsAt: 0, endsAt: 0 };
function today(): string {
  const now = Date.now();
  if (now >= day.endsAt || now < day.startsAt) {
    const startsAt = now - (now % 86_400_000);
    day = { name: new Date(now).toISOString().slice(0, 10), startsAt, endsAt: startsAt + 86_400_000 };
  }
  return day.name;
}

function sendBody(reply: FastifyReply, status: number, json: string): FastifyReply {
  return reply.code(status).type('application/json; charset=utf-8').send(json);
}

function sendJson(reply: FastifyReply, status: number, body: unknown): FastifyReply {
  return sendBody(reply, status, JSON.stringify(body));
}

const notFound = (id: string) => new GatewayError('NOT_FOUND', `prediction ${id} was not found`);

function readPrediction(res: UpstreamResponse): Prediction {
  let p: unknown;
  try {
    p = JSON.parse(res.body);
  } catch {
    p = undefined;
  }
  if (!p || typeof p !== 'object' || typeof (p as Prediction).id !== 'string') {
    throw new GatewayError('UPSTREAM_ERROR', `the upstream answered ${res.status} with a body that is not a prediction`);
  }
  return p as Prediction;
}

const isTerminal = (p: Prediction) => typeof p.status === 'string' && TERMINAL_STATUSES.has(p.status);

export async function predictionRoutes(app: FastifyInstance): Promise<void> {
  const { config, store, upstream, metrics } = app.gw;
  const poller = new Poller(upstream, config.POLL_CACHE_MS);
  const facts = new Facts();
  // Renderings of one upstream answer, shared by every request that got the same (coalesced or micro-cached) answer.
  const rendered = new WeakMap<UpstreamResponse, { base: string; body: string }>();
  const base = (req: FastifyRequest) => publicBase(req, config.PUBLIC_BASE_URL);

  function observe(request: FastifyRequest, route: string, res: UpstreamResponse) {
    request.upstreamMs = (request.upstreamMs ?? 0) + res.latencyMs;
    metrics.upstreamDuration.observe({ route, outcome: res.status < 400 ? 'ok' : `http_${res.status}` }, res.latencyMs / 1000);
  }

  /**
   * Caches a terminal prediction as received (before rewriting), counts its usage once, and remembers it in this
   * process, so its next GET needs no store trip.
   */
  async function keepIfTerminal(p: Prediction, raw: string, tenant: string): Promise<void> {
    if (!isTerminal(p)) return;
    const metricsObj = p.metrics as { predict_time?: unknown } | undefined;
    const predictTime = typeof metricsObj?.predict_time === 'number' ? metricsObj.predict_time : 0;
    await store.recordTerminal({ id: p.id as string, tenant, json: raw, status: p.status as string, predictTime, day: today() });
    facts.setTerminal(p.id as string, raw);
  }

  function checkAllowed(principal: Principal, model: string | undefined, version: string | undefined) {
    const { tenant, token } = principal;
    if (model !== undefined) {
      if (!modelAllowed(model, tenant.models) || (token?.models && !modelAllowed(model, token.models))) {
        throw new GatewayError('FORBIDDEN', `model ${model} is not allowed for ${token?.models ? 'this token' : `tenant ${tenant.id}`}`);
      }
      return;
    }
    // A version names no model the gateway can check, so tenants with an allowlist must list versions explicitly.
    const hasAllowlist = tenant.models !== undefined || tenant.versions !== undefined;
    if (hasAllowlist && !tenant.versions?.includes(version!)) {
      throw new GatewayError('FORBIDDEN', `version ${version} is not in the allowed versions of tenant ${tenant.id}`);
    }
    // The upstream may run a version by its hash whatever name precedes it, so a token narrowed to models may only
    // use versions the tenant lists explicitly, and only of those models.
    if (token?.models) {
      const named = /^([^/:]+\/[^/:]+):/.exec(version!)?.[1];
      if (!named || !modelAllowed(named, token.models) || !tenant.versions?.includes(version!)) {
        throw new GatewayError('FORBIDDEN', `version ${version} is not allowed for this token`);
      }
    }
  }

  async function spendTokenBudget(principal: Principal) {
    const token = principal.token;
    if (token?.maxCreates === undefined) return;
    const ttlMs = Math.max(1000, token.exp * 1000 - Date.now() + 60_000);
    const used = await store.incrCounter(`tok:${token.jti}`, ttlMs);
    if (used > token.maxCreates) {
      throw new GatewayError('RATE_LIMITED', `this token's create budget of ${token.maxCreates} is used up; request a new token`, {
        headers: { 'retry-after': String(Math.max(1, Math.ceil(token.exp - Date.now() / 1000))) },
      });
    }
  }

  /** Replays a finished idempotent create, or waits for a concurrent one (another request or replica) to finish. */
  async function awaitIdempotent(
    request: FastifyRequest,
    reply: FastifyReply,
    key: string,
    fingerprint: string,
    deadline: number,
    first: IdempotencyRecord,
  ) {
    // The first record is the one the claim attempt found: no second read for it.
    for (let rec: IdempotencyRecord | null = first; ; rec = await store.idemGet(key)) {
      if (!rec) return false; // released: the first attempt failed before the upstream created anything
      if (rec.fingerprint !== fingerprint) {
        throw new GatewayError('IDEMPOTENCY_MISMATCH', 'this Idempotency-Key was already used with a different request body');
      }
      if (rec.state === 'done') {
        metrics.idempotentReplays.inc();
        reply.header('idempotent-replayed', 'true');
        const p = JSON.parse(rec.body!) as Prediction;
        // Not `return sendJson(...)`: a FastifyReply is thenable, and an async function would await it.
        sendJson(reply, rec.status!, rewriteUrls(p, base(request)));
        return true;
      }
      if (Date.now() + IDEMPOTENCY_POLL_MS > deadline) {
        throw new GatewayError('CONFLICT', 'a request with this Idempotency-Key is still in progress; retry later', {
          headers: { 'retry-after': '1' },
        });
      }
      await sleep(IDEMPOTENCY_POLL_MS);
    }
  }

  async function create(request: FastifyRequest, reply: FastifyReply, path: string, body: Record<string, unknown>) {
    const principal = request.principal!;
    const tenant = principal.tenant.id;
    const prefer = normalizePrefer(typeof request.headers.prefer === 'string' ? request.headers.prefer : undefined);
    // Sync mode extends the deadline to wait + 10 s; it never shortens the configured one.
    const timeoutMs = Math.max(config.UPSTREAM_TIMEOUT_MS, prefer.waitSeconds ? (prefer.waitSeconds + 10) * 1000 : 0);
    // A create the gateway could not record would be a paid job nobody can read: refuse it up front.
    if (!store.isReady()) {
      throw storeUnavailable();
    }

    const idemHeader = request.headers['idempotency-key'];
    let idemKey: string | undefined;
    let fingerprint = '';
    if (idemHeader !== undefined) {
      if (typeof idemHeader !== 'string' || !/^[\x21-\x7e]{1,255}$/.test(idemHeader)) {
        throw new GatewayError('BAD_REQUEST', 'Idempotency-Key must be 1-255 visible ASCII characters');
      }
      idemKey = `${tenant}:${createHash('sha256').update(idemHeader).digest('hex')}`;
      fingerprint = createHash('sha256').update(path).update('\n').update(JSON.stringify(body)).digest('hex');
      const deadline = Date.now() + timeoutMs;
      // Claim the key; whoever holds it already is either finished (replay) or still running (wait for it). If Redis
      // dies between taking the claim and answering, the retry finds this request's own claim and goes on.
      const holder = randomUUID();
      for (;;) {
        const existing = await untilStored(() => store.idemBegin(idemKey!, fingerprint, timeoutMs + 30_000, holder));
        if (!existing) break;
        if (await awaitIdempotent(request, reply, idemKey, fingerprint, deadline, existing)) return reply;
      }
    }

    let res: UpstreamResponse;
    try {
      await spendTokenBudget(principal);
      res = await upstream.request({
        method: 'POST',
        path,
        body: request.rawBody ?? JSON.stringify(body),
        requestId: request.id,
        prefer: prefer.header,
        cancelAfter: typeof request.headers['cancel-after'] === 'string' ? request.headers['cancel-after'] : undefined,
        retry: false,
        timeoutMs,
      });
    } catch (err) {
      // After a timeout the upstream may have created the job: keep the key claimed until its lease ends, so a
      // retry cannot start it a second time. Any other failure created nothing.
      if (idemKey && !(err instanceof GatewayError && err.code === 'UPSTREAM_TIMEOUT')) await store.idemRelease(idemKey).catch(() => {});
      throw err;
    }
    observe(request, 'create', res);
    if (res.status < 200 || res.status >= 300) {
      if (idemKey) await store.idemRelease(idemKey).catch(() => {});
      throw upstream.errorFor(res);
    }
    const p = readPrediction(res);
    const id = p.id as string;
    // The upstream job exists now (and is paid for): a store blip must not turn it into a 503 the client retries
    // into a second job. Keep trying to record it; only if the store stays down is the job canceled.
    try {
      await untilStored(() => store.recordCreate(tenant, id, Date.now() * 1000 + Math.floor(Math.random() * 1000), res.body, today()));
    } catch (err) {
      request.log.error({ prediction: id, err }, 'created upstream but could not record it; canceling the upstream prediction');
      await upstream
        .request({ method: 'POST', path: `/predictions/${encodeURIComponent(id)}/cancel`, requestId: request.id, retry: true })
        .catch(() => {});
      throw err;
    }
    // Recorded: from here the client gets its 201 even if the cache or the idempotency record cannot be written
    // (a later GET fills the cache; an unrecorded key only means a retry is not recognised as one).
    await untilStored(() => keepIfTerminal(p, res.body, tenant)).catch((err) => request.log.warn({ err, prediction: id }, 'could not cache the terminal prediction'));
    if (idemKey) {
      const done = { state: 'done' as const, fingerprint, status: res.status, body: res.body };
      await untilStored(() => store.idemComplete(idemKey, done, config.IDEMPOTENCY_TTL_SECONDS)).catch((err) =>
        request.log.warn({ err, prediction: id }, 'could not record the idempotent response'),
      );
    }
    facts.setOwner(id, tenant);
    // The access line names the prediction a create started: one log line per create, not two.
    request.createdPrediction = id;
    return sendJson(reply, res.status, rewriteUrls(p, base(request)));
  }

  app.post('/models/:owner/:name/predictions', { config: { create: true } }, async (request, reply) => {
    const { owner, name } = parse(ModelParamsSchema, request.params, 'path');
    const body = parse(CreateByModelSchema, request.body, 'body');
    checkAllowed(request.principal!, `${owner}/${name}`, undefined);
    return create(request, reply, `/models/${owner}/${name}/predictions`, body);
  });

  app.post('/predictions', { config: { create: true } }, async (request, reply) => {
    const body = parse(CreateByVersionSchema, request.body, 'body');
    checkAllowed(request.principal!, undefined, body.version);
    return create(request, reply, '/predictions', body);
  });

  /** A cached terminal prediction, its URLs rewritten for this request's base (the last rendering is reused). */
  function sendTerminal(request: FastifyRequest, reply: FastifyReply, id: string, raw: string) {
    metrics.cache.inc({ result: 'hit' });
    request.cacheResult = 'HIT';
    reply.header('x-cache', 'HIT');
    const b = base(request);
    const t = facts.terminal(id) ?? facts.setTerminal(id, raw);
    if (t.base !== b) {
      t.body = JSON.stringify(rewriteUrls(JSON.parse(t.raw) as Prediction, b));
      t.base = b;
    }
    return sendBody(reply, 200, t.body!);
  }

  /**
   * What is already known of an id the caller may read: its terminal body, or (for a poll) a fresh answer. The owner
   * comes from this process's memory when it has seen the id (an owner never changes), else from the store together
   * with the cached terminal prediction in one trip. Someone else's prediction looks exactly like a missing one.
   */
  async function known(request: FastifyRequest, id: string, poll: boolean): Promise<{ terminal?: string; fresh?: UpstreamResponse }> {
    const tenant = request.principal!.tenant.id;
    const owner = facts.owner(id);
    if (owner !== undefined) {
      if (owner !== tenant) throw notFound(id);
      const local = facts.terminal(id);
      if (local) return { terminal: local.raw };
      const fresh = poll ? poller.peek(id) : undefined;
      if (fresh) return { fresh };
    }
    const found = await store.lookup(id);
    if (found.owner !== tenant) throw notFound(id);
    facts.setOwner(id, tenant);
    return { terminal: found.terminal ?? undefined };
  }

  app.get('/predictions/:id', async (request, reply) => {
    const { id } = parse(IdParamsSchema, request.params, 'path');
    const tenant = request.principal!.tenant.id;
    const { terminal, fresh } = await known(request, id, true);
    if (terminal) return sendTerminal(request, reply, id, terminal);
    metrics.cache.inc({ result: 'miss' });
    const { res, shared } = fresh ? { res: fresh, shared: true } : await poller.get(id, request.id);
    if (shared) metrics.coalesced.inc();
    else observe(request, 'get', res);
    request.cacheResult = shared ? 'COALESCED' : 'MISS';
    reply.header('x-cache', 'MISS');
    if (res.status !== 200) throw upstream.errorFor(res);
    const b = base(request);
    let r = rendered.get(res);
    if (!r || r.base !== b) {
      const p = readPrediction(res);
      if (isTerminal(p)) {
        poller.forget(id);
        // Only the request that fetched it stores it; those that shared the answer need not write it again.
        if (!shared) {
          await keepIfTerminal(p, res.body, tenant);
        }
      }
      r = { base: b, body: JSON.stringify(rewriteUrls(p, b)) };
      rendered.set(res, r);
    }
    return sendBody(reply, 200, r.body);
  });

  app.post('/predictions/:id/cancel', async (request, reply) => {
    const { id } = parse(IdParamsSchema, request.params, 'path');
    const tenant = request.principal!.tenant.id;
    const { terminal } = await known(request, id, false);
    if (terminal) return sendTerminal(request, reply, id, terminal);
    const res = await upstream.request({ method: 'POST', path: `/predictions/${encodeURIComponent(id)}/cancel`, requestId: request.id, retry: true });
    observe(request, 'cancel', res);
    poller.forget(id);
    request.cacheResult = 'MISS';
    reply.header('x-cache', 'MISS');
    if (res.status < 200 || res.status >= 300) throw upstream.errorFor(res);
    const p = readPrediction(res);
    await keepIfTerminal(p, res.body, tenant);
    return sendJson(reply, res.status, rewriteUrls(p, base(request)));
  });

  // Never forwarded: on the shared key the upstream list holds every team's predictions.
  // Key only: a browser token would otherwise list every prediction of its tenant, other end users' included.
  app.get('/predictions', { config: { keyOnly: true } }, async (request, reply) => {
    const { cursor } = parse(ListQuerySchema, request.query, 'query');
    const tenant = request.principal!.tenant.id;
    let q: { limit: number; before?: number; after?: number } = { limit: PAGE_SIZE };
    if (cursor) {
      const m = /^([np])(\d+)$/.exec(Buffer.from(cursor, 'base64url').toString());
      if (!m) throw new GatewayError('VALIDATION', 'query cursor is not a cursor this gateway issued');
      q = m[1] === 'n' ? { limit: PAGE_SIZE, before: Number(m[2]) } : { limit: PAGE_SIZE, after: Number(m[2]) };
    }
    const { entries, hasMore } = await store.listPage(tenant, q);
    const b = base(request);
    const link = (dir: 'n' | 'p', score: number) =>
      `${b}/replicate/v1/predictions?cursor=${Buffer.from(`${dir}${score}`).toString('base64url')}`;
    const first = entries[0];
    const last = entries.at(-1);
    // Older pages exist when this page is full going back, or when we came here going forward.
    const olderExist = q.after !== undefined ? entries.length > 0 : hasMore;
    const newerExist = q.after !== undefined ? hasMore : q.before !== undefined && entries.length > 0;
    return sendJson(reply, 200, {
      next: olderExist && last ? link('n', last.score) : null,
      previous: newerExist && first ? link('p', first.score) : null,
      results: entries.map((e) => rewriteUrls(JSON.parse(e.json) as Prediction, b)),
    });
  });

  // The official client uploads Blob inputs here first (multipart); a 501 makes it fall back to a data: URI.
  await app.register(async (files) => {
    files.addContentTypeParser('*', (_req, payload, done) => {
      payload.resume();
      payload.on('end', () => done(null, undefined));
      payload.on('error', done);
    });
    files.post('/files', async () => {
      throw new GatewayError('NOT_IMPLEMENTED', 'file uploads are not supported by this gateway; send the file inline as a data: URI');
    });
  });
}
