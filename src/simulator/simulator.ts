// In-process FuhuAPI simulator: a Replicate-style predictions API with lazy time-driven state and fault injection.
import { randomBytes } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { PassThrough } from 'node:stream';
import Fastify from 'fastify';
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';

export const SIM_PREFIX = '/replicate/v1';

export type PredictionStatus = 'starting' | 'processing' | 'succeeded' | 'failed' | 'canceled' | 'aborted';

export interface Prediction {
  id: string;
  model: string;
  version: string;
  input: Record<string, unknown>;
  output: unknown;
  logs: string;
  error: string | null;
  status: PredictionStatus;
  created_at: string;
  started_at: string | null;
  completed_at: string | null;
  data_removed: boolean;
  metrics: Record<string, number>;
  urls: { get: string; cancel: string; web: string; stream: string };
  webhook?: string;
  webhook_events_filter?: string[];
}

export interface SimulatorOptions {
  apiKey: string;
  stepMs?: number;
  logger?: boolean;
  /** Cap on `requests`; the oldest half is dropped when full so long benchmarks stay bounded. Default 10 000, 0 disables recording. */
  maxRecordedRequests?: number;
  /** Cap on stored predictions; the oldest is evicted (then 404s). Default 100 000. */
  maxPredictions?: number;
  /** Output is removed this long after completion, as Replicate does after 1 h. Default 3 600 000. */
  dataRetentionMs?: number;
  /** Point urls.stream at this simulator's own SSE route instead of stream.replicate.com (for stream tests). */
  selfStreamUrls?: boolean;
  /**
   * Every API request waits this long before it is handled: the network and service time of a real upstream, which
   * a simulator on loopback otherwise answers in microseconds. Default 0.
   */
  latencyMs?: number;
}

export interface RecordedRequest {
  method: string;
  url: string;
  headers: Record<string, string | string[] | undefined>;
  body: unknown;
}

export type Fault =
  | { kind: 'status'; status: number; body?: unknown; headers?: Record<string, string> }
  | { kind: 'hang' }
  | { kind: 'slowBody'; delayMs: number }
  | { kind: 'reset' }
  | { kind: 'delay'; delayMs: number };

export interface FaultOptions {
  times?: number;
  match?: (method: string, path: string) => boolean;
}

export interface Simulator {
  app: FastifyInstance;
  readonly url: string;
  listen(port?: number, host?: string): Promise<string>;
  close(): Promise<void>;
  requests: RecordedRequest[];
  clearRequests(): void;
  injectFault(fault: Fault, opts?: FaultOptions): void;
  clearFaults(): void;
  predictions: Map<string, Prediction>;
  setStatus(id: string, status: PredictionStatus): void;
}

interface Meta {
  createdMs: number;
  durationMs: number;
  outcome: 'succeeded' | 'failed' | 'aborted';
  // frozen: no more time-driven transitions (terminal, canceled or forced by setStatus)
  frozen: boolean;
  completedMs: number;
}

interface PendingFault {
  fault: Fault;
  remaining: number;
  match: ((method: string, path: string) => boolean) | undefined;
}

const TERMINAL: ReadonlySet<string> = new Set(['succeeded', 'failed', 'canceled', 'aborted']);
const ID_ALPHABET = 'abcdefghijklmnopqrstuvwxyz234567';

export function isTerminalStatus(status: string): boolean {
  return TERMINAL.has(status);
}

// 26 base32 chars like Replicate ids; 256 is a multiple of 32 so `& 31` stays uniform.
function newPredictionId(): string {
  const bytes = randomBytes(26);
  let id = '';
  for (let i = 0; i < 26; i++) id += ID_ALPHABET[bytes[i] & 31];
  return id;
}

function problem(status: number, title: string, detail: string) {
  return { title, detail, status };
}

const NOT_FOUND = problem(404, 'Not found', 'The requested resource could not be found.');
const UNAUTHENTICATED = problem(401, 'Unauthenticated', 'You did not pass an authentication token');

const DEFAULT_FAULT_MESSAGES: Record<number, string> = {
  429: 'upstream load saturated',
  500: 'internal server error',
  502: 'bad gateway',
  503: 'no available channel',
  504: 'upstream timeout',
  524: 'upstream timeout',
};

function newApiError(message: string, code: string | null) {
  return { error: { message, type: 'new_api_error', code } };
}

function pathOf(url: string): string {
  const q = url.indexOf('?');
  return q === -1 ? url : url.slice(0, q);
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

// Only `wait` matters; `wait=n` is clamped to Replicate's 1..60 s because real clients send larger values.
function parsePreferWait(header: string | string[] | undefined): number | undefined {
  if (header === undefined) return undefined;
  const value = Array.isArray(header) ? header.join(',') : header;
  const m = /(?:^|[\s,;])wait(?:\s*=\s*(\d+))?(?=$|[\s,;])/i.exec(value);
  if (!m) return undefined;
  if (m[1] === undefined) return 60;
  const n = Number(m[1]);
  if (n <= 0) return undefined;
  return Math.min(n, 60);
}

class PredictionMap extends Map<string, Prediction> {
  // Refreshes lazily-computed state whenever tests read the map directly.
  constructor(private readonly refresh: (p: Prediction) => void) {
    super();
  }
  override get(key: string): Prediction | undefined {
    const p = super.get(key);
    if (p !== undefined) this.refresh(p);
    return p;
  }
  raw(key: string): Prediction | undefined {
    return super.get(key);
  }
  override *values(): MapIterator<Prediction> {
    for (const p of super.values()) {
      this.refresh(p);
      yield p;
    }
  }
  override *entries(): MapIterator<[string, Prediction]> {
    for (const [k, p] of super.entries()) {
      this.refresh(p);
      yield [k, p];
    }
  }
  override [Symbol.iterator](): MapIterator<[string, Prediction]> {
    return this.entries();
  }
  override forEach(cb: (value: Prediction, key: string, map: Map<string, Prediction>) => void, thisArg?: unknown): void {
    for (const [k, p] of this.entries()) cb.call(thisArg, p, k, this);
  }
}

export function createSimulator(opts: SimulatorOptions): Simulator {
  const stepMs = opts.stepMs ?? 1000;
  const maxRecorded = opts.maxRecordedRequests ?? 10_000;
  const maxPredictions = opts.maxPredictions ?? 100_000;
  const retentionMs = opts.dataRetentionMs ?? 3_600_000;
  const latencyMs = opts.latencyMs ?? 0;
  const expectedAuth = `bearer ${opts.apiKey}`;

  const requests: RecordedRequest[] = [];
  const faults: PendingFault[] = [];
  const meta = new WeakMap<Prediction, Meta>();
  const records = new WeakMap<IncomingMessage, RecordedRequest>();
  const slowBodies = new WeakMap<IncomingMessage, number>();
  const hungSockets = new Set<Socket>();
  const timers = new Set<NodeJS.Timeout>();
  // id -> wake-up callbacks of `Prefer: wait` creates, poked on cancel/setStatus
  const waiters = new Map<string, Set<() => void>>();
  let baseUrl = '';
  let closed = false;

  function finish(p: Prediction, m: Meta, status: PredictionStatus, atMs: number): void {
    m.frozen = true;
    m.completedMs = atMs;
    p.status = status;
    p.completed_at = new Date(atMs).toISOString();
    const startedMs = p.started_at === null ? undefined : Date.parse(p.started_at);
    if (status === 'succeeded') {
      if (startedMs === undefined) {
        p.started_at = new Date(m.createdMs).toISOString();
        p.logs = 'Using seed: 42\n';
      }
      p.output = [`https://replicate.delivery/xezq/${p.id}/out-0.webp`];
      p.error = null;
      p.logs += 'Generated 1 image\n';
      p.metrics = {
        predict_time: (atMs - (startedMs ?? m.createdMs)) / 1000,
        total_time: (atMs - m.createdMs) / 1000,
      };
    } else if (status === 'failed') {
      if (startedMs === undefined) p.started_at = new Date(m.createdMs).toISOString();
      p.output = null;
      p.error = 'simulated failure';
      p.logs += 'Error: simulated failure\n';
      p.metrics = { predict_time: (atMs - (startedMs ?? m.createdMs)) / 1000, total_time: (atMs - m.createdMs) / 1000 };
    } else if (status === 'canceled') {
      p.output = null;
      p.error = null;
      p.metrics = startedMs === undefined
        ? { total_time: (atMs - m.createdMs) / 1000 }
        : { predict_time: (atMs - startedMs) / 1000, total_time: (atMs - m.createdMs) / 1000 };
    } else {
      // aborted: ended before it ever started
      p.started_at = null;
      p.output = null;
      p.error = null;
      p.metrics = {};
    }
  }

  function refresh(p: Prediction): void {
    const m = meta.get(p);
    if (m === undefined) return;
    const now = Date.now();
    if (!m.frozen) {
      const elapsed = now - m.createdMs;
      if (elapsed >= m.durationMs) {
        if (m.outcome !== 'aborted' && p.started_at === null) startProcessing(p, m.createdMs + Math.floor(m.durationMs / 2));
        finish(p, m, m.outcome, m.createdMs + m.durationMs);
      } else if (m.outcome !== 'aborted' && p.status === 'starting' && elapsed >= m.durationMs / 2) {
        startProcessing(p, m.createdMs + Math.floor(m.durationMs / 2));
      }
    }
    if (m.frozen && !p.data_removed && isTerminalStatus(p.status) && now - m.completedMs >= retentionMs) {
      p.output = null;
      p.data_removed = true;
    }
  }

  function startProcessing(p: Prediction, atMs: number): void {
    p.status = 'processing';
    p.started_at = new Date(atMs).toISOString();
    p.logs = 'Using seed: 42\n';
  }

  const predictions = new PredictionMap(refresh);

  function wake(id: string): void {
    const set = waiters.get(id);
    if (set === undefined) return;
    waiters.delete(id);
    for (const fn of set) fn();
  }

  function storePrediction(model: string, version: string, body: Record<string, unknown>, input: Record<string, unknown>): Prediction {
    const id = newPredictionId();
    const now = Date.now();
    const p: Prediction = {
      id,
      model,
      version,
      input,
      output: null,
      logs: '',
      error: null,
      status: 'starting',
      created_at: new Date(now).toISOString(),
      started_at: null,
      completed_at: null,
      data_removed: false,
      metrics: {},
      urls: {
        get: `https://api.replicate.com/v1/predictions/${id}`,
        cancel: `https://api.replicate.com/v1/predictions/${id}/cancel`,
        web: `https://replicate.com/p/${id}`,
        stream: opts.selfStreamUrls && baseUrl ? `${baseUrl.slice(0, -SIM_PREFIX.length)}/stream/${id}` : `https://stream.replicate.com/v1/files/${id}`,
      },
    };
    if (typeof body.webhook === 'string') p.webhook = body.webhook;
    if (Array.isArray(body.webhook_events_filter)) p.webhook_events_filter = body.webhook_events_filter as string[];
    const d = input.duration_ms;
    const durationMs = typeof d === 'number' && Number.isFinite(d) && d >= 0 ? d : 2 * stepMs;
    const prompt = input.prompt;
    const outcome = input.abort === true
      ? 'aborted'
      : input.fail === true || (typeof prompt === 'string' && prompt.includes('fail'))
        ? 'failed'
        : 'succeeded';
    meta.set(p, { createdMs: now, durationMs, outcome, frozen: false, completedMs: 0 });
    if (predictions.size >= maxPredictions) {
      const oldest = predictions.keys().next();
      if (!oldest.done) predictions.delete(oldest.value);
    }
    predictions.set(id, p);
    refresh(p); // duration_ms: 0 is terminal right away
    return p;
  }

  // Holds a `Prefer: wait` create until terminal, the deadline, a cancel/setStatus poke, or the client leaving.
  async function waitForTerminal(p: Prediction, waitSeconds: number, res: ServerResponse): Promise<void> {
    const deadline = Date.now() + waitSeconds * 1000;
    let gone = false;
    const onClose = () => {
      gone = true;
    };
    res.once('close', onClose);
    try {
      for (;;) {
        refresh(p);
        const now = Date.now();
        if (closed || gone || isTerminalStatus(p.status) || now >= deadline) return;
        const m = meta.get(p);
        const wakeAt = m === undefined || m.frozen ? deadline : Math.min(deadline, m.createdMs + m.durationMs);
        await new Promise<void>((resolve) => {
          let set = waiters.get(p.id);
          if (set === undefined) {
            set = new Set();
            waiters.set(p.id, set);
          }
          const done = () => {
            clearTimeout(t);
            timers.delete(t);
            set.delete(done);
            res.off('close', done);
            resolve();
          };
          const t = setTimeout(done, Math.max(0, wakeAt - now));
          timers.add(t);
          set.add(done);
          res.once('close', done);
        });
      }
    } finally {
      res.off('close', onClose);
    }
  }

  function modelError(model: string, reply: FastifyReply): FastifyReply | undefined {
    if (model === 'sim/quota-exceeded') {
      return reply.code(403).send(newApiError('user quota is not enough', 'insufficient_user_quota'));
    }
    if (model === 'sim/no-channel') {
      return reply.code(503).send(newApiError(`no available channel for model ${model}`, null));
    }
    return undefined;
  }

  async function create(
    request: FastifyRequest,
    reply: FastifyReply,
    model: string,
    version: string,
    body: Record<string, unknown>,
  ): Promise<FastifyReply> {
    const errorReply = modelError(model, reply);
    if (errorReply !== undefined) return errorReply;
    const input = body.input;
    if (!isPlainObject(input)) {
      return reply.code(422).send(problem(422, 'Invalid input', '- input: Invalid type. Expected: object, given: ' + (input === undefined ? 'null' : Array.isArray(input) ? 'array' : typeof input)));
    }
    const p = storePrediction(model, version, body, input);
    const wait = parsePreferWait(request.headers.prefer);
    if (wait !== undefined && !isTerminalStatus(p.status)) {
      await waitForTerminal(p, wait, reply.raw);
      // a closing simulator drops held creates like a dying upstream would
      if (closed) {
        reply.hijack();
        reply.raw.destroy();
        return reply;
      }
    }
    return reply.code(201).send(p);
  }

  const app = Fastify({
    logger: opts.logger ?? false,
    forceCloseConnections: true,
    keepAliveTimeout: 72_000,
    bodyLimit: 20 * 1024 * 1024,
    return503OnClosing: false,
  });

  // The official client cancels with `Content-Type: application/json` and an empty body.
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (_req, body, done) => {
    const text = body as string;
    if (text.length === 0 || text.trim().length === 0) {
      done(null, undefined);
      return;
    }
    try {
      done(null, JSON.parse(text));
    } catch {
      const err = new Error('Request body is not valid JSON') as FastifyError;
      err.statusCode = 400;
      done(err, undefined);
    }
  });

  app.addHook('onRequest', (request, _reply, done) => {
    if (maxRecorded > 0 && request.url.startsWith(SIM_PREFIX)) {
      const rec: RecordedRequest = { method: request.method, url: request.url, headers: { ...request.headers }, body: undefined };
      if (requests.length >= maxRecorded) requests.splice(0, Math.max(1, maxRecorded >> 1));
      requests.push(rec);
      records.set(request.raw, rec);
    }
    if (latencyMs > 0 && request.url.startsWith(SIM_PREFIX)) setTimeout(done, latencyMs);
    else done();
  });

  function authorized(request: FastifyRequest): boolean {
    const auth = request.headers.authorization;
    return typeof auth === 'string' && auth.length === expectedAuth.length && auth.slice(0, 7).toLowerCase() === 'bearer ' && auth.slice(7) === opts.apiKey;
  }

  // Faults apply after the body is read (so the record has it) but before auth and the route handler.
  // Callback-style hooks keep the no-fault path free of promise allocations.
  app.addHook('preHandler', (request, reply, done) => {
    const rec = records.get(request.raw);
    if (rec !== undefined) rec.body = request.body;
    if (!request.url.startsWith(SIM_PREFIX)) {
      done();
      return;
    }
    const checkAuth = () => {
      if (!authorized(request)) {
        reply.code(401).send(UNAUTHENTICATED);
        return;
      }
      done();
    };
    if (faults.length === 0) {
      checkAuth();
      return;
    }
    const path = pathOf(request.url);
    const idx = faults.findIndex((f) => f.match === undefined || f.match(request.method, path));
    if (idx === -1) {
      checkAuth();
      return;
    }
    const pending = faults[idx];
    if (--pending.remaining <= 0) faults.splice(idx, 1);
    const fault = pending.fault;
    switch (fault.kind) {
      case 'status': {
        reply.code(fault.status);
        if (fault.headers) reply.headers(fault.headers);
        reply.send(fault.body ?? newApiError(DEFAULT_FAULT_MESSAGES[fault.status] ?? 'upstream load saturated', null));
        return;
      }
      case 'hang': {
        const socket = request.raw.socket;
        hungSockets.add(socket);
        socket.once('close', () => hungSockets.delete(socket));
        reply.hijack();
        return;
      }
      case 'reset':
        reply.hijack();
        request.raw.socket.destroy();
        return;
      case 'slowBody':
        slowBodies.set(request.raw, fault.delayMs);
        checkAuth();
        return;
      case 'delay': {
        const t = setTimeout(() => {
          timers.delete(t);
          checkAuth();
        }, fault.delayMs);
        timers.add(t);
        return;
      }
    }
  });

  // slowBody: status and headers go out at once, the (normal) body only after the delay.
  app.addHook('onSend', (request, reply, payload, done) => {
    const delayMs = slowBodies.get(request.raw);
    if (delayMs === undefined || (typeof payload !== 'string' && !Buffer.isBuffer(payload))) {
      done(null, payload);
      return;
    }
    const res = reply.raw;
    reply.header('content-length', Buffer.byteLength(payload));
    const stream = new PassThrough();
    res.once('pipe', () => res.flushHeaders());
    const t = setTimeout(() => {
      timers.delete(t);
      stream.end(payload);
    }, delayMs);
    timers.add(t);
    done(null, stream);
  });

  app.setErrorHandler((err: FastifyError, _request, reply) => {
    const status = err.statusCode !== undefined && err.statusCode >= 400 ? err.statusCode : 500;
    const title = status === 400 ? 'Bad request' : status === 413 ? 'Payload too large' : status === 415 ? 'Unsupported media type' : status < 500 ? 'Invalid request' : 'Internal server error';
    return reply.code(status).send(problem(status, title, err.message));
  });

  app.setNotFoundHandler((_request, reply) => reply.code(404).send(NOT_FOUND));

  app.post<{ Params: { owner: string; name: string } }>(`${SIM_PREFIX}/models/:owner/:name/predictions`, async (request, reply) => {
    const body = request.body;
    if (!isPlainObject(body)) {
      return reply.code(422).send(problem(422, 'Invalid input', '- input: Invalid type. Expected: object, given: null'));
    }
    if ('version' in body) {
      return reply.code(422).send(problem(422, 'Input validation failed', '- (root): Additional property version is not allowed'));
    }
    const { owner, name } = request.params;
    return create(request, reply, `${owner}/${name}`, 'hidden', body);
  });

  app.post(`${SIM_PREFIX}/predictions`, async (request, reply) => {
    const body = request.body;
    if (!isPlainObject(body)) {
      return reply.code(422).send(problem(422, 'Invalid input', '- input: Invalid type. Expected: object, given: null'));
    }
    const version = body.version;
    if (typeof version !== 'string' || version.length === 0) {
      return reply.code(422).send(problem(422, 'Invalid version', '- version: version is required and must be a string'));
    }
    const colon = version.lastIndexOf(':');
    let model = 'unknown/unknown';
    let hash = version;
    if (colon !== -1) {
      model = version.slice(0, colon);
      hash = version.slice(colon + 1);
    }
    return create(request, reply, model, hash, body);
  });

  app.get<{ Params: { id: string } }>(`${SIM_PREFIX}/predictions/:id`, async (request, reply) => {
    const p = predictions.get(request.params.id);
    if (p === undefined) return reply.code(404).send(NOT_FOUND);
    return reply.send(p);
  });

  app.post<{ Params: { id: string } }>(`${SIM_PREFIX}/predictions/:id/cancel`, async (request, reply) => {
    const p = predictions.get(request.params.id);
    if (p === undefined) return reply.code(404).send(NOT_FOUND);
    const m = meta.get(p);
    if (m !== undefined && !isTerminalStatus(p.status)) {
      finish(p, m, 'canceled', Date.now());
      wake(p.id);
    }
    return reply.send(p);
  });

  app.get(`${SIM_PREFIX}/predictions`, async (_request, reply) => {
    const results: Prediction[] = [];
    for (const p of predictions.values()) results.push(p);
    results.reverse();
    return reply.send({ next: null, previous: null, results });
  });

  // Stand-in for urls.stream (which stays on stream.replicate.com); unauthenticated like the real one.
  app.get<{ Params: { id: string } }>('/stream/:id', async (request, reply) => {
    if (predictions.raw(request.params.id) === undefined) return reply.code(404).send(NOT_FOUND);
    return reply
      .header('content-type', 'text/event-stream')
      .header('cache-control', 'no-store')
      .send('event: output\ndata: hello\n\nevent: done\ndata: {}\n\n');
  });

  function setStatus(id: string, status: PredictionStatus): void {
    const p = predictions.get(id);
    if (p === undefined) throw new Error(`simulator: unknown prediction ${id}`);
    let m = meta.get(p);
    if (m === undefined) {
      const created = Date.parse(p.created_at);
      m = { createdMs: Number.isNaN(created) ? Date.now() : created, durationMs: 0, outcome: 'succeeded', frozen: true, completedMs: 0 };
      meta.set(p, m);
    }
    const now = Date.now();
    m.frozen = true;
    p.data_removed = false;
    if (status === 'starting') {
      Object.assign(p, { status, started_at: null, completed_at: null, output: null, error: null, logs: '', metrics: {} });
    } else if (status === 'processing') {
      Object.assign(p, { completed_at: null, output: null, error: null, metrics: {} });
      startProcessing(p, now);
    } else {
      if (status !== 'aborted' && p.started_at === null) startProcessing(p, now);
      finish(p, m, status, now);
    }
    wake(id);
  }

  const sim: Simulator = {
    app,
    get url() {
      return baseUrl;
    },
    async listen(port = 0, host = '127.0.0.1') {
      await app.listen({ port, host });
      const addr = app.server.address();
      if (addr === null || typeof addr === 'string') throw new Error('simulator: unexpected listen address');
      const h = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
      baseUrl = `http://${h === '0.0.0.0' ? '127.0.0.1' : h === '[::]' ? '[::1]' : h}:${addr.port}${SIM_PREFIX}`;
      return baseUrl;
    },
    async close() {
      if (closed) return;
      closed = true;
      for (const t of timers) clearTimeout(t);
      timers.clear();
      for (const s of hungSockets) s.destroy();
      hungSockets.clear();
      await app.close();
    },
    requests,
    clearRequests() {
      requests.length = 0;
    },
    injectFault(fault, faultOpts) {
      faults.push({ fault, remaining: faultOpts?.times ?? 1, match: faultOpts?.match });
    },
    clearFaults() {
      faults.length = 0;
    },
    predictions,
    setStatus,
  };
  return sim;
}
