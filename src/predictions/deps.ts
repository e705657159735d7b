// What the prediction use cases work with: the shared clients, this process's memory, and who is calling.
import type { FastifyBaseLogger } from 'fastify';
import type { Budgets } from '../budget/budgets.js';
import type { Config } from '../config.js';
import type { Lifecycle } from '../lifecycle/lifecycle.js';
import type { Metrics } from '../metrics.js';
import type { Store } from '../store/store.js';
import type { Principal } from '../types.js';
import type { VersionBook } from '../models/versions.js';
import type { Upstreams } from '../upstream/upstreams.js';
import type { ClientInputs } from './client-inputs.js';
import type { Facts } from './facts.js';
import type { Poller } from './poller.js';
import type { PredictionBody } from './prediction.js';

export interface PredictionDeps {
  config: Config;
  store: Store;
  /** Every upstream account; a prediction's calls go to the one it is pinned to. */
  upstream: Upstreams;
  metrics: Metrics;
  facts: Facts;
  poller: Poller;
  /** Puts the client's own input back into upstream answers. */
  inputs: ClientInputs;
  versions: VersionBook;
  budgets: Budgets;
  /** Where what a read saw is reported, and the one place that decides a prediction ended. */
  lifecycle: Lifecycle;
}

export interface Caller {
  principal: Principal;
  requestId: string;
  log: FastifyBaseLogger;
  /** Told the upstream time and outcome of each upstream call made for this request. */
  observe: (latencyMs: number, outcome: string) => void;
  /** The request's trace context while tracing is on: upstream attempts become its child spans. */
  trace?: unknown;
}

/** A use case's answer; the route renders it for the request's base URL. */
export interface Answer {
  status: number;
  body: PredictionBody;
  /** GET and cancel: whether the terminal cache answered, or a shared upstream call. */
  cache?: 'HIT' | 'MISS' | 'COALESCED';
  /** A create answered from its Idempotency-Key record. */
  replayed?: boolean;
  /** The id a create started, for the access log. */
  created?: string;
  /** A create's x-budget-remaining-* as its reservation left them. */
  headers?: Record<string, string>;
}
