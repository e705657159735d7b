// What upstream answers and transport failures become for the client: the one mapping, the one Retry-After
// parser, and the scrubbing that needs the upstream key (which stays in src/upstream/).
import { GatewayError, type ErrorCode } from '../errors.js';

/** Retry-After in ms, from delta-seconds or an HTTP date (RFC 9110 §10.2.3); undefined when absent or unreadable. */
export function parseRetryAfter(value: string | undefined): number | undefined {
  if (!value) return undefined;
  const v = value.trim();
  if (/^\d+$/.test(v)) return Number(v) * 1000;
  const at = Date.parse(v);
  return Number.isNaN(at) ? undefined : Math.max(0, at - Date.now());
}

/** A Retry-After header for the client: whole seconds, at least 1, at most a day; undefined when unreadable. */
function retryAfterSeconds(value: string | undefined): string | undefined {
  const ms = parseRetryAfter(value);
  return ms === undefined ? undefined : String(Math.min(86_400, Math.max(1, Math.ceil(ms / 1000))));
}

/** Replaces every occurrence of the secrets, and any bearer credential, in text bound for a client or a log. */
export function scrub(text: string, secrets: readonly string[]): string {
  let out = text;
  for (const s of secrets) if (s && out.includes(s)) out = out.split(s).join('[redacted]');
  return out.replace(/Bearer\s+[^\s"'\\]+/gi, 'Bearer [redacted]');
}

/**
 * The message an upstream error body carries, from either shape the resellers use: Replicate's
 * `{title, detail, status}` or New-API's `{error: {message}}`. Only that one string is kept, scrubbed and cut short.
 */
export function upstreamMessage(body: unknown, secrets: readonly string[]): string | undefined {
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
  return scrub(msg, secrets).slice(0, 500);
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
export function fromUpstreamStatus(status: number, body: string, retryAfter: string | undefined, secrets: readonly string[], account?: string): GatewayError {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    parsed = undefined;
  }
  const msg = upstreamMessage(parsed, secrets);
  const headers: Record<string, string> = {};
  const ra = retryAfterSeconds(retryAfter);
  if (ra) headers['retry-after'] = ra;
  if (status === 401) {
    // Several accounts: name the one whose key to check (its name only; the operator knows where its key is).
    const check = account && account !== 'default' ? `the apiKey of upstream "${account}" in UPSTREAMS_FILE` : 'UPSTREAM_API_KEY';
    return new GatewayError('UPSTREAM_ERROR', `the upstream rejected the gateway's credentials (operator: check ${check})`, { upstreamStatus: status });
  }
  if (status >= 400 && status < 500) {
    const code = STATUS_CODES[status] ?? 'BAD_REQUEST';
    if (status === 429 && !headers['retry-after']) headers['retry-after'] = '1';
    return new GatewayError(code, msg ? `upstream: ${msg}` : `the upstream answered ${status}`, { status, headers, upstreamStatus: status });
  }
  if (status === 504 || status === 524) {
    return new GatewayError('UPSTREAM_TIMEOUT', `the upstream timed out (${status})${msg ? `: ${msg}` : ''}`, { upstreamStatus: status });
  }
  return new GatewayError('UPSTREAM_ERROR', `the upstream answered ${status}${msg ? `: ${msg}` : ''}`, { headers, upstreamStatus: status });
}

export const upstreamTimeout = (cause?: unknown) =>
  new GatewayError('UPSTREAM_TIMEOUT', 'the upstream did not answer within the deadline', { cause });

/**
 * A transport failure as a gateway error. The deadline is one AbortSignal per call (see client.ts), so a timeout is
 * recognised by that signal, and by undici's connect timeout, which runs before the signal matters.
 */
export function fromTransportError(err: unknown, deadlinePassed: boolean): GatewayError {
  if (err instanceof GatewayError) return err;
  const code = (err as { code?: string }).code ?? '';
  if (deadlinePassed || code === 'UND_ERR_CONNECT_TIMEOUT') return upstreamTimeout(err);
  const what =
    code === 'ECONNREFUSED' ? 'refused the connection'
    : code === 'ECONNRESET' || code === 'UND_ERR_SOCKET' ? 'closed the connection before answering'
    : code === 'ENOTFOUND' || code === 'EAI_AGAIN' ? 'could not be resolved'
    : 'could not be reached';
  return new GatewayError('UPSTREAM_ERROR', `the upstream ${what}`, { cause: err });
}
