// A new-api reseller's account balance, for simulators that stand for one: the billing routes new-api serves at its
// host root (outside /replicate/v1, so neither recorded nor faulted), answering errors as HTTP 200 with an `error`
// body the way new-api does, and creates refused with its "quota" 403 once the account is empty.
import type { FastifyInstance } from 'fastify';
import { bearerChecker, newApiError } from './protocol.js';

/** new-api's default QUOTA_PER_UNIT: raw quota units in one display unit (USD). */
export const QUOTA_PER_UNIT = 500_000;

export class Billing {
  granted: number;
  used = 0;

  constructor(
    balance: number,
    /** What each create spends, in USD. */
    readonly createCost: number,
  ) {
    this.granted = balance;
  }

  get remaining(): number {
    return this.granted - this.used;
  }

  /** Sets what is left, as a top-up (or a drain) of the account would. */
  set(remaining: number): void {
    this.granted = this.used + remaining;
  }

  /** A create: false when the account is empty (the create is refused), else its cost is spent. */
  spend(): boolean {
    if (this.remaining <= 0) return false;
    this.used += this.createCost;
    return true;
  }
}

export function registerBillingRoutes(app: FastifyInstance, billing: Billing, apiKey: string, api: 'both' | 'token'): void {
  const authorized = bearerChecker(apiKey);
  const denied = newApiError('invalid token', 'invalid_token');
  // A site that turned its OpenAI-style billing off still answers 200, with an error body.
  const off = api === 'token' ? newApiError('the billing API is disabled on this site', null) : undefined;
  app.get('/v1/dashboard/billing/subscription', async (request) => {
    if (off) return off;
    if (!authorized(request.headers.authorization)) return denied;
    const g = billing.granted;
    return { object: 'billing_subscription', has_payment_method: true, soft_limit_usd: g, hard_limit_usd: g, system_hard_limit_usd: g, access_until: 0 };
  });
  // total_usage is in hundredths of the display unit, as OpenAI's (and so new-api's) billing API has it.
  app.get('/v1/dashboard/billing/usage', async (request) => {
    if (off) return off;
    if (!authorized(request.headers.authorization)) return denied;
    return { object: 'list', total_usage: billing.used * 100 };
  });
  app.get('/api/usage/token', async (request) => {
    if (!authorized(request.headers.authorization)) return { success: false, message: 'invalid token' };
    const q = (usd: number) => Math.round(usd * QUOTA_PER_UNIT);
    return {
      code: true,
      message: 'ok',
      data: { object: 'token_usage', name: 'simulator', total_granted: q(billing.granted), total_used: q(billing.used), total_available: q(billing.remaining), unlimited_quota: false, expires_at: 0 },
    };
  });
}
