// The teams and keys page in a real headless Chromium: sign in, create a team, edit its limits, issue a key (shown
// once, copied with the button), rotate and revoke it, and read the audit trail; each change checked over HTTP as a
// client would notice it. No console error or CSP violation, and no secret in any URL.
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { launchChromium, openWatchedPage } from './helpers/chromium.js';
import { type Gateway, call, expectProblem, startGateway, useSimulator } from './helpers/stack.js';

const s = useSimulator(50);
const ADMIN = 'admin-key-for-the-teams-page-0123456789';

let gw: Gateway;
let browser: Browser;

beforeAll(async () => {
  gw = await startGateway({ sim: s, env: { ADMIN_API_KEY: ADMIN, LOG_LEVEL: 'warn' } });
  browser = await launchChromium();
});

afterAll(async () => {
  await browser?.close();
  await gw?.close();
});

const account = (key: string) => call(gw.url, 'GET', '/replicate/v1/account', { key });
const tenant = async (id: string) => (await call(gw.url, 'GET', `/gateway/v1/admin/tenants/${id}`, { key: ADMIN })).body;

/** Clicks and waits for the page's message to say `text`. */
async function act(page: Page, click: () => Promise<void>, text: RegExp): Promise<void> {
  await click();
  await page.waitForFunction((re) => new RegExp(re).test(document.getElementById('message')!.textContent ?? ''), text.source, { timeout: 8000 });
  const m = page.locator('#message');
  expect(await m.getAttribute('data-kind'), await m.textContent() ?? '').toBe('ok');
}

describe('the teams and keys page in a browser', () => {
  it('creates a team, edits its limits, issues, copies, rotates and revokes a key, and shows the audit trail', async () => {
    const { context, page, urls, errors } = await openWatchedPage(browser);
    await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: gw.url });
    try {
      await page.goto(`${gw.url}/gateway/admin/`);
      await page.fill('#key', ADMIN);
      await Promise.all([page.waitForURL(`${gw.url}/gateway/admin/`), page.click('button[type="submit"]')]);
      await page.click('a[href="/gateway/admin/teams"]');
      await page.waitForSelector('body[data-ready="true"]');
      // The tenants file's team is listed, read-only.
      await page.waitForSelector('#teams tr[data-team="team-a"]');
      expect(await page.locator('#teams tr[data-team="team-a"] button').count()).toBe(0);

      // Create a team.
      await page.fill('#new-id', 'web-team');
      await page.fill('#new-rate', '120');
      await page.fill('#new-budget', '40');
      await act(page, () => page.click('#create-team button[type="submit"]'), /team web-team created/);
      await page.waitForSelector('#team:not([hidden])');
      expect(await tenant('web-team')).toMatchObject({ source: 'api', rateLimit: { max: 120, timeWindow: 60_000 }, budget: { creates: { max: 40, period: 'day' } } });

      // Edit its limits.
      await page.fill('#edit-running', '4');
      await page.fill('#edit-budget', '');
      await act(page, () => page.click('#edit-team button[type="submit"]'), /limits of web-team saved/);
      const edited = await tenant('web-team');
      expect(edited.maxRunning).toBe(4);
      expect(edited.budget).toBeUndefined();

      // Issue a key: shown once, copied with the button, and it works.
      await page.fill('#key-name', 'laptop');
      await act(page, () => page.click('#issue-key button[type="submit"]'), /key \w+ issued/);
      const key = await page.inputValue('#secret');
      expect(key).toMatch(/^fgw_[a-z0-9]{12}_/);
      await page.click('#copy');
      await page.waitForSelector('#copied:not([hidden])');
      expect(await page.evaluate(() => navigator.clipboard.readText())).toBe(key);
      expect((await account(key)).status).toBe(200);
      const keyId = key.slice(4, 16);
      const row = page.locator(`#keys tr[data-key="${keyId}"]`);
      expect(await row.locator('td[data-field="name"]').textContent()).toBe('laptop');
      // The list never shows the secret.
      expect(await page.locator('#keys').textContent()).not.toContain(key.slice(17));

      // Rotate without a grace: a new secret, the old one refused at once.
      await page.fill('#grace', '0');
      await act(page, () => row.locator('button.rotate').click(), new RegExp(`key ${keyId} rotated`));
      const rotated = await page.inputValue('#secret');
      expect(rotated).not.toBe(key);
      expect(rotated.slice(4, 16)).toBe(keyId);
      expectProblem(await account(key), 401);
      expect((await account(rotated)).status).toBe(200);

      // Revoke.
      await act(page, () => row.locator('button.revoke').click(), new RegExp(`key ${keyId} revoked`));
      expectProblem(await account(rotated), 401);
      await page.waitForFunction((id) => !document.querySelector(`#keys tr[data-key="${id}"]`), keyId);

      // The audit trail, newest first, names the dashboard session.
      await page.waitForFunction(() => document.querySelector('#audit tbody tr td[data-field="action"]')?.textContent === 'key.revoke');
      const actions = await page.locator('#audit tbody td[data-field="action"]').allTextContents();
      expect(actions.slice(0, 5)).toEqual(['key.revoke', 'key.rotate', 'key.create', 'tenant.update', 'tenant.create']);
      expect(await page.locator('#audit tbody tr').first().locator('td[data-field="actor"]').textContent()).toMatch(/^dashboard session [0-9a-f]{12}$/);
      expect(await page.locator('#audit').textContent()).not.toContain(key.slice(17));

      expect(errors).toEqual([]);
      for (const u of urls) {
        expect(u).not.toContain(key.slice(17));
        expect(u).not.toContain(rotated.slice(17));
        expect(u).not.toContain(ADMIN);
      }
    } finally {
      await context.close();
    }
  });
});
