// What a browser meets: CORS preflights and exposed headers, the per-tenant origin check, and the whole flow in a
// real browser. There headless Chromium loads a page from another origin, which gets a short-lived token from its
// own backend, then creates and polls a prediction through the gateway with CORS. The same page from an origin the
// tenant does not allow fails, and says so.
import type { Browser, Page } from 'playwright-core';
import { beforeAll, afterAll, describe, expect, it } from 'vitest';
import type { TenantInput } from '../src/access/tenants.js';
import { launchChromium } from './helpers/chromium.js';
import { freePort } from './support/processes.js';
import { type DemoBackend, startDemoBackend } from './fixtures/browser/backend.js';
import { type Gateway, KEY_A, MODEL_PATH, call, expectProblem, startGateway, upstreamCalls, useGateway, useSimulator } from './helpers/stack.js';

const s = useSimulator(150);

describe('browser origins', () => {
  const key = (id: string) => `${id}-key-0123456789abcdef`;
  const lots = { max: 10_000, timeWindow: '1 minute' };
  const TENANTS: TenantInput[] = [
    { id: 'team-a', keys: [KEY_A], rateLimit: lots, allowedOrigins: ['https://app.example.com'] },
    { id: 'open', keys: [key('open')], rateLimit: lots },
    { id: 'web', keys: [key('web')], rateLimit: lots, allowedOrigins: ['https://app.example.com'] },
  ];
  const gw = useGateway(() => ({ sim: s, tenants: TENANTS, env: { TRUST_PROXY: 'true', LOG_LEVEL: 'warn' } }));
  const create = (k: string, headers?: Record<string, string>) => call(gw.url, 'POST', MODEL_PATH, { key: k, body: { input: { prompt: 'a cat' } }, headers });

  const ORIGIN = 'https://app.example.com';

  it('answers a preflight for an origin some tenant allows, with the headers a browser client needs', async () => {
    const res = await fetch(`${gw.url}${MODEL_PATH}`, {
      method: 'OPTIONS',
      headers: { origin: ORIGIN, 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization,content-type,prefer,idempotency-key' },
    });
    expect(res.status).toBe(204);
    expect(res.headers.get('access-control-allow-origin')).toBe(ORIGIN);
    const allowed = (res.headers.get('access-control-allow-headers') ?? '').toLowerCase().split(/\s*,\s*/);
    expect(allowed).toEqual(expect.arrayContaining(['authorization', 'content-type', 'prefer', 'idempotency-key']));
    expect(res.headers.get('access-control-allow-methods')).toMatch(/POST/);

    const unknown = await fetch(`${gw.url}${MODEL_PATH}`, { method: 'OPTIONS', headers: { origin: 'https://evil.example', 'access-control-request-method': 'POST' } });
    expect(unknown.headers.get('access-control-allow-origin')).toBeNull();
  });

  it('serves an allowed origin with exposed x-ratelimit-*, retry-after, x-cache and x-request-id', async () => {
    const r = await create(key('web'), { origin: ORIGIN });
    expect(r.status).toBe(201);
    expect(r.headers.get('access-control-allow-origin')).toBe(ORIGIN);
    const exposed = (r.headers.get('access-control-expose-headers') ?? '').toLowerCase().split(/\s*,\s*/);
    expect(exposed).toEqual(expect.arrayContaining(['x-ratelimit-limit', 'x-ratelimit-remaining', 'x-ratelimit-reset', 'retry-after', 'x-cache', 'x-request-id']));
  });

  it('refuses with 403 an Origin the tenant does not allow (even one another tenant allows); servers send none and pass', async () => {
    expectProblem(await create(key('web'), { origin: 'https://other.example.com' }), 403, /origin https:\/\/other\.example\.com is not allowed for this tenant/);
    expectProblem(await create(key('open'), { origin: ORIGIN }), 403, /origin https:\/\/app\.example\.com is not allowed/);
    expect(upstreamCalls(s.sim)).toHaveLength(0);
    expect((await create(key('web'))).status).toBe(201);
  });

  it('match whatever the case of the Origin header', async () => {
    const r = await call(gw.url, 'GET', '/replicate/v1/predictions', { key: KEY_A, headers: { origin: 'https://APP.example.com' } });
    expect(r.status).toBe(200);
    expect((await call(gw.url, 'GET', '/replicate/v1/predictions', { key: KEY_A, headers: { origin: 'https://evil.example.com' } })).status).toBe(403);
  });
});

describe('a browser page on another origin', () => {
  const BROWSER_KEY = 'browser-tenant-key-0123456789abcdef';
  const OTHER_KEY = 'other-tenant-key-0123456789abcdef';

  let gw: Gateway;
  let browser: Browser;
  const backends: DemoBackend[] = [];
  let allowed: string; // http://127.0.0.1:<port>: the browser tenant's origin
  let otherTenants: string; // http://localhost:<port>: allowed for another tenant only
  let nobodys: string; // http://localhost:<port>: allowed for no tenant

  beforeAll(async () => {
    const [p1, p2, p3] = await Promise.all([freePort(), freePort(), freePort()]);
    // Both names are loopback, but to the browser and the gateway they are different origins.
    allowed = `http://127.0.0.1:${p1}`;
    otherTenants = `http://localhost:${p2}`;
    nobodys = `http://localhost:${p3}`;
    gw = await startGateway({
      sim: s,
      tenants: [
        { id: 'browser-app', keys: [BROWSER_KEY], allowedOrigins: [allowed], rateLimit: { max: 100, timeWindow: '1 minute', perIp: { max: 50 } } },
        { id: 'other-app', keys: [OTHER_KEY], allowedOrigins: [otherTenants] },
      ],
      env: { TOKEN_SIGNING_SECRET: 'browser-test-signing-secret-0123456789abcdef', LOG_LEVEL: 'warn' },
    });
    for (const port of [p1, p2, p3]) backends.push(await startDemoBackend({ port, gatewayUrl: gw.url, tenantKey: BROWSER_KEY }));
    browser = await launchChromium();
  });

  afterAll(async () => {
    await browser?.close();
    await Promise.all(backends.map((b) => b.close()));
    await gw?.close();
  });

  /** Opens the demo page at `origin` and waits until it shows a final state. */
  async function runPage(origin: string): Promise<{ state: string; status: string; prediction: string; ratelimit: string; console: string[] }> {
    const context = await browser.newContext();
    const page: Page = await context.newPage();
    const consoleLines: string[] = [];
    page.on('console', (m) => consoleLines.push(m.text()));
    try {
      await page.goto(`${origin}/`, { timeout: 5000 });
      await page.waitForSelector('#status[data-state="done"], #status[data-state="error"]', { timeout: 8000 });
      const text = (id: string) => page.locator(`#${id}`).innerText();
      return {
        state: (await page.locator('#status').getAttribute('data-state')) ?? '',
        status: await text('status'),
        prediction: await text('prediction'),
        ratelimit: await text('ratelimit'),
        console: consoleLines,
      };
    } finally {
      await context.close();
    }
  }

  it('gets a token from its backend, then creates and polls a prediction through the gateway to the end', async () => {
    s.sim.clearRequests();
    const r = await runPage(allowed);
    expect(r, r.console.join('\n')).toMatchObject({ state: 'done', status: 'succeeded' });
    expect(r.prediction).toMatch(/^\w+$/);
    // The exposed x-ratelimit-remaining was readable from page JS.
    expect(Number(r.ratelimit)).toBeGreaterThan(0);
    expect(backends[0]!.tokensIssued()).toBe(1);
    // The browser really went through the gateway: the create reached upstream with the gateway's key.
    const creates = upstreamCalls(s.sim, /\/models\/black-forest-labs\/flux-schnell\/predictions$/);
    expect(creates).toHaveLength(1);
    expect(creates[0]!.headers.authorization).toBe(`Bearer ${s.apiKey}`);
  });

  it('fails from an origin the tenant does not allow, even with a valid token, and the page shows the 403', async () => {
    s.sim.clearRequests();
    const r = await runPage(otherTenants);
    expect(r.state).toBe('error');
    expect(r.status).toContain('403');
    expect(r.status).toContain(`origin ${otherTenants} is not allowed for this tenant`);
    expect(r.prediction).toBe('');
    expect(backends[1]!.tokensIssued()).toBe(1);
    expect(upstreamCalls(s.sim)).toHaveLength(0);
  });

  it('is blocked by the browser itself from an origin no tenant allows, and the page shows the error', async () => {
    s.sim.clearRequests();
    const r = await runPage(nobodys);
    expect(r.state).toBe('error');
    expect(r.status).toMatch(/TypeError: Failed to fetch/);
    expect(r.console.join('\n')).toMatch(/CORS/);
    expect(backends[2]!.tokensIssued()).toBe(1);
    expect(upstreamCalls(s.sim)).toHaveLength(0);
  });
});
