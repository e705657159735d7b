// Every error the gateway answers with: one class, stable codes, one status each, rendered as problem JSON.
// Declarations only: what upstream answers become lives in src/upstream/answers.ts, the handler in src/http/.
export const ERRORS = {
  BAD_REQUEST: { status: 400, title: 'Bad request' },
  UNAUTHENTICATED: { status: 401, title: 'Unauthenticated' },
  FORBIDDEN: { status: 403, title: 'Forbidden' },
  NOT_FOUND: { status: 404, title: 'Not found' },
  CONFLICT: { status: 409, title: 'Conflict' },
  PRECONDITION_FAILED: { status: 412, title: 'Precondition failed' },
  PAYLOAD_TOO_LARGE: { status: 413, title: 'Payload too large' },
  UNSUPPORTED_MEDIA_TYPE: { status: 415, title: 'Unsupported media type' },
  VALIDATION: { status: 422, title: 'Invalid request' },
  IDEMPOTENCY_MISMATCH: { status: 422, title: 'Idempotency key reused' },
  RATE_LIMITED: { status: 429, title: 'Too many requests' },
  BUDGET_EXCEEDED: { status: 429, title: 'Budget exceeded' },
  RUNNING_LIMIT: { status: 429, title: 'Too many running predictions' },
  SHARE_EXCEEDED: { status: 429, title: 'Over the fair share of the upstream account' },
  INTERNAL: { status: 500, title: 'Internal error' },
  STORE_FAILED: { status: 500, title: 'Internal error' },
  NOT_IMPLEMENTED: { status: 501, title: 'Not implemented' },
  UPSTREAM_ERROR: { status: 502, title: 'Bad gateway' },
  UPSTREAM_UNAVAILABLE: { status: 503, title: 'Upstream unavailable' },
  STORE_UNAVAILABLE: { status: 503, title: 'State store unavailable' },
  OVERLOADED: { status: 503, title: 'Service overloaded' },
  UPSTREAM_TIMEOUT: { status: 504, title: 'Gateway timeout' },
} as const;

export type ErrorCode = keyof typeof ERRORS;

export interface Problem {
  type: string;
  title: string;
  status: number;
  detail: string;
  message: string;
  [extra: string]: unknown;
}

export class GatewayError extends Error {
  readonly code: ErrorCode;
  readonly statusCode: number;
  readonly title: string;
  /** Extra response headers, e.g. retry-after. */
  readonly headers: Record<string, string>;
  /** For errors made from an upstream answer: the status the upstream gave. */
  readonly upstreamStatus: number | undefined;
  /** Extra members of the problem JSON (e.g. which budget refused). */
  readonly extra: Record<string, unknown> | undefined;

  constructor(
    code: ErrorCode,
    detail: string,
    opts: { cause?: unknown; headers?: Record<string, string>; status?: number; upstreamStatus?: number; extra?: Record<string, unknown> } = {},
  ) {
    super(detail, { cause: opts.cause });
    this.name = 'GatewayError';
    this.code = code;
    this.statusCode = opts.status ?? ERRORS[code].status;
    this.title = ERRORS[code].title;
    this.headers = opts.headers ?? {};
    this.upstreamStatus = opts.upstreamStatus;
    this.extra = opts.extra;
  }

  toProblem(requestId?: string): Problem {
    const problem: Problem = {
      type: `urn:fuhu-gateway:problem:${this.code.toLowerCase().replaceAll('_', '-')}`,
      title: this.title,
      status: this.statusCode,
      detail: this.message,
      // An extension member (RFC 9457 §3.2): Replicate's own SDK builds its error text from `body.message` and would
      // otherwise print the whole JSON.
      message: this.message,
      ...this.extra,
    };
    if (requestId) problem.request_id = requestId;
    return problem;
  }
}

/** The one answer to a state store that cannot be reached: 503, and when to retry. */
export function storeUnavailable(cause?: unknown, detail = 'the state store is unavailable; retry shortly'): GatewayError {
  return new GatewayError('STORE_UNAVAILABLE', detail, { cause, headers: { 'retry-after': '2' } });
}

/**
 * Redis replies that mean the server cannot serve now (loading, a replica, a failover, a busy script, out of memory,
 * a refused login): the store is unavailable, and a retry may succeed.
 */
const UNAVAILABLE_REPLIES = /^(LOADING|READONLY|MASTERDOWN|CLUSTERDOWN|TRYAGAIN|BUSY|NOREPLICAS|OOM|MISCONF|MOVED|ASK|NOAUTH|WRONGPASS)\b/;

/**
 * What a failed store call is. A lost or refused connection, a timeout, a server that cannot serve now: 503, retry
 * shortly. Any other reply error (a script's error, a wrong type, a value Redis refuses) is the gateway's own bug or
 * bad data: retrying would fail the same way, so it is a 500 of its own (STORE_FAILED, logged with its cause), not
 * "the store is down".
 */
export function storeFailure(err: unknown): GatewayError {
  if (err instanceof GatewayError) return err;
  const e = err as { name?: unknown; message?: unknown } | undefined;
  if (e?.name === 'ReplyError' && !UNAVAILABLE_REPLIES.test(String(e.message))) {
    return new GatewayError('STORE_FAILED', 'the gateway failed to handle this request: a state store command failed', { cause: err });
  }
  return storeUnavailable(err);
}

/** A store call's `.catch`: a failure of the backing store becomes storeFailure() (mostly storeUnavailable()). */
export const rethrowUnavailable = (err: unknown): never => {
  throw storeFailure(err);
};
