// The operator's dashboard under /gateway/admin: a login form that trades ADMIN_API_KEY for a session cookie (the
// session lives in the shared kv, so any replica serves it), the page and its static files (uPlot included, from
// node_modules, no CDN), and the JSON it refreshes from. Strict CSP, no inline script or style, CSRF-safe POSTs.
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import { credentialOf, sameSecret } from '../access/credentials.js';
import { GatewayError } from '../errors.js';
import { buildOverview } from './overview.js';
import { SESSION_COOKIE, SESSION_COOKIE_PATH, SESSION_TTL_MS, Sessions, sameOriginOnly } from './session.js';
import type { OpsStats } from './stats.js';

export { SESSION_COOKIE };
const OVERVIEW_REUSE_MS = 1000;
/** The largest sign-in or sign-out body, in any content type. */
const SIGN_IN_BODY_LIMIT = 4096;

export const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const SECURITY_HEADERS = {
  'content-security-policy': CSP,
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  // Not no-referrer: with it, Chromium sends `Origin: null` on the page's own form POST.
  'referrer-policy': 'same-origin',
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-resource-policy': 'same-origin',
  'cache-control': 'no-store',
};

/**
 * The security headers on every answer under /gateway/admin, set at the root by path: a hook of the dashboard's own
 * routes would miss what no route of it answers (404s, a wrong method, a refusal by a hook of the API's context).
 */
export const dashboardHeaders = fp(
  async (app) => {
    // Every request passes here: synchronous, and one prefix check before anything is allocated.
    app.addHook('onRequest', (request, reply, done) => {
      if (request.url.startsWith('/gateway/admin')) {
        const path = request.url.split('?', 1)[0]!;
        if (path === '/gateway/admin' || path.startsWith('/gateway/admin/')) reply.headers(SECURITY_HEADERS);
      }
      done();
    });
  },
  { name: 'dashboard-headers' },
);

interface Asset {
  body: Buffer;
  type: string;
}

/** The page's files, read once at boot: ours next to this module (copied into dist by the build), uPlot's from its package. */
type PageName = 'dashboard' | 'login' | 'teams';

function loadAssets(): { pages: Record<PageName, string>; assets: Map<string, Asset> } {
  const here = join(dirname(fileURLToPath(import.meta.url)), 'static');
  const uplot = join(dirname(createRequire(import.meta.url).resolve('uplot/package.json')), 'dist');
  const file = (dir: string, name: string) => readFileSync(join(dir, name));
  const assets = new Map<string, Asset>([
    ['dashboard.js', { body: file(here, 'dashboard.js'), type: 'text/javascript; charset=utf-8' }],
    ['teams.js', { body: file(here, 'teams.js'), type: 'text/javascript; charset=utf-8' }],
    ['dashboard.css', { body: file(here, 'dashboard.css'), type: 'text/css; charset=utf-8' }],
    ['uPlot.iife.min.js', { body: file(uplot, 'uPlot.iife.min.js'), type: 'text/javascript; charset=utf-8' }],
    ['uPlot.min.css', { body: file(uplot, 'uPlot.min.css'), type: 'text/css; charset=utf-8' }],
  ]);
  const page = (name: string) => file(here, name).toString('utf8');
  return { pages: { dashboard: page('dashboard.html'), login: page('login.html'), teams: page('teams.html') }, assets };
}

const escapeHtml = (s: string) => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

export async function dashboardRoutes(app: FastifyInstance, opts: { stats: OpsStats | undefined }): Promise<void> {
  const { config, kv } = app;
  const adminKey = config.ADMIN_API_KEY;
  const stats = opts.stats;

  if (!adminKey || !stats) {
    app.get('/*', { config: { auth: 'session' } }, async () => {
      throw new GatewayError('FORBIDDEN', 'the dashboard is disabled: set ADMIN_API_KEY');
    });
    return;
  }
  const sessions = new Sessions(kv, adminKey);
  const { pages, assets } = loadAssets();
  const ownOrigins = new Set(config.PUBLIC_BASE_URL ? [new URL(config.PUBLIC_BASE_URL).origin] : []);

  // The login form posts application/x-www-form-urlencoded; only here. Its limit is the routes' (SIGN_IN_BODY_LIMIT).
  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string' }, (_request, body, done) => {
    done(null, Object.fromEntries(new URLSearchParams(body as string)));
  });

  const sessionOf = (request: FastifyRequest) => sessions.of(request);

  // Refused before its body is read: closing the connection spares reading the rest (src/dashboard/session.ts).
  const checkSameOrigin = (request: FastifyRequest) => sameOriginOnly(request, ownOrigins);

  // Sign-in and sign-out: the origin is checked in onRequest, before a byte of the body is read, and the body, whatever
  // its content type, may be 4 KiB at most (a key and a CSRF token), not BODY_LIMIT_BYTES.
  const post = { config: { auth: 'session' as const }, bodyLimit: SIGN_IN_BODY_LIMIT, onRequest: async (request: FastifyRequest) => checkSameOrigin(request) };

  function page(reply: FastifyReply, name: PageName, status = 200, message = ''): FastifyReply {
    const html = pages[name].replace('<!--message-->', message ? `<p class="refused" role="alert">${escapeHtml(message)}</p>` : '');
    return reply.code(status).type('text/html; charset=utf-8').send(html);
  }

  const cookie = (request: FastifyRequest, sid: string, maxAgeS: number) =>
    `${SESSION_COOKIE}=${sid}; Path=${SESSION_COOKIE_PATH}; HttpOnly; SameSite=Strict; Max-Age=${maxAgeS}${request.protocol === 'https' || config.PUBLIC_BASE_URL?.startsWith('https:') ? '; Secure' : ''}`;

  app.get('/', { config: { auth: 'session' } }, async (request, reply) => page(reply, (await sessionOf(request)) ? 'dashboard' : 'login'));

  // Teams and keys (the admin API, src/admin/, called with the session cookie and its CSRF token).
  app.get('/teams', { config: { auth: 'session' } }, async (request, reply) => page(reply, (await sessionOf(request)) ? 'teams' : 'login'));

  /** The session's CSRF token, for the teams page's changes through the admin API. */
  app.get('/api/session', { config: { auth: 'session' } }, async (request) => {
    const session = await sessionOf(request);
    if (!session) throw new GatewayError('UNAUTHENTICATED', 'not signed in to the dashboard');
    return { csrf: session.csrf };
  });

  app.get('/assets/:name', { config: { auth: 'session' } }, async (request, reply) => {
    const asset = assets.get((request.params as { name: string }).name);
    if (!asset) throw new GatewayError('NOT_FOUND', 'no such dashboard file');
    return reply.header('cache-control', 'public, max-age=300').type(asset.type).send(asset.body);
  });

  app.post('/login', post, async (request, reply) => {
    const key = (request.body as { key?: unknown } | undefined)?.key;
    if (typeof key !== 'string' || !sameSecret(key, adminKey)) {
      try {
        await app.authFailure(request, 'that is not the admin key');
      } catch (err) {
        const e = err as GatewayError;
        reply.headers(e.headers);
        return page(reply, 'login', e.statusCode, e.message);
      }
    }
    const sid = randomBytes(32).toString('base64url');
    await sessions.create(sid, randomBytes(24).toString('base64url'));
    return reply.code(303).header('set-cookie', cookie(request, sid, SESSION_TTL_MS / 1000)).header('location', '/gateway/admin/').send();
  });

  app.post('/logout', post, async (request, reply) => {
    const session = await sessionOf(request);
    if (!session) throw new GatewayError('UNAUTHENTICATED', 'not logged in to the dashboard');
    const token = request.headers['x-csrf-token'] ?? (request.body as { csrf?: unknown } | undefined)?.csrf;
    if (typeof token !== 'string' || !sameSecret(token, session.csrf)) throw new GatewayError('FORBIDDEN', 'the logout needs the CSRF token of this session');
    await sessions.end(session.sid);
    return reply.code(204).header('set-cookie', cookie(request, '', 0)).send();
  });

  // Concurrent page refreshes on one replica share one read of the store.
  let last: { at: number; value: Promise<Awaited<ReturnType<typeof buildOverview>>> } | undefined;
  app.get('/api/overview', { config: { auth: 'session' } }, async (request) => {
    let csrf: string | undefined;
    const credential = credentialOf(request);
    if (credential !== undefined) {
      if (!sameSecret(credential, adminKey)) await app.authFailure(request, 'the admin key is not valid');
    } else {
      const session = await sessionOf(request);
      if (!session) throw new GatewayError('UNAUTHENTICATED', 'log in at /gateway/admin/ or send "Authorization: Bearer <ADMIN_API_KEY>"');
      csrf = session.csrf;
    }
    const now = Date.now();
    if (!last || now - last.at > OVERVIEW_REUSE_MS) {
      last = { at: now, value: buildOverview(app, stats, now) };
      last.value.catch(() => (last = undefined));
    }
    const overview = await last.value;
    return csrf ? { ...overview, csrf } : overview;
  });
}
