// In-process FuhuAPI simulator: a Replicate-style predictions API with lazy time-driven state and fault injection.
// This file wires the parts together and is the public face; the parts are:
//   predictions.ts  the prediction model and the PredictionMap
//   faults.ts       the fault queue and the gate (faults, then auth) before every API route
//   answers.ts      misbehaving answers: embedded text, huge streamed bodies
//   routes.ts       the HTTP routes
//   recorder.ts     the recorded requests
//   protocol.ts     paths, error bodies, header parsing
//   timers.ts       the timers close() clears
import Fastify from 'fastify';
import type { FastifyInstance } from 'fastify';
import { Billing, registerBillingRoutes } from './billing.js';
import { FaultGate, type Fault, type FaultOptions } from './faults.js';
import { PredictionStore, type Prediction, type PredictionStatus } from './predictions.js';
import { SIM_PREFIX, bearerChecker } from './protocol.js';
import { type RecordedRequest, RequestRecorder } from './recorder.js';
import { type DeliveryFile, registerRoutes } from './routes.js';
import { TimerSet } from './timers.js';

export { SIM_PREFIX } from './protocol.js';
export { isTerminalStatus } from './predictions.js';
export type { Prediction, PredictionStatus } from './predictions.js';
export type { EmbedField, Fault, FaultOptions, FaultRequest } from './faults.js';
export type { RecordedRequest } from './recorder.js';
export type { DeliveryFile } from './routes.js';

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
  /** Point output URLs at this simulator's stand-in for the output CDN instead of replicate.delivery (copy tests). */
  selfOutputUrls?: boolean;
  /** Files that stand-in serves by name (an input's `output` names them as "sim:<name>"). */
  deliveryFiles?: Record<string, DeliveryFile>;
  /**
   * Every API request waits this long before it is handled: the network and service time of a real upstream, which
   * a simulator on loopback otherwise answers in microseconds. Default 0.
   */
  latencyMs?: number;
  /**
   * Stand for a new-api reseller account with this balance (USD): its billing routes answer, each create spends
   * `createCost` (default 0.01), and an empty account refuses creates with new-api's "quota" 403. Default: no billing.
   */
  balance?: number;
  createCost?: number;
  /** Which balance routes the account serves: both (default), or only new-api's /api/usage/token (the billing pair answers an error body). */
  billingApi?: 'both' | 'token';
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
  /** Paths requested from the output CDN stand-in, oldest first (the last 10 000). */
  deliveries: string[];
  setStatus(id: string, status: PredictionStatus): void;
  /** The account's balance (USD), with `balance` set; undefined otherwise. */
  balance(): number | undefined;
  /** Sets what is left on the account (with `balance` set). */
  setBalance(remaining: number): void;
}

export function createSimulator(opts: SimulatorOptions): Simulator {
  const latencyMs = opts.latencyMs ?? 0;
  let baseUrl = '';
  let closed = false;
  const isClosed = () => closed;

  const timers = new TimerSet();
  const recorder = new RequestRecorder(opts.maxRecordedRequests ?? 10_000);
  const store = new PredictionStore({
    stepMs: opts.stepMs ?? 1000,
    maxPredictions: opts.maxPredictions ?? 100_000,
    retentionMs: opts.dataRetentionMs ?? 3_600_000,
    timers,
    streamUrl: (id) =>
      opts.selfStreamUrls && baseUrl ? `${baseUrl.slice(0, -SIM_PREFIX.length)}/stream/${id}` : `https://stream.replicate.com/v1/files/${id}`,
    outputUrl: (id, name) =>
      `${opts.selfOutputUrls && baseUrl ? baseUrl.slice(0, -SIM_PREFIX.length) + '/delivery' : 'https://replicate.delivery'}/xezq/${id}/${name}`,
  });
  const gate = new FaultGate({ store, timers, authorized: bearerChecker(opts.apiKey) });

  const app = Fastify({
    logger: opts.logger ?? false,
    forceCloseConnections: true,
    keepAliveTimeout: 72_000,
    bodyLimit: 20 * 1024 * 1024,
    return503OnClosing: false,
  });

  app.addHook('onRequest', (request, _reply, done) => {
    recorder.start(request);
    // Not a TimerSet timer: it is at most latencyMs long and on the benchmark's hot path; close() ends its socket.
    if (latencyMs > 0 && request.url.startsWith(SIM_PREFIX)) setTimeout(done, latencyMs);
    else done();
  });
  // One preHandler rather than two: the body is recorded before any fault can end the request.
  app.addHook('preHandler', (request, reply, done) => {
    recorder.attachBody(request);
    gate.preHandler(request, reply, done);
  });
  app.addHook('onSend', gate.onSend);
  const billing = opts.balance === undefined ? undefined : new Billing(opts.balance, opts.createCost ?? 0.01);
  if (billing) registerBillingRoutes(app, billing, opts.apiKey, opts.billingApi ?? 'both');
  const deliveries: string[] = [];
  const onDelivery = (path: string) => {
    if (deliveries.push(path) > 10_000) deliveries.splice(0, 5_000);
  };
  registerRoutes(app, { store, timers, isClosed, billing, deliveryFiles: opts.deliveryFiles, onDelivery });

  return {
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
      // Held creates and delayed faults lose their timers; force-closed connections then end them (see routes.ts).
      timers.clear();
      gate.close();
      await app.close();
    },
    requests: recorder.requests,
    clearRequests() {
      recorder.clear();
    },
    injectFault(fault, faultOpts) {
      gate.queue.push(fault, faultOpts);
    },
    clearFaults() {
      gate.queue.clear();
    },
    predictions: store.map,
    deliveries,
    setStatus(id, status) {
      store.setStatus(id, status);
    },
    balance: () => billing?.remaining,
    setBalance(remaining) {
      if (!billing) throw new Error('simulator: setBalance needs the balance option');
      billing.set(remaining);
    },
  };
}
