// Every error the gateway answers with: one class, stable codes, one status each, rendered as problem JSON.
import { errors as undiciErrors } from 'undici';

export const ERRORS = {
  BAD_REQUEST: { status: 400, title: 'Bad request' },
  UNAUTHENTICATED: { status: 401, title: 'Unauthenticated' },
  FORBIDDEN: { status: 403, title: 'Forbidden' },
  NOT_FOUND: { status: 404, title: 'Not found' },
  CONFLICT: { status: 409, title: 'Conflict' },
  PAYLOAD_TOO_LARGE: { status: 413, title: 'Payload too large' },
  UNSUPPORTED_MEDIA_TYPE: { status: 415, title: 'Unsupported media type' },
  VALIDATION: { status: 422, title: 'Invalid request' },
  IDEMPOTENCY_MISMATCH: { status: 422, title: 'Idempotency key reused' },
  RATE_LIMITED: { status: 429, title: 'Too many requests' },
  INTERNAL: { status: 500, title: 'Internal error' },
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
  [extra: string]: unknown;
}

export class GatewayError extends Error {
  readonly code: ErrorCode;
  readonly statusCode: number;
  readonly title: string;
  /** Extra response headers, e.g. retry-after. */
  readonly headers: Record<string, string>;

  constructor(code: ErrorCode, detail: string, opts: { cause?: unknown; headers?: Record<string, string>; status?: number } = {}) {
    super(detail, { cause: opts.cause });
    this.name = 'GatewayError';
    this.code = code;
    this.statusCode = opts.status ?? ERRORS[code].status;
    this.title = ERRORS[code].title;
    this.headers = opts.headers ?? {};
  }

  toProblem(requestId?: string): Problem {
    const problem: Problem = {
      type: `urn:fuhu-gateway:problem:${this.code.toLowerCase().replaceAll('_', '-')}`,
      title: this.title,
      status: this.statusCode,
      detail: this.message,
    };
    if (requestId) problem.request_id = requestId;
    return problem;
  }
}

/** The one answer to a state store that cannot be reached: 503, and when to retry. */
export function storeUnavailable(cause?: unknown, detail = 'the state store is unavailable; retry shortly'): GatewayError {
  return new GatewayError('STORE_UNAVAILABLE', detail, { cause, headers: { 'retry-after': '2' } });
}

/** Turns an undici transport failure into a gateway error: timeouts are 504, everything else 502. */
export function fromTransportError(err: unknown): GatewayError {
  if (err instanceof GatewayError) return err;
  const code = (err as { code?: string }).code ?? '';
  if (
    err instanceof undiciErrors.HeadersTimeoutError ||
    err instanceof undiciErrors.BodyTimeoutError ||
    err instanceof undiciErrors.ConnectTimeoutError ||
    code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT' || code === 'UND_ERR_CONNECT_TIMEOUT' ||
    (err as Error).name === 'TimeoutError'
  ) {
    return new GatewayError('UPSTREAM_TIMEOUT', 'the upstream did not answer within the deadline', { cause: err });
  }
  const what =
    code === 'ECONNREFUSED' ? 'refused the connection'
    : code === 'ECONNRESET' || code === 'UND_ERR_SOCKET' ? 'closed the connection before answering'
    : code === 'ENOTFOUND' || code === 'EAI_AGAIN' ? 'could not be resolved'
    : 'could not be reached';
  return new GatewayError('UPSTREAM_ERROR', `the upstream ${what}`, { cause: err });
}

/**
 * The message an upstream error body carries, from either shape the resellers use:
 * Replicate's `{title, detail, status}` or New-API's `{error: {message}}`. Only that one string is kept, and the
 * upstream key is scrubbed from it: an error body must never carry a secret to a client.
 */
export function upstreamMessage(body: unknown, secret: string): string | undefined {
  let msg: unknown;
  if (body && typeof body === 'object') {
    const b = body as Record<string, unknown>;
    if (typeof b.detail === 'string') msg = b.detail;
    else if (b.error && typeof b.error === 'object' && typeof (b.error as Record<string, unknown>).message === 'string') {
      msg = (b.error as Record<string, unknown>).message;
    } else if (typeof b.error === 'string') msg = b.error;
    else if (typeof b.message === 'string') msg = b.message;
    else if (typeof b.title === 'string') msg = b.title;
  }
  if (typeof msg !== 'string' || msg === '') return undefined;
  if (secret) msg = msg.split(secret).join('[redacted]');
  return (msg as string).replace(/Bearer\s+\S+/gi, 'Bearer [redacted]').slice(0, 500);
}

const STATUS_CODES: Record<number, ErrorCode> = {
  400: 'BAD_REQUEST',
  403: 'FORBIDDEN',
  404: 'NOT_FOUND',
  409: 'CONFLICT',
  413: 'PAYLOAD_TOO_LARGE',
  422: 'VALIDATION',
  429: 'RATE_LIMITED',
};

/**
 * A non-2xx upstream answer as the client should see it: 4xx keep their status and the upstream's message, 5xx
 * become 502 (504/524 gateway timeouts become 504). Upstream headers and bodies are never passed on as they are.
 * An upstream 401 means the gateway's own key was refused, which the client cannot fix: 502, naming the cause.
 */
export function fromUpstreamStatus(status: number, body: string, retryAfter: string | undefined, secret: string): GatewayError {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    parsed = undefined;
  }
  const msg = upstreamMessage(parsed, secret);
  const headers: Record<string, string> = {};
  if (retryAfter && /^\d{1,6}$/.test(retryAfter)) headers['retry-after'] = retryAfter;
  if (status === 401) {
    return new GatewayError('UPSTREAM_ERROR', 'the upstream rejected the gateway\'s credentials (operator: check UPSTREAM_API_KEY)');
  }
  if (status >= 400 && status < 500) {
    const code = STATUS_CODES[status] ?? 'BAD_REQUEST';
    if (status === 429 && !headers['retry-after']) headers['retry-after'] = '1';
    return new GatewayError(code, msg ? `upstream: ${msg}` : `the upstream answered ${status}`, { status, headers });
  }
  if (status === 504 || status === 524) {
    return new GatewayError('UPSTREAM_TIMEOUT', `the upstream timed out (${status})${msg ? `: ${msg}` : ''}`);
  }
  return new GatewayError('UPSTREAM_ERROR', `the upstream answered ${status}${msg ? `: ${msg}` : ''}`, { headers });
}
