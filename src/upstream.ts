// The undici client for FuhuAPI: the one place the upstream key is used. Deadlines, safe retries and the breaker
// live here so every route gets them the same way.
import { setTimeout as sleep } from 'node:timers/promises';
import { BrokenCircuitError, ConsecutiveBreaker, CircuitState, circuitBreaker, handleWhen } from 'cockatiel';
import { Pool } from 'undici';
import { GatewayError, fromTransportError, fromUpstreamStatus } from './errors.js';

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
}

export interface UpstreamResponse {
  status: number;
  retryAfter?: string;
  body: string;
  latencyMs: number;
  /** Whether this answer says the upstream itself is unwell (counts towards opening the breaker). */
  unhealthy: boolean;
}

const RETRY_STATUS = new Set([429, 502, 503, 504, 524]);
const RETRY_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'UND_ERR_SOCKET', 'UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_CLOSED']);
const MAX_WAIT_SECONDS = 60;
/** Answers to a create that concern the model asked for rather than the upstream as a whole. */
const MODEL_SPECIFIC_STATUS = new Set([500, 503]);

/**
 * `Prefer: wait` / `wait=n` with n clamped to 1..60 (the official client sends it unclamped, e.g. wait=90).
 * Returns the header to forward and how long the upstream may hold the request.
 */
export function normalizePrefer(value: string | undefined): { header?: string; waitSeconds: number } {
  if (!value) return { waitSeconds: 0 };
  const m = /(?:^|[,;\s])wait(?:\s*=\s*([^,;\s]*))?(?=$|[,;\s])/i.exec(value);
  if (!m) return { header: value, waitSeconds: 0 };
  if (m[1] === undefined) return { header: 'wait', waitSeconds: MAX_WAIT_SECONDS };
  const asked = Number(m[1]);
  if (m[1] === '' || !Number.isFinite(asked)) {
    throw new GatewayError('BAD_REQUEST', 'Prefer: wait takes a number of seconds (wait or wait=1..60)');
  }
  const n = Math.min(Math.max(Math.round(asked), 1), MAX_WAIT_SECONDS);
  return { header: `wait=${n}`, waitSeconds: n };
}

/** Retry-After in ms from seconds or an HTTP date; undefined when absent or unreadable. */
function retryAfterMs(value: string | undefined): number | undefined {
  if (!value) return undefined;
  const secs = Number(value);
  if (Number.isFinite(secs)) return Math.max(0, secs * 1000);
  const at = Date.parse(value);
  return Number.isNaN(at) ? undefined : Math.max(0, at - Date.now());
}

export class UpstreamClient {
  readonly #pool: Pool;
  readonly #basePath: string;
  readonly #auth: string;
  readonly #apiKey: string;
  readonly #opts: Required<UpstreamOptions>;
  readonly #breaker;
  #openedAt = 0;

  constructor(opts: UpstreamOptions) {
    this.#opts = { connections: 128, breakerThreshold: 5, breakerCooldownMs: 5000, ...opts };
    const url = new URL(opts.baseUrl);
    this.#basePath = url.pathname.replace(/\/+$/, '');
    this.#apiKey = opts.apiKey;
    this.#auth = `Bearer ${opts.apiKey}`;
    // undici's default timeouts are 300 s; ours follow UPSTREAM_TIMEOUT_MS.
    this.#pool = new Pool(url.origin, {
      connections: this.#opts.connections,
      connect: { timeout: Math.min(opts.timeoutMs, 10_000) },
      headersTimeout: opts.timeoutMs,
      bodyTimeout: opts.timeoutMs,
      keepAliveTimeout: 30_000,
    });
    // Transport failures and unhealthy answers count towards opening the breaker; 4xx are the caller's problem.
    this.#breaker = circuitBreaker(
      handleWhen((err) => !(err instanceof GatewayError) || err.statusCode >= 500).orWhenResult((r) => (r as UpstreamResponse).unhealthy),
      { halfOpenAfter: this.#opts.breakerCooldownMs, breaker: new ConsecutiveBreaker(this.#opts.breakerThreshold) },
    );
    this.#breaker.onBreak(() => (this.#openedAt = Date.now()));
  }

  /** The client-facing error for a non-2xx answer; here because scrubbing it needs the key only this class holds. */
  errorFor(res: UpstreamResponse): GatewayError {
    return fromUpstreamStatus(res.status, res.body, res.retryAfter, this.#apiKey);
  }

  get breakerOpen(): boolean {
    return this.#breaker.state === CircuitState.Open;
  }

  async request(req: UpstreamRequest): Promise<UpstreamResponse> {
    const deadline = Date.now() + (req.timeoutMs ?? this.#opts.timeoutMs);
    const maxAttempts = req.retry ? this.#opts.retries + 1 : 1;
    // Latency covers every attempt and the pauses between them: what the caller waited for the upstream.
    const started = performance.now();
    for (let attempt = 1; ; attempt++) {
      let pauseMs: number;
      try {
        // Half-open: one probe is already testing the upstream. cockatiel would queue every other call behind it
        // (for as long as the probe's deadline); fail fast instead, as while open.
        if (this.#breaker.state === CircuitState.HalfOpen) throw new BrokenCircuitError();
        const res = await this.#breaker.execute(() => this.#once(req, deadline));
        res.latencyMs = performance.now() - started;
        if (!req.retry || attempt >= maxAttempts || !RETRY_STATUS.has(res.status)) return res;
        pauseMs = this.#backoff(attempt, retryAfterMs(res.retryAfter));
        if (!this.#canRetry(deadline, pauseMs)) return res;
      } catch (err) {
        if (err instanceof BrokenCircuitError) {
          const left = Math.max(1, Math.ceil((this.#openedAt + this.#opts.breakerCooldownMs - Date.now()) / 1000));
          throw new GatewayError('UPSTREAM_UNAVAILABLE', 'the upstream is failing repeatedly; requests are paused for a short cool-down', {
            cause: err,
            headers: { 'retry-after': String(left) },
          });
        }
        const mapped = fromTransportError(err);
        const code = (err as { code?: string }).code ?? '';
        pauseMs = this.#backoff(attempt, undefined);
        if (!req.retry || attempt >= maxAttempts || !RETRY_CODES.has(code) || !this.#canRetry(deadline, pauseMs)) {
          throw mapped;
        }
      }
      await sleep(pauseMs);
    }
  }

  #canRetry(deadline: number, pauseMs: number): boolean {
    // A retry that could not finish before the deadline only makes the client wait longer for the same failure.
    // The pause checked here is the pause taken (jitter is drawn once).
    return Date.now() + pauseMs + 50 < deadline;
  }

  #backoff(attempt: number, retryAfter: number | undefined): number {
    if (retryAfter !== undefined) return retryAfter;
    // Exponential with full jitter: 0..100 ms, 0..200 ms, 0..400 ms ... capped at 2 s.
    return Math.floor(Math.random() * Math.min(2000, 100 * 2 ** (attempt - 1)));
  }

  async #once(req: UpstreamRequest, deadline: number): Promise<UpstreamResponse> {
    const left = deadline - Date.now();
    if (left <= 0) throw new GatewayError('UPSTREAM_TIMEOUT', 'the upstream did not answer within the deadline');
    const headers: Record<string, string> = {
      authorization: this.#auth,
      accept: 'application/json',
      'user-agent': 'fuhu-gateway',
      'x-request-id': req.requestId,
    };
    if (req.body !== undefined) headers['content-type'] = 'application/json';
    if (req.prefer) headers.prefer = req.prefer;
    if (req.cancelAfter) headers['cancel-after'] = req.cancelAfter;
    const signal = AbortSignal.timeout(left);
    try {
      const res = await this.#pool.request({
        path: this.#basePath + req.path,
        method: req.method,
        headers,
        body: req.body,
        headersTimeout: left,
        bodyTimeout: left,
        signal,
      });
      const body = await res.body.text();
      const ra = res.headers['retry-after'];
      return {
        status: res.statusCode,
        retryAfter: Array.isArray(ra) ? ra[0] : ra,
        body,
        latencyMs: 0, // set by request(), over all attempts
        // A create answered 500 or 503 speaks of that model (New-API: "no available channel for model X"); one
        // team's unavailable model must not pause the upstream for every team. Gateway-level 5xx still count.
        unhealthy: res.statusCode >= 500 && (req.retry || !MODEL_SPECIFIC_STATUS.has(res.statusCode)),
      };
    } catch (err) {
      // An abort by our own deadline surfaces as AbortError; it is a timeout all the same.
      if (signal.aborted) throw new GatewayError('UPSTREAM_TIMEOUT', 'the upstream did not answer within the deadline', { cause: err });
      throw err;
    }
  }

  async close(): Promise<void> {
    await this.#pool.close();
  }
}
