// The undici client for FuhuAPI: the one place the upstream key is used. One deadline per call, safe retries,
// bounded answers, per-tenant bulkheads and breakers live here, so every route gets them the same way; a non-2xx
// answer is thrown as a GatewayError, and every 2xx body is scrubbed of the key before anyone reads it.
import { setTimeout as sleep } from 'node:timers/promises';
import type { Readable } from 'node:stream';
import { BrokenCircuitError, CircuitState, ConsecutiveBreaker, circuitBreaker, handleWhen, type CircuitBreakerPolicy } from 'cockatiel';
import { Pool } from 'undici';
import { GatewayError } from '../errors.js';
import { BoundedMap } from '../lib/bounded-map.js';
import { fromTransportError, fromUpstreamStatus, parseRetryAfter, scrub } from './answers.js';

export interface UpstreamOptions {
  /** The account's name (UPSTREAMS_FILE), for the operator's messages. */
  name?: string;
  baseUrl: string;
  apiKey: string;
  timeoutMs: number;
  retries: number;
  /** Sockets kept open to the upstream. */
  connections?: number;
  /** Consecutive failures that open a tenant's breaker, and how long it stays open. */
  breakerThreshold?: number;
  breakerCooldownMs?: number;
  /** Upstream calls one tenant may have in flight at once (default: half the connections). */
  tenantMaxConcurrency?: number;
  /** Largest upstream answer read; a larger one is cut off (502). */
  maxBodyBytes?: number;
  /** OpenTelemetry, when on: a span per attempt, and its traceparent goes upstream (never otherwise). */
  tracing?: UpstreamTracing;
}

/** A client span per upstream attempt (src/tracing.ts); `parent` is the request's trace context, opaque here. */
export interface UpstreamTracing {
  /** Starts the attempt's span and writes its context into `headers`; the returned function ends it. */
  attempt(
    parent: unknown,
    info: { method: string; path: string; host: string; attempt: number },
    headers: Record<string, string>,
  ): (status: number | undefined, error?: unknown) => void;
}

export interface UpstreamRequest {
  /** QUERY: a read with a body (RFC 10008), the model search. */
  method: 'GET' | 'POST' | 'QUERY';
  /** Path below the base URL, starting with '/'. */
  path: string;
  /** The path is from the host's root, not below the base URL (a reseller's own billing routes). */
  root?: boolean;
  /**
   * Outside the breakers: the gateway's own side reads (the balance poll), whose failures must neither pause
   * clients' calls nor be refused while a breaker is open.
   */
  bypassBreakers?: boolean;
  body?: string;
  /** The body's type; default application/json. */
  contentType?: string;
  requestId: string;
  /** Whose call this is: bulkheads and breakers are per tenant. */
  tenant: string;
  prefer?: string;
  cancelAfter?: string;
  /** Only GET and cancel are safe to send twice; a create never is. */
  retry: boolean;
  /** Overrides the deadline (a `Prefer: wait` create needs longer). */
  timeoutMs?: number;
  /** Called once per call with the time spent on it (every attempt and the pauses between) and its outcome. */
  observe?: (latencyMs: number, outcome: string) => void;
  /** The request's trace context (only while tracing is on): each attempt becomes a child span. */
  trace?: unknown;
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

/** Transport failures that say the upstream as a whole cannot be reached (not that one request was slow). */
const CONNECTION_CODES = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'UND_ERR_CONNECT_TIMEOUT']);

const ok = (status: number) => status >= 200 && status < 300;

const tooLarge = (max: number) =>
  new GatewayError('UPSTREAM_ERROR', `the upstream answer is larger than UPSTREAM_MAX_BODY_BYTES (${max} bytes); it was cut off`);

/** A tenant's own breaker, and when it last opened. */
interface TenantBreaker {
  policy: CircuitBreakerPolicy;
  openedAt: number;
}

export class UpstreamClient {
  readonly #pool: Pool;
  readonly #basePath: string;
  readonly #auth: string;
  readonly #secrets: readonly string[];
  readonly #opts: Required<Omit<UpstreamOptions, 'tracing' | 'name'>>;
  readonly #name: string | undefined;
  readonly #tracing: UpstreamTracing | undefined;
  readonly #host: string;
  /** Opens on connection failures, or when several tenants' breakers open at once: the upstream as a whole. */
  readonly #global: CircuitBreakerPolicy;
  /** One tenant's failing model or predictions (5xx, timeouts) pause that tenant only. */
  readonly #tenantBreakers = new BoundedMap<TenantBreaker>({ maxEntries: 10_000 });
  readonly #inFlight = new Map<string, number>();
  /** When each tenant's breaker last opened, to see several tenants failing together. */
  readonly #recentBreaks = new Map<string, number>();
  #globalOpenedAt = 0;

  constructor(opts: UpstreamOptions) {
    const connections = opts.connections ?? 128;
    this.#opts = {
      connections,
      breakerThreshold: 5,
      breakerCooldownMs: 5000,
      tenantMaxConcurrency: Math.max(1, Math.floor(connections / 2)),
      maxBodyBytes: 16 * 1024 * 1024,
      ...opts,
    };
    this.#tracing = opts.tracing;
    this.#name = opts.name;
    const url = new URL(opts.baseUrl);
    this.#host = url.host;
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
    this.#global = circuitBreaker(
      handleWhen((err) => CONNECTION_CODES.has((err as { code?: string }).code ?? '')),
      { halfOpenAfter: this.#opts.breakerCooldownMs, breaker: new ConsecutiveBreaker(this.#opts.breakerThreshold) },
    );
    this.#global.onBreak(() => (this.#globalOpenedAt = Date.now()));
  }

  /** The upstream-wide breaker (what /readyz reports). */
  get breakerOpen(): boolean {
    return this.#global.state !== CircuitState.Closed;
  }

  /** Tenants whose own breaker is open now. */
  openTenantBreakers(): string[] {
    return [...this.#recentBreaks.keys()].filter((t) => this.#tenantBreakers.peek(t)?.policy.state === CircuitState.Open);
  }

  #tenantBreaker(tenant: string) {
    let b = this.#tenantBreakers.get(tenant);
    if (b) return b;
    // Transport failures and unhealthy answers count; 4xx are the caller's problem.
    const policy = circuitBreaker(
      handleWhen((err) => !(err instanceof GatewayError) || err.statusCode >= 500).orWhenResult((r) => (r as UpstreamResponse).unhealthy),
      { halfOpenAfter: this.#opts.breakerCooldownMs, breaker: new ConsecutiveBreaker(this.#opts.breakerThreshold) },
    );
    const entry = { policy, openedAt: 0 };
    policy.onBreak(() => {
      const now = (entry.openedAt = Date.now());
      this.#recentBreaks.set(tenant, now);
      for (const [t, at] of this.#recentBreaks) if (now - at > this.#opts.breakerCooldownMs) this.#recentBreaks.delete(t);
      // Two or more tenants failing within one cool-down: that is the upstream, not a tenant. Pause everyone.
      if (this.#recentBreaks.size >= 2 && this.#global.state === CircuitState.Closed) {
        const hold = this.#global.isolate();
        this.#globalOpenedAt = now;
        setTimeout(() => hold.dispose(), this.#opts.breakerCooldownMs).unref();
      }
    });
    this.#tenantBreakers.set(tenant, entry);
    return entry;
  }

  /** A tenant-level bulkhead: 429 past its share of the pool, so one tenant's long waits cannot starve others. */
  #enter(tenant: string): void {
    const n = this.#inFlight.get(tenant) ?? 0;
    if (n >= this.#opts.tenantMaxConcurrency) {
      throw new GatewayError('RATE_LIMITED', `tenant ${tenant} already has ${n} upstream requests in flight (UPSTREAM_TENANT_MAX_CONCURRENCY); retry shortly`, {
        headers: { 'retry-after': '1' },
      });
    }
    this.#inFlight.set(tenant, n + 1);
  }

  #leave(tenant: string): void {
    const n = (this.#inFlight.get(tenant) ?? 1) - 1;
    if (n <= 0) this.#inFlight.delete(tenant);
    else this.#inFlight.set(tenant, n);
  }

  /** A 2xx answer, or a GatewayError: the upstream's refusal (scrubbed), a transport failure or the deadline. */
  async request(req: UpstreamRequest): Promise<UpstreamResponse> {
    this.#enter(req.tenant);
    try {
      return await this.#request(req);
    } finally {
      this.#leave(req.tenant);
    }
  }

  async #request(req: UpstreamRequest): Promise<UpstreamResponse> {
    const tenantBreaker = this.#tenantBreaker(req.tenant);
    const timeoutMs = req.timeoutMs ?? this.#opts.timeoutMs;
    const deadline = Date.now() + timeoutMs;
    // One deadline for the whole call, every attempt and pause included. Its timer is cleared when the call ends:
    // AbortSignal.timeout's lives on until it fires (UPSTREAM_TIMEOUT_MS later), and at thousands of calls a second
    // those live timers and signals were the largest single load on the garbage collector of a create.
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(new DOMException('the upstream call took too long', 'TimeoutError')), timeoutMs);
    try {
      return await this.#attempts(req, tenantBreaker, controller.signal, deadline);
    } finally {
      clearTimeout(timer);
    }
  }

  async #attempts(req: UpstreamRequest, tenantBreaker: TenantBreaker, signal: AbortSignal, deadline: number): Promise<UpstreamResponse> {
    const maxAttempts = req.retry ? this.#opts.retries + 1 : 1;
    const started = performance.now();
    const done = (outcome: string) => req.observe?.(performance.now() - started, outcome);
    for (let attempt = 1; ; attempt++) {
      let res: UpstreamResponse | undefined;
      let failure: unknown;
      try {
        // Half-open: one probe is already testing the upstream. cockatiel would queue every other call behind it
        // (for as long as the probe's deadline); fail fast instead, as while open.
        if (req.bypassBreakers) res = await this.#once(req, signal, attempt);
        else {
          if (this.#global.state === CircuitState.HalfOpen || tenantBreaker.policy.state === CircuitState.HalfOpen) throw new BrokenCircuitError();
          res = await this.#global.execute(() => tenantBreaker.policy.execute(() => this.#once(req, signal, attempt)));
        }
      } catch (err) {
        failure = err;
      }
      if (res && ok(res.status)) {
        done('ok');
        return res;
      }
      if (failure instanceof BrokenCircuitError) {
        done('breaker_open');
        const openedAt = this.#global.state === CircuitState.Closed ? tenantBreaker.openedAt : this.#globalOpenedAt;
        const left = Math.max(1, Math.ceil((openedAt + this.#opts.breakerCooldownMs - Date.now()) / 1000));
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
          throw fromUpstreamStatus(res.status, res.body, res.retryAfter, this.#secrets, this.#name);
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

  /** One attempt; not async itself, so that with tracing off it adds no promise to the call. */
  #once(req: UpstreamRequest, signal: AbortSignal, attempt: number): Promise<UpstreamResponse> {
    const headers: Record<string, string> = {
      authorization: this.#auth,
      accept: 'application/json',
      'user-agent': 'fuhu-gateway',
      'x-request-id': req.requestId,
    };
    if (req.body !== undefined) headers['content-type'] = req.contentType ?? 'application/json';
    if (req.prefer) headers.prefer = req.prefer;
    if (req.cancelAfter) headers['cancel-after'] = req.cancelAfter;
    const path = req.root ? req.path : this.#basePath + req.path;
    if (this.#tracing && req.trace !== undefined) {
      const end = this.#tracing.attempt(req.trace, { method: req.method, path, host: this.#host, attempt }, headers);
      return this.#exchange(req, path, headers, signal).then(
        (res) => {
          end(res.status);
          return res;
        },
        (err: unknown) => {
          end(undefined, err);
          throw err;
        },
      );
    }
    return this.#exchange(req, path, headers, signal);
  }

  async #exchange(req: UpstreamRequest, path: string, headers: Record<string, string>, signal: AbortSignal): Promise<UpstreamResponse> {
    const res = await this.#pool.request({ path, method: req.method, headers, body: req.body, signal });
    let body = await this.#read(res.body, Number(res.headers['content-length'] ?? 0));
    // A reseller may echo the Authorization header into logs, errors or URLs: no answer leaves with the key in it.
    if (body.includes(this.#secrets[0]!)) body = scrub(body, this.#secrets);
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

  /**
   * The whole body, or a 502 as soon as it passes maxBodyBytes (announced or counted). Read by 'data' events: an
   * async iterator (`for await`) costs a promise per chunk and showed as garbage collection on every create and poll.
   */
  #read(body: Readable, announced: number): Promise<string> {
    const max = this.#opts.maxBodyBytes;
    if (announced > max) {
      body.destroy();
      return Promise.reject(tooLarge(max));
    }
    return new Promise((resolve, reject) => {
      const chunks: Buffer[] = [];
      let size = 0;
      body.on('data', (chunk: Buffer) => {
        size += chunk.length;
        if (size > max) {
          body.destroy();
          reject(tooLarge(max));
          return;
        }
        chunks.push(chunk);
      });
      body.once('end', () => resolve(chunks.length === 1 ? chunks[0]!.toString('utf8') : Buffer.concat(chunks, size).toString('utf8')));
      // After a destroy for size, the rejection above has already settled this promise.
      body.once('error', reject);
    });
  }

  async close(): Promise<void> {
    await this.#pool.close();
  }
}
