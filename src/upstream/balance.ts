// A new-api reseller's balance, read with the account's own key through its UpstreamClient (the only holder of the
// key). new-api answers errors on these routes as HTTP 200 with an `error` (or `success: false`) body, so a 200 is
// not yet a reading. The routes are at the reseller's host root, not below the /replicate/v1 base.
import type { UpstreamClient } from './client.js';

/** What one read found, in the site's display unit (USD on most resellers). */
export interface BalanceReading {
  /** What is left; Infinity for an unlimited key. */
  remaining: number;
  /** Which routes answered: the OpenAI-style billing pair, or new-api's own token usage. */
  source: 'billing' | 'token';
}

/** new-api's "unlimited" in the billing routes' hard_limit_usd. */
const UNLIMITED_USD = 100_000_000;

/** The JSON of a 200 that is not an error body; throws with the reseller's message otherwise. */
function payload(text: string, what: string): Record<string, unknown> {
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw new Error(`${what} answered something that is not JSON`);
  }
  if (!body || typeof body !== 'object') throw new Error(`${what} answered something that is not an object`);
  const b = body as Record<string, unknown>;
  const err = b.error;
  if (err) {
    const msg = typeof err === 'string' ? err : typeof (err as { message?: unknown }).message === 'string' ? (err as { message: string }).message : 'an error';
    throw new Error(`${what} answered an error: ${msg.slice(0, 200)}`);
  }
  if (b.success === false || b.code === false) throw new Error(`${what} answered an error: ${String(b.message ?? 'unsuccessful').slice(0, 200)}`);
  return b;
}

const num = (v: unknown): number | undefined => (typeof v === 'number' && Number.isFinite(v) ? v : typeof v === 'string' && v.trim() !== '' && Number.isFinite(Number(v)) ? Number(v) : undefined);

/**
 * The balance: granted minus used from the billing pair (hard_limit_usd is granted in display units; total_usage is
 * used × 100), else new-api's /api/usage/token (raw quota units, `quotaPerUnit` to one display unit). The error
 * thrown names what failed; it never carries the key (the client scrubs every answer).
 */
export async function readBalance(client: UpstreamClient, name: string, quotaPerUnit: number): Promise<BalanceReading> {
  const get = async (path: string) =>
    (await client.request({ method: 'GET', path, root: true, requestId: `balance-${name}`, tenant: '-balance', retry: true, timeoutMs: 10_000, bypassBreakers: true })).body;
  let billingError: string;
  try {
    const [sub, usage] = await Promise.all([get('/v1/dashboard/billing/subscription'), get('/v1/dashboard/billing/usage')]);
    const granted = num(payload(sub, '/v1/dashboard/billing/subscription').hard_limit_usd);
    const used = num(payload(usage, '/v1/dashboard/billing/usage').total_usage);
    if (granted === undefined || used === undefined) throw new Error('the billing routes answered without hard_limit_usd or total_usage');
    return { remaining: granted >= UNLIMITED_USD ? Infinity : granted - used / 100, source: 'billing' };
  } catch (err) {
    billingError = (err as Error).message;
  }
  try {
    const data = payload(await get('/api/usage/token'), '/api/usage/token').data as Record<string, unknown> | undefined;
    if (data?.unlimited_quota === true) return { remaining: Infinity, source: 'token' };
    const available = num(data?.total_available);
    if (available === undefined) throw new Error('/api/usage/token answered without data.total_available');
    return { remaining: available / quotaPerUnit, source: 'token' };
  } catch (err) {
    throw new Error(`no balance: ${billingError}; ${(err as Error).message}`);
  }
}
