// Short-lived tokens for browsers: HS256 JWTs (jose) naming a tenant, optionally narrowed to models and a create budget.
import { randomUUID } from 'node:crypto';
import { SignJWT, errors as joseErrors, jwtVerify } from 'jose';
import { GatewayError } from '../errors.js';
import { BoundedMap } from '../lib/bounded-map.js';
import type { Store } from '../store/store.js';
import type { TokenGrant } from '../types.js';

const ISSUER = 'fuhu-gateway';
const AUDIENCE = 'fuhu-gateway';
export const TOKEN_DEFAULT_TTL_SECONDS = 15 * 60;
export const TOKEN_MAX_TTL_SECONDS = 60 * 60;

/** Three base64url segments: worth trying as a JWT before looking it up as a key. */
export function looksLikeJwt(credential: string): boolean {
  return /^[\w-]+\.[\w-]+\.[\w-]+$/.test(credential);
}

/** The `budget` claim: positive numbers for creates, predictTimeSeconds and cost; anything else is left out. */
function budgetClaim(claim: unknown): TokenGrant['budget'] {
  if (typeof claim !== 'object' || claim === null) return undefined;
  const out: NonNullable<TokenGrant['budget']> = {};
  for (const k of ['creates', 'predictTimeSeconds', 'cost'] as const) {
    const v = (claim as Record<string, unknown>)[k];
    if (typeof v === 'number' && v > 0) out[k] = v;
  }
  return Object.keys(out).length ? out : undefined;
}

/** Verified tokens remembered per process: a browser sends the same token on every poll until it expires. */
const VERIFIED_KEPT = 10_000;

export class TokenSigner {
  readonly #secret: Uint8Array;
  // An HS256 verify costs about 80 µs, a map lookup well under one. A token is immutable and valid until its `exp`,
  // so each one verified is remembered for exactly that long; a token that differs in one byte is another key.
  readonly #verified = new BoundedMap<{ tenantId: string; grant: TokenGrant }>({ maxEntries: VERIFIED_KEPT });
  constructor(secret: string) {
    this.#secret = new TextEncoder().encode(secret);
  }

  async sign(
    tenantId: string,
    opts: { ttlSeconds: number; models?: string[]; maxCreates?: number; budget?: TokenGrant['budget']; predictions?: string[]; gen?: string },
  ): Promise<{ token: string; expiresAt: Date }> {
    const now = Math.floor(Date.now() / 1000);
    const exp = now + opts.ttlSeconds;
    const claims: Record<string, unknown> = {};
    if (opts.models) claims.models = opts.models;
    if (opts.maxCreates !== undefined) claims.max_creates = opts.maxCreates;
    if (opts.budget) claims.budget = opts.budget;
    if (opts.predictions) claims.predictions = opts.predictions;
    if (opts.gen) claims.gen = opts.gen;
    const token = await new SignJWT(claims)
      .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
      .setSubject(tenantId)
      .setIssuer(ISSUER)
      .setAudience(AUDIENCE)
      .setJti(randomUUID())
      .setIssuedAt(now)
      .setExpirationTime(exp)
      .sign(this.#secret);
    return { token, expiresAt: new Date(exp * 1000) };
  }

  /** The tenant id and grant of a valid token; a 401 naming what is wrong otherwise. */
  async verify(token: string): Promise<{ tenantId: string; grant: TokenGrant }> {
    const known = this.#verified.get(token);
    if (known) return known;
    try {
      const { payload } = await jwtVerify(token, this.#secret, { issuer: ISSUER, audience: AUDIENCE, algorithms: ['HS256'] });
      if (typeof payload.sub !== 'string' || typeof payload.jti !== 'string' || typeof payload.exp !== 'number') {
        throw new GatewayError('UNAUTHENTICATED', 'the token is missing required claims');
      }
      const models = Array.isArray(payload.models) ? payload.models.filter((m): m is string => typeof m === 'string') : undefined;
      const maxCreates = typeof payload.max_creates === 'number' ? payload.max_creates : undefined;
      const budget = budgetClaim(payload.budget);
      const predictions = Array.isArray(payload.predictions) ? payload.predictions.filter((p): p is string => typeof p === 'string') : undefined;
      const gen = typeof payload.gen === 'string' ? payload.gen : undefined;
      const verified = {
        tenantId: payload.sub,
        grant: { jti: payload.jti, exp: payload.exp, models, maxCreates, ...(budget && { budget }), ...(predictions && { predictions }), ...(gen && { gen }) },
      };
      // Until a second before it expires: past that, jose's own verify answers (and says "expired").
      const ttlMs = payload.exp * 1000 - Date.now() - 1000;
      if (ttlMs > 0) this.#verified.set(token, verified, ttlMs);
      return verified;
    } catch (err) {
      if (err instanceof GatewayError) throw err;
      if (err instanceof joseErrors.JWTExpired) throw new GatewayError('UNAUTHENTICATED', 'the token has expired; request a new one');
      throw new GatewayError('UNAUTHENTICATED', 'the token is invalid (bad signature or claims)');
    }
  }
}

/** Counts one create against a token's `max_creates` (atomic in the store, so replicas share it); 429 past it. */
export async function spendTokenCreate(store: Store, token: TokenGrant | undefined): Promise<void> {
  if (token?.maxCreates === undefined) return;
  const ttlMs = Math.max(1000, token.exp * 1000 - Date.now() + 60_000);
  const used = await store.incrCounter(`tok:${token.jti}`, ttlMs);
  if (used > token.maxCreates) {
    throw new GatewayError('RATE_LIMITED', `this token's create budget of ${token.maxCreates} is used up; request a new token`, {
      headers: { 'retry-after': String(Math.max(1, Math.ceil(token.exp - Date.now() / 1000))) },
    });
  }
}
