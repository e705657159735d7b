// The undici client for FuhuAPI: the one place the upstream key is used. One deadline per call, safe retries and
// the breaker live here, so every route gets them the same way; a non-2xx answer is thrown as a GatewayError.
import { setTimeout as sleep } from 'node:timers/promises';
import { BrokenCircuitError, CircuitState, ConsecutiveBreaker, circuitBreaker, handleWhen } from 'cockatiel';
import { Pool } from 'undici';
import { GatewayError } from '../errors.js';
import { fromTransportError, fromUpstreamStatus, parseRetryAfter } from './answers.js';

export interface UpstreamOptions {
  baseUrl: string;
  apiKey: string;
  timeoutMs: number;
  retries: number;
  /** Sockets kept open to the upstream. */
  connections?: number;
  /** Consecutive failures that open the breaker, and how long it stays open. */
  breakerThreshold?: number;
  breakerCooldownMs?: number;
}

export interface UpstreamRequest {
  method: 'GET' | 'POST';
  /** Path below the base URL, starting with '/'. */
  path: string;
  body?: string;
  requestId: string;
  prefer?: string;
  cancelAfter?: string;
  /** Only GET and cancel are safe to send twice; a create never is. */
  retry: boolean;
  /** Overrides the deadline (a `Prefer: wait` create needs longer). */
  timeoutMs?: number;
  /** Called once per call with the time spent on it (every attempt and the pauses between) and its outcome. */
  observe?: (latencyMs: number, outcome: string) => void;
}

export interface UpstreamResponse {
  status: number;
  retryAfter?: string;
  body: string;
  /** Whether this answer says the upstream itself is unwell (counts towards opening the breaker). */
  unhealthy: boolean;
}

const RETRY_STATUS = new Set([429, 502, 503, 504, 524]);
const RETRY_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'UND_ERR_SOCKET', 'UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_CLOSED']);
/** Answers to a create that concern the model asked for rather than the upstream as a whole. */
const MODEL_SPECIFIC_STATUS = new Set([500, 503]);

const ok = (status: number) => status >= 200 && status < 300;

export class UpstreamClient {
  readonly #pool: Pool;
  readonly #basePath: string;
  readonly #auth: string;
  readonly #secrets: readonly string[];
  readonly #opts: Required<UpstreamOptions>;
  readonly #breaker;
  #openedAt = 0;

  constructor(opts: UpstreamOptions) {
    this.#opts = { connections: 128, breakerThreshold: 5, breakerCooldownMs: 5000, ...opts };
    const url = new URL(opts.baseUrl);
    this.#basePath = url.pathname.replace(/\/+$/, '');
    this.#secrets = [opts.apiKey];
    this.#auth = `Bearer ${opts.apiKey}`;
    this.#pool = new Pool(url.origin, {
      connections: this.#opts.connections,
      connect: { timeout: Math.min(opts.timeoutMs, 10_000) },
      // The call's own AbortSignal is the one deadline; undici's 300 s defaults would only hide a missing one.
      headersTimeout: 0,
      bodyTimeout: 0,
      keepAliveTimeout: 30_000,
    });
    // Transport failures and unhealthy answers count towards opening the breaker; 4xx are the caller's problem.
    this.#breaker = circuitBreaker(
      handleWhen((err) => !(err instanceof GatewayError) || err.statusCode >= 500).orWhenResult((r) => (r as UpstreamResponse).unhealthy),
      { halfOpenAfter: this.#opts.breakerCooldownMs, breaker: new ConsecutiveBreaker(this.#opts.breakerThreshold) },
    );
    this.#breaker.onBreak(() => (this.#openedAt = Date.now()));
  }

  get breakerOpen(): boolean {
    return this.#breaker.state === CircuitState.Open;
  }

  /** A 2xx answer, or a GatewayError: the upstream's refusal (scrubbed), a transport failure or the deadline. */
  async request(req: UpstreamRequest): Promise<UpstreamResponse> {
    const timeoutMs = req.timeoutMs ?? this.#opts.timeoutMs;
    const deadline = Date.now() + timeoutMs;
    // One deadline for the whole call, every attempt and pause included.
    const signal = AbortSignal.timeout(timeoutMs);
    const maxAttempts = req.retry ? this.#opts.retries + 1 : 1;
    const started = performance.now();
    const done = (outcome: string) => req.observe?.(performance.now() - started, outcome);
    for (let attempt = 1; ; attempt++) {
      let res: UpstreamResponse | undefined;
      let failure: unknown;
      try {
        // Half-open: one probe is already testing the upstream. cockatiel would queue every other call behind it
        // (for as long as the probe's deadline); fail fast instead, as while open.
        if (this.#breaker.state === CircuitState.HalfOpen) throw new BrokenCircuitError();
        res = await this.#breaker.execute(() => this.#once(req, signal));
      } catch (err) {
        failure = err;
      }
      if (res && ok(res.status)) {
        done('ok');
        return res;
      }
      if (failure instanceof BrokenCircuitError) {
        done('breaker_open');
        const left = Math.max(1, Math.ceil((this.#openedAt + this.#opts.breakerCooldownMs - Date.now()) / 1000));
        throw new GatewayError('UPSTREAM_UNAVAILABLE', 'the upstream is failing repeatedly; requests are paused for a short cool-down', {
          cause: failure,
          headers: { 'retry-after': String(left) },
        });
      }
      const retryable = req.retry && attempt < maxAttempts && !signal.aborted &&
        (res ? RETRY_STATUS.has(res.status) : RETRY_CODES.has((failure as { code?: string }).code ?? ''));
      const pauseMs = this.#backoff(attempt, res ? parseRetryAfter(res.retryAfter) : undefined);
      // A retry that could not finish before the deadline only makes the client wait longer for the same failure.
      if (!retryable || Date.now() + pauseMs + 50 >= deadline) {
        if (res) {
          done(`http_${res.status}`);
          throw fromUpstreamStatus(res.status, res.body, res.retryAfter, this.#secrets);
        }
        const mapped = fromTransportError(failure, signal.aborted);
        done(mapped.code === 'UPSTREAM_TIMEOUT' ? 'timeout' : 'error');
        throw mapped;
      }
      await sleep(pauseMs);
    }
  }

  #backoff(attempt: number, retryAfter: number | undefined): number {
    if (retryAfter !== undefined) return retryAfter;
    // Exponential with full jitter: 0..100 ms, 0..200 ms, 0..400 ms ... capped at 2 s.
    return Math.floor(Math.random() * Math.min(2000, 100 * 2 ** (attempt - 1)));
  }

  async #once(req: UpstreamRequest, signal: AbortSignal): Promise<UpstreamResponse> {
    const headers: Record<string, string> = {
      authorization: this.#auth,
      accept: 'application/json',
      'user-agent': 'fuhu-gateway',
      'x-request-id': req.requestId,
    };
    if (req.body !== undefined) headers['content-type'] = 'application/json';
    if (req.prefer) headers.prefer = req.prefer;
    if (req.cancelAfter) headers['cancel-after'] = req.cancelAfter;
    const res = await this.#pool.request({ path: this.#basePath + req.path, method: req.method, headers, body: req.body, signal });
    const body = await res.body.text();
    const ra = res.headers['retry-after'];
    return {
      status: res.statusCode,
      retryAfter: Array.isArray(ra) ? ra[0] : ra,
      body,
      // A create answered 500 or 503 speaks of that model (New-API: "no available channel for model X"); one
      // team's unavailable model must not pause the upstream for every team. Gateway-level 5xx still count.
      unhealthy: res.statusCode >= 500 && (req.retry || !MODEL_SPECIFIC_STATUS.has(res.statusCode)),
    };
  }

  async close(): Promise<void> {
    await this.#pool.close();
  }
}
