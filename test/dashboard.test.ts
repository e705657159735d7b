// The operator's dashboard in a real headless Chromium: sign in with the form, see each team's numbers appear after
// its creates (a screenshot is kept in test/artifacts/), a wrong key refused without a cookie, the key in no URL, the
// CSP obeyed (no console violation), CSRF-safe sign-out; and over HTTP, the JSON for scripts and a second replica's
// traffic on the first one's page.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TenantInput } from '../src/access/tenants.js';
import { CSP } from '../src/dashboard/routes.js';
import { launchChromium, openWatchedPage } from './helpers/chromium.js';
import { type Gateway, KEY_A, KEY_B, MODEL_PATH, call, createPrediction, expectProblem, sendHeadOnly, startGateway, useSimulator, waitFor } from './helpers/stack.js';

const s = useSimulator(150);
const ADMIN = 'admin-key-for-the-dashboard-0123456789';
const ARTIFACTS = join(import.meta.dirname, 'artifacts');
const lots = { max: 10_000, timeWindow: '1 minute' };
const TENANTS: TenantInput[] = [
  { id: 'team-a', keys: [KEY_A], rateLimit: lots, maxRunning: 5, budget: { creates: { max: 100, period: 'day' } } },
  // One create a minute: the second is a 429 the page must count.
  { id: 'team-b', keys: [KEY_B], rateLimit: lots, createRateLimit: { max: 1, timeWindow: '1 minute' } },
];

let gw: Gateway;
let browser: Browser;

beforeAll(async () => {
  gw = await startGateway({ sim: s, tenants: TENANTS, env: { ADMIN_API_KEY: ADMIN, LOG_LEVEL: 'warn' } });
  browser = await launchChromium();
});

afterAll(async () => {
  await browser?.close();
  await gw?.close();
});

const openPage = () => openWatchedPage(browser);

const cellOf = (page: Page, tenant: string, field: string) => page.locator(`tr[data-tenant="${tenant}"] td[data-field="${field}"]`);

describe('the dashboard in a browser', () => {
  it('signs in with the form, shows each team\'s creates, 429s, budget and running jobs, draws the charts, and keeps the key out of every URL', async () => {
    const { context, page, urls, errors } = await openPage();
    try {
      const first = await page.goto(`${gw.url}/gateway/admin/`);
      expect(first!.status()).toBe(200);
      expect(first!.headers()['content-security-policy']).toBe(CSP);
      await page.fill('#key', ADMIN);
      const [answer] = await Promise.all([page.waitForResponse((r) => r.url().endsWith('/gateway/admin/login')), page.click('button[type="submit"]')]);
      expect(answer.status()).toBe(303);
      await page.waitForSelector('#updated[data-state="ok"]', { timeout: 8000 });

      const cookies = await context.cookies();
      const session = cookies.find((c) => c.name === 'fgw_admin')!;
      expect(session).toMatchObject({ httpOnly: true, sameSite: 'Strict', path: '/gateway' });

      // Traffic after the page is open: the next refresh (every 3 s) shows it.
      for (let i = 0; i < 3; i++) await createPrediction(gw.url, KEY_A, { prompt: `a ${i}`, duration_ms: 60_000 });
      const bId = await createPrediction(gw.url, KEY_B, { prompt: 'b', duration_ms: 50 });
      // Polls until it ends (misses), then once more from the terminal cache (a hit).
      await waitFor(async () => (await call(gw.url, 'GET', `/replicate/v1/predictions/${bId}`, { key: KEY_B })).body.status === 'succeeded', 5000, 'team-b\'s prediction to end');
      expect((await call(gw.url, 'GET', `/replicate/v1/predictions/${bId}`, { key: KEY_B })).headers.get('x-cache')).toBe('HIT');
      expect((await call(gw.url, 'POST', MODEL_PATH, { key: KEY_B, body: { input: { prompt: 'too many' } } })).status).toBe(429);
      s.sim.injectFault({ kind: 'status', status: 502 }, { match: (m) => m === 'POST' });
      const failed = await call(gw.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: { prompt: 'fails' } } });
      expect(failed.status).toBe(502);
      const failedId = failed.headers.get('x-request-id')!;

      await expect.poll(() => cellOf(page, 'team-a', 'today-creates').innerText(), { timeout: 8000 }).toBe('3');
      expect(await cellOf(page, 'team-b', 'today-creates').innerText()).toBe('1');
      expect(await cellOf(page, 'team-b', 'today-429').innerText()).toBe('1');
      expect(await cellOf(page, 'team-a', 'today-errors').innerText()).toBe('1');
      expect(await cellOf(page, 'team-a', 'month-creates').innerText()).toBe('3');
      // team-a has maxRunning: the store's exact count; team-b's comes from its newest predictions.
      expect(await cellOf(page, 'team-a', 'running').innerText()).toBe('3 / 5');
      expect(await cellOf(page, 'team-a', 'budget').innerText()).toMatch(/^creates 3 \/ 100 per day$/);
      expect(await page.locator('#failures td[data-field="request-id"]').allInnerTexts()).toContain(failedId);
      expect(await page.locator('#breaker').innerText()).toBe('closed');
      expect(await page.locator('#latency').innerText()).toMatch(/^[\d.,]+ ms$/);
      expect(await page.locator('#hit-rate').innerText()).toMatch(/^[\d.,]+ %$/);
      // Three uPlot charts, drawn with the gateway's own copy of the library.
      expect(await page.locator('.chart canvas').count()).toBe(3);

      mkdirSync(ARTIFACTS, { recursive: true });
      await page.screenshot({ path: join(ARTIFACTS, 'dashboard.png'), fullPage: true });

      expect(urls.length).toBeGreaterThan(5);
      for (const u of urls) {
        expect(u.startsWith(gw.url)).toBe(true); // no CDN, nothing from anywhere else
        expect(u).not.toContain(ADMIN);
      }
      // A CSP violation or script error would be reported on the console.
      expect(errors).toEqual([]);

      // Signing out uses the session's CSRF token; the cookie is then worthless, also when replayed.
      await page.click('#logout');
      await page.waitForSelector('#key', { timeout: 5000 });
      const replayed = await call(gw.url, 'GET', '/gateway/admin/api/overview', { headers: { cookie: `fgw_admin=${session.value}` } });
      expect(replayed.status).toBe(401);
    } finally {
      await context.close();
    }
  });

  it('refuses a wrong key on the form, with the reason and without a cookie', async () => {
    const { context, page, urls } = await openPage();
    try {
      await page.goto(`${gw.url}/gateway/admin/`);
      await page.fill('#key', 'not-the-admin-key-at-all');
      const [answer] = await Promise.all([page.waitForResponse((r) => r.url().endsWith('/gateway/admin/login')), page.click('button[type="submit"]')]);
      expect(answer.status()).toBe(401);
      expect(await page.locator('.refused').innerText()).toBe('that is not the admin key');
      expect(await page.locator('#key').count()).toBe(1);
      expect((await context.cookies()).filter((c) => c.name === 'fgw_admin')).toEqual([]);
      for (const u of urls) expect(u).not.toContain('not-the-admin-key');
    } finally {
      await context.close();
    }
  });
});

describe('the dashboard over HTTP', () => {
  async function login(base = gw.url): Promise<string> {
    const r = await fetch(`${base}/gateway/admin/login`, { method: 'POST', redirect: 'manual', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: `key=${ADMIN}` });
    expect(r.status).toBe(303);
    return r.headers.get('set-cookie')!.split(';')[0]!;
  }

  it('refuses a logout without the CSRF token, or from another origin', async () => {
    const cookie = await login();
    const { csrf } = (await call(gw.url, 'GET', '/gateway/admin/api/overview', { headers: { cookie } })).body;
    expect(csrf).toMatch(/^[\w-]{32}$/);
    expectProblem(await call(gw.url, 'POST', '/gateway/admin/logout', { headers: { cookie } }), 403, /CSRF token/);
    expectProblem(await call(gw.url, 'POST', '/gateway/admin/logout', { headers: { cookie, 'x-csrf-token': 'x'.repeat(32) } }), 403, /CSRF token/);
    expectProblem(await call(gw.url, 'POST', '/gateway/admin/logout', { headers: { cookie, 'x-csrf-token': csrf, origin: 'https://evil.example' } }), 403, /cross-origin/);
    // A cross-site login form cannot plant a session either.
    expectProblem(await call(gw.url, 'POST', '/gateway/admin/login', { rawBody: `key=${ADMIN}`, headers: { 'content-type': 'application/x-www-form-urlencoded', 'sec-fetch-site': 'cross-site' } }), 403, /cross-origin/);
    // Still signed in; then out, with the token.
    expect((await call(gw.url, 'GET', '/gateway/admin/api/overview', { headers: { cookie } })).status).toBe(200);
    const out = await call(gw.url, 'POST', '/gateway/admin/logout', { headers: { cookie, 'x-csrf-token': csrf } });
    expect(out.status).toBe(204);
    expect(out.headers.get('set-cookie')).toMatch(/^fgw_admin=; .*Max-Age=0/);
    expect((await call(gw.url, 'GET', '/gateway/admin/api/overview', { headers: { cookie } })).status).toBe(401);
  });

  it('checks the origin before reading a sign-in body, and caps it at 4 KiB whatever its content type', async () => {
    const nineMb = { 'content-type': 'application/json', 'content-length': String(9 * 1024 * 1024) };
    // Each answer comes while the 9 MB are still unsent: the gateway cannot have waited for them.
    const cross = await sendHeadOnly(gw.url, 'POST', '/gateway/admin/login', { ...nineMb, origin: 'https://evil.example' });
    expect(cross).toMatchObject({ status: 403, body: { detail: expect.stringMatching(/cross-origin/) } });
    const crossSite = await sendHeadOnly(gw.url, 'POST', '/gateway/admin/logout', { ...nineMb, 'sec-fetch-site': 'cross-site' });
    expect(crossSite).toMatchObject({ status: 403, body: { detail: expect.stringMatching(/cross-origin/) } });
    const big = await sendHeadOnly(gw.url, 'POST', '/gateway/admin/login', nineMb);
    expect(big).toMatchObject({ status: 413, body: { detail: expect.stringMatching(/4096 bytes/) } });
    // Sent in full: JSON and forms over 4 KiB are 413; a JSON sign-in within it works.
    expectProblem(await call(gw.url, 'POST', '/gateway/admin/login', { body: { key: ADMIN, pad: 'x'.repeat(5000) } }), 413, /4096 bytes/);
    expectProblem(await call(gw.url, 'POST', '/gateway/admin/login', { rawBody: `key=${ADMIN}&pad=${'x'.repeat(5000)}`, headers: { 'content-type': 'application/x-www-form-urlencoded' } }), 413);
    const ok = await fetch(`${gw.url}/gateway/admin/login`, { method: 'POST', redirect: 'manual', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ key: ADMIN }) });
    expect(ok.status).toBe(303);
  });

  it('sends its security headers on answers no dashboard route gives: 404s, a wrong method, a missing file', async () => {
    for (const [method, path, status] of [
      ['GET', '/gateway/admin/nope', 404],
      ['GET', '/gateway/admin/api/nope?x=1', 404],
      ['POST', '/gateway/admin/api/overview', 404],
      ['DELETE', '/gateway/admin/', 404],
      ['GET', '/gateway/admin/assets/nope.js', 404],
    ] as const) {
      const r = await call(gw.url, method, path);
      expectProblem(r, status);
      expect(r.headers.get('content-security-policy'), path).toBe(CSP);
      expect(r.headers.get('x-frame-options'), path).toBe('DENY');
      expect(r.headers.get('x-content-type-options'), path).toBe('nosniff');
      expect(r.headers.get('cache-control'), path).toBe('no-store');
    }
    // Outside the dashboard a 404 stays as it was.
    expect((await call(gw.url, 'GET', '/gateway/nope')).headers.get('content-security-policy')).toBeNull();
  });

  it('serves the JSON to scripts with Bearer ADMIN_API_KEY (no CSRF token then), not to a tenant key', async () => {
    const r = await call(gw.url, 'GET', '/gateway/admin/api/overview', { key: ADMIN });
    expect(r.status).toBe(200);
    expect(r.body.csrf).toBeUndefined();
    expect(r.body.tenants.map((t: { id: string }) => t.id)).toEqual(['team-a', 'team-b']);
    expect(r.headers.get('content-security-policy')).toBe(CSP);
    expect(r.headers.get('cache-control')).toBe('no-store');
    expectProblem(await call(gw.url, 'GET', '/gateway/admin/api/overview', { key: KEY_A }), 401);
    expectProblem(await call(gw.url, 'GET', '/gateway/admin/api/overview'), 401, /log in/);
  });

  it('shows a second replica\'s traffic and session (both share the store)', async () => {
    const prefix = gw.config.REDIS_KEY_PREFIX;
    const other = await startGateway({ sim: s, tenants: TENANTS, prefix, env: { ADMIN_API_KEY: ADMIN, LOG_LEVEL: 'warn' } });
    try {
      const before = (await call(gw.url, 'GET', '/gateway/admin/api/overview', { key: ADMIN })).body;
      const aBefore = before.tenants.find((t: { id: string }) => t.id === 'team-a');
      // team-b may create once a minute, counted across replicas: at least the second of these is a 429.
      const statuses = [];
      for (let i = 0; i < 2; i++) statuses.push((await call(other.url, 'POST', MODEL_PATH, { key: KEY_B, body: { input: { prompt: 'over' } } })).status);
      const limited = statuses.filter((st) => st === 429).length;
      expect(limited).toBeGreaterThanOrEqual(1);
      await other.app.opsStats!.publish(Date.now(), true);
      await waitFor(async () => {
        const o = (await call(gw.url, 'GET', '/gateway/admin/api/overview', { key: ADMIN })).body;
        return o.replicas.length === 2 && o.tenants.find((t: { id: string }) => t.id === 'team-b').today.rate_limited === before.tenants.find((t: { id: string }) => t.id === 'team-b').today.rate_limited + limited;
      }, 5000, 'the other replica\'s 429 on this one\'s overview');
      const after = (await call(gw.url, 'GET', '/gateway/admin/api/overview', { key: ADMIN })).body;
      expect(after.tenants.find((t: { id: string }) => t.id === 'team-a').today.creates).toBe(aBefore.today.creates);
      expect(after.replicas.filter((r: { live: boolean }) => r.live)).toHaveLength(2);
      // A session made on one replica works on the other.
      const cookie = await login(other.url);
      expect((await call(gw.url, 'GET', '/gateway/admin/api/overview', { headers: { cookie } })).status).toBe(200);
    } finally {
      await other.close();
    }
  });

  it('is off without ADMIN_API_KEY, and counts nothing then', async () => {
    const off = await startGateway({ sim: s, tenants: TENANTS, redis: 'memory', env: { LOG_LEVEL: 'warn' } });
    try {
      expect(off.app.opsStats).toBeUndefined();
      expectProblem(await call(off.url, 'GET', '/gateway/admin/'), 403, /set ADMIN_API_KEY/);
      expectProblem(await call(off.url, 'GET', '/gateway/admin/api/overview'), 403, /set ADMIN_API_KEY/);
    } finally {
      await off.close();
    }
  });
});
