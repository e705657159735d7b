// Clients that retry creates on their own, without an Idempotency-Key: every Stainless-generated SDK (Replicate's
// new TypeScript SDK `replicate-stainless`, its MCP server, the v2 Python SDK, OpenAI's and Anthropic's) retries
// every method on 408/409/429/5xx and on its own timeout, and marks each attempt `X-Stainless-Retry-Count: n`
// (0 on the first). It also says how long it waits for an answer: `X-Stainless-Timeout` (whole seconds, the JS and
// Go SDKs) or `X-Stainless-Read-Timeout` (seconds, possibly fractional, the Python SDKs). The 1.x `replicate` JS
// client and the 1.x Python client send no marker: their creates are left alone.
import type { IncomingHttpHeaders } from 'node:http';
import { normalizePrefer } from './prefer.js';

export const RETRY_COUNT_HEADER = 'x-stainless-retry-count';
const TIMEOUT_HEADERS = ['x-stainless-timeout', 'x-stainless-read-timeout'] as const;

/** `replicate-stainless`'s default timeout, which it does not announce. */
const REPLICATE_JS_DEFAULT_TIMEOUT_MS = 60_000;

/** How long a marked create is remembered for its retries: the SDK's 2 retries with backoff and a 60 s timeout fit. */
export const RETRY_MEMORY_SECONDS = 300;

export interface ClientAttempt {
  /** 0 for the first attempt; a value that is not a count counts as a first attempt (it never replays). */
  attempt: number;
  /** When the client gives up on this attempt, less a margin: the gateway answers before then. */
  answerWithinMs?: number;
}

const one = (v: string | string[] | undefined) => (Array.isArray(v) ? v[0] : v);

/** The client's retry marker and timeout, or undefined for a client that sends no marker. */
export function clientAttempt(headers: IncomingHttpHeaders): ClientAttempt | undefined {
  const marker = one(headers[RETRY_COUNT_HEADER]);
  if (marker === undefined) return undefined;
  const attempt = /^\d{1,6}$/.test(marker.trim()) ? Number(marker.trim()) : 0;
  let timeoutMs: number | undefined;
  for (const name of TIMEOUT_HEADERS) {
    const v = Number(one(headers[name]));
    // 0 is what the JS SDK sends for a timeout under a second: too short to answer within, so it tells nothing.
    if (Number.isFinite(v) && v > 0) timeoutMs = Math.min(timeoutMs ?? Infinity, v * 1000);
  }
  // The JS SDK announces only a per-request timeout; its own default (60 s) is the longest Prefer: wait, so run()'s
  // held creates would always outlast it.
  if (timeoutMs === undefined && /^Replicate\/JS /.test(one(headers['user-agent']) ?? '')) timeoutMs = REPLICATE_JS_DEFAULT_TIMEOUT_MS;
  // The margin covers the way back to the client: a quarter of the timeout, at most 2 s.
  const answerWithinMs = timeoutMs === undefined ? undefined : Math.floor(timeoutMs - Math.min(2000, timeoutMs / 4));
  return { attempt, answerWithinMs };
}

/**
 * The Prefer header to forward so that a held create (`Prefer: wait=n`) is answered before the client's timeout:
 * otherwise the client gives up on the held create and sends it again (the SDK's run() sends `Prefer: wait`, 60 s,
 * with a 60 s timeout). One second is left for the create itself; with less than a second left it is not held.
 */
export function preferWithin(prefer: string | undefined, answerWithinMs: number | undefined): string | undefined {
  if (answerWithinMs === undefined || prefer === undefined) return prefer;
  const { waitSeconds } = normalizePrefer(prefer);
  const most = Math.floor(answerWithinMs / 1000) - 1;
  if (waitSeconds <= most) return prefer;
  return most >= 1 ? `wait=${most}` : undefined;
}
