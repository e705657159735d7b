// Dashboard sessions: a random id in an HttpOnly cookie, its CSRF token and the admin key that made it in the
// shared kv (any replica serves it). The dashboard's routes and the admin API (src/admin/) both read them.
import { createHash } from 'node:crypto';
import type { FastifyRequest } from 'fastify';
import { GatewayError } from '../errors.js';
import type { KvStore } from '../store/kv-store.js';

export const SESSION_COOKIE = 'fgw_admin';
export const SESSION_TTL_MS = 8 * 3_600_000;
/** The cookie goes to the page (/gateway/admin) and the admin API it calls (/gateway/v1/admin). */
export const SESSION_COOKIE_PATH = '/gateway';

export interface Session {
  csrf: string;
  /** Which admin key made it: rotating ADMIN_API_KEY ends every session. */
  key: string;
}

const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');

export function cookieValue(header: string | undefined, name: string): string | undefined {
  if (!header) return undefined;
  for (const part of header.split(';')) {
    const i = part.indexOf('=');
    if (i > 0 && part.slice(0, i).trim() === name) return part.slice(i + 1).trim();
  }
  return undefined;
}

export class Sessions {
  /** Which admin key sessions belong to, without the key itself. */
  readonly keyTag: string;
  constructor(private readonly kv: KvStore, adminKey: string) {
    this.keyTag = sha256(`fgw-dashboard:${adminKey}`).slice(0, 16);
  }

  static kvKey(sid: string): string {
    return `dash:sess:${sha256(sid)}`;
  }

  /** The request's session id, if it carries a well-formed one. */
  idOf(request: FastifyRequest): string | undefined {
    const sid = cookieValue(request.headers.cookie, SESSION_COOKIE);
    return sid && /^[A-Za-z0-9_-]{43}$/.test(sid) ? sid : undefined;
  }

  /** A short, stable name of a session for the audit trail: not the id (which is the credential). */
  static label(sid: string): string {
    return sha256(`fgw-session-label:${sid}`).slice(0, 12);
  }

  async of(request: FastifyRequest): Promise<(Session & { sid: string }) | undefined> {
    const sid = this.idOf(request);
    if (!sid) return undefined;
    const text = await this.kv.get(Sessions.kvKey(sid));
    if (!text) return undefined;
    const s = JSON.parse(text) as Session;
    return s.key === this.keyTag ? { ...s, sid } : undefined;
  }

  async create(sid: string, csrf: string): Promise<void> {
    await this.kv.set(Sessions.kvKey(sid), JSON.stringify({ csrf, key: this.keyTag } satisfies Session), SESSION_TTL_MS);
  }

  async end(sid: string): Promise<void> {
    await this.kv.set(Sessions.kvKey(sid), '', 1);
  }
}

/**
 * A state-changing request with a session must come from this gateway's own pages: SameSite=Strict already keeps
 * the cookie off others, this is the second lock. `ownOrigins`: PUBLIC_BASE_URL's origin, when set.
 */
export function sameOriginOnly(request: FastifyRequest, ownOrigins: ReadonlySet<string>): void {
  const site = request.headers['sec-fetch-site'];
  const origin = request.headers.origin;
  const own = `${request.protocol}://${request.host}`.toLowerCase();
  const sameSite = site === undefined || site === 'same-origin' || site === 'none';
  // Scripts and curl send no Origin; a browser always does on a POST ("null" from some pages, when
  // Sec-Fetch-Site, which no page can forge, still says same-origin).
  const sameOrigin =
    origin === undefined || origin.toLowerCase() === own || ownOrigins.has(origin.toLowerCase()) || (origin === 'null' && site === 'same-origin');
  if (!sameSite || !sameOrigin) throw new GatewayError('FORBIDDEN', 'a cross-origin request to the dashboard was refused', { headers: { connection: 'close' } });
}
