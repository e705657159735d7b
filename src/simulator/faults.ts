// Fault injection: a FIFO queue of faults and the gate every API request passes (faults, then auth) before its route.
import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import { PassThrough } from 'node:stream';
import type { FastifyReply, FastifyRequest, HookHandlerDoneFunction, onSendHookHandler } from 'fastify';
import { DEFAULT_EMBED_FIELDS, type EmbedField, HugePredictionBody, embedInAnswer } from './answers.js';
import type { PredictionStore } from './predictions.js';
import { NOT_FOUND, ROUTES, SIM_PREFIX, UNAUTHENTICATED, isPlainObject, newApiError, pathOf } from './protocol.js';
import type { TimerSet } from './timers.js';

export type { EmbedField } from './answers.js';

export type Fault =
  | { kind: 'status'; status: number; body?: unknown; headers?: Record<string, string> }
  | { kind: 'hang' }
  | { kind: 'slowBody'; delayMs: number }
  | { kind: 'reset' }
  | { kind: 'delay'; delayMs: number }
  /**
   * Answered as if the request concerned prediction `id`: a get or cancel of any id answers 200 with `id`
   * (refreshed), a create answers 201 with the existing `id` (a deduplicating reseller) and creates nothing, any
   * other API request answers 200 with it too; 404 when `id` is unknown. Nothing is canceled: only the answer is
   * wrong. Authenticated as usual.
   */
  | { kind: 'replaceId'; id: string }
  /**
   * The normal answer (authenticated as usual), with `text` planted in `fields` of the prediction(s) it carries,
   * default logs, error and urls.stream. The stored prediction is unchanged; error bodies are left alone.
   */
  | { kind: 'embed'; text: string; fields?: EmbedField[] }
  /**
   * A valid JSON prediction (the one the path names, else a fresh unstored one) of at least `bytes` bytes, its logs
   * padded, streamed in 64 KiB chunks with an exact content-length. Status default 201 for creates, else 200.
   * Skips auth, like `status`.
   */
  | { kind: 'hugeBody'; bytes: number; status?: number };

/** What a matcher may look at besides method and path: the parsed JSON body is there, a GET's is undefined. */
export interface FaultRequest {
  headers: Record<string, string | string[] | undefined>;
  body: unknown;
}

export interface FaultOptions {
  /** How many matching requests the fault applies to: a positive integer, or Infinity for "until clearFaults()". Default 1. */
  times?: number;
  /** Which requests the fault applies to (path without the query); default all API requests. */
  match?: (method: string, path: string, req: FaultRequest) => boolean;
}

interface PendingFault {
  fault: Fault;
  remaining: number;
  match: FaultOptions['match'];
}

const DEFAULT_FAULT_MESSAGES: Record<number, string> = {
  429: 'upstream load saturated',
  500: 'internal server error',
  502: 'bad gateway',
  503: 'no available channel',
  504: 'upstream timeout',
  524: 'upstream timeout',
};

function checkFault(fault: Fault, times: number): void {
  if (!(times === Infinity || (Number.isInteger(times) && times > 0))) {
    throw new RangeError(`simulator: fault times must be a positive integer or Infinity, got ${times}`);
  }
  if (fault.kind === 'hugeBody' && !(Number.isFinite(fault.bytes) && fault.bytes >= 0)) {
    throw new RangeError(`simulator: hugeBody bytes must be a finite number >= 0, got ${fault.bytes}`);
  }
}

/** Faults in injection order; a request takes the first whose matcher accepts it. */
export class FaultQueue {
  private readonly pending: PendingFault[] = [];

  get size(): number {
    return this.pending.length;
  }

  push(fault: Fault, opts?: FaultOptions): void {
    const times = opts?.times ?? 1;
    checkFault(fault, times);
    this.pending.push({ fault, remaining: times, match: opts?.match });
  }

  clear(): void {
    this.pending.length = 0;
  }

  /** Takes one use of the first fault matching the request (Infinity never runs out), or returns undefined. */
  take(method: string, path: string, req: FaultRequest): Fault | undefined {
    const pending = this.pending;
    for (let i = 0; i < pending.length; i++) {
      const f = pending[i];
      if (f.match !== undefined && !f.match(method, path, req)) continue;
      if (--f.remaining <= 0) pending.splice(i, 1);
      return f.fault;
    }
    return undefined;
  }
}

/** Faults that let the route answer and then change how its answer goes out. */
type AnswerFault = Extract<Fault, { kind: 'slowBody' | 'embed' }>;

export interface FaultGateOptions {
  store: PredictionStore;
  timers: TimerSet;
  authorized: (header: string | string[] | undefined) => boolean;
}

function isCreate(request: FastifyRequest): boolean {
  const route = request.routeOptions.url;
  return request.method === 'POST' && (route === ROUTES.createByModel || route === ROUTES.createByVersion);
}

/**
 * The preHandler and onSend hooks of the API. Faults apply after the body is read, so the record and matchers have
 * it, but before auth and the route handler. Callback-style hooks, and no work beyond one length check when no
 * fault is queued, keep the no-fault path free of promise and closure allocations.
 */
export class FaultGate {
  readonly queue = new FaultQueue();
  private readonly hungSockets = new Set<Socket>();
  private readonly answerFaults = new WeakMap<IncomingMessage, AnswerFault>();

  constructor(private readonly opts: FaultGateOptions) {}

  preHandler(request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction): void {
    if (!request.url.startsWith(SIM_PREFIX)) {
      done();
      return;
    }
    if (this.queue.size === 0) {
      if (this.authorize(request, reply)) done();
      return;
    }
    const fault = this.queue.take(request.method, pathOf(request.url), { headers: request.headers, body: request.body });
    if (fault === undefined) {
      if (this.authorize(request, reply)) done();
      return;
    }
    this.apply(fault, request, reply, done);
  }

  /** slowBody and embed: the route's serialized answer, delayed or rewritten. */
  readonly onSend: onSendHookHandler = (request, reply, payload, done) => {
    const fault = this.answerFaults.get(request.raw);
    if (fault === undefined) {
      done(null, payload);
      return;
    }
    if (fault.kind === 'embed') {
      done(null, typeof payload === 'string' ? embedInAnswer(payload, fault.text, fault.fields ?? DEFAULT_EMBED_FIELDS) : payload);
      return;
    }
    if (typeof payload !== 'string' && !Buffer.isBuffer(payload)) {
      done(null, payload);
      return;
    }
    // slowBody: status and headers go out at once, the (normal) body only after the delay.
    const res = reply.raw;
    reply.header('content-length', Buffer.byteLength(payload));
    const stream = new PassThrough();
    res.once('pipe', () => res.flushHeaders());
    this.opts.timers.after(fault.delayMs, () => stream.end(payload));
    done(null, stream);
  };

  /** Ends hung requests (their sockets would otherwise keep close() waiting) and drops queued faults. */
  close(): void {
    this.queue.clear();
    for (const s of this.hungSockets) s.destroy();
    this.hungSockets.clear();
  }

  private authorize(request: FastifyRequest, reply: FastifyReply): boolean {
    if (this.opts.authorized(request.headers.authorization)) return true;
    reply.code(401).send(UNAUTHENTICATED);
    return false;
  }

  private apply(fault: Fault, request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction): void {
    switch (fault.kind) {
      case 'status': {
        reply.code(fault.status);
        if (fault.headers) reply.headers(fault.headers);
        reply.send(fault.body ?? newApiError(DEFAULT_FAULT_MESSAGES[fault.status] ?? 'upstream load saturated', null));
        return;
      }
      case 'hang': {
        const socket = request.raw.socket;
        this.hungSockets.add(socket);
        socket.once('close', () => this.hungSockets.delete(socket));
        reply.hijack();
        return;
      }
      case 'reset':
        reply.hijack();
        request.raw.socket.destroy();
        return;
      case 'delay':
        this.opts.timers.after(fault.delayMs, () => {
          if (this.authorize(request, reply)) done();
        });
        return;
      case 'slowBody':
      case 'embed':
        this.answerFaults.set(request.raw, fault);
        if (this.authorize(request, reply)) done();
        return;
      case 'replaceId': {
        if (!this.authorize(request, reply)) return;
        const p = this.opts.store.get(fault.id);
        if (p === undefined) reply.code(404).send(NOT_FOUND);
        else reply.code(isCreate(request) ? 201 : 200).send(p);
        return;
      }
      case 'hugeBody': {
        const body = new HugePredictionBody(this.hugeBodyPrediction(request), fault.bytes);
        reply
          .code(fault.status ?? (isCreate(request) ? 201 : 200))
          .header('content-type', 'application/json; charset=utf-8')
          .header('content-length', body.length)
          .send(body);
        return;
      }
    }
  }

  private hugeBodyPrediction(request: FastifyRequest) {
    const params = request.params as { id?: string; owner?: string; name?: string } | undefined;
    const known = typeof params?.id === 'string' ? this.opts.store.get(params.id) : undefined;
    if (known !== undefined) return known;
    const body = isPlainObject(request.body) ? request.body : {};
    const model = typeof params?.owner === 'string' && typeof params.name === 'string' ? `${params.owner}/${params.name}` : 'sim/huge-body';
    return this.opts.store.draft(model, 'hidden', body, isPlainObject(body.input) ? body.input : {});
  }
}
