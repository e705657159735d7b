// Replicate's new official SDK (`replicate-stainless`), unchanged but for its base URL and token, against the gateway
// over real HTTP (issue 23, items 11-17); where the SDK cannot show a detail, the requests it sends are sent by hand.
import { readFileSync } from 'node:fs';
import { type Server, createServer } from 'node:http';
import { dirname, join, normalize } from 'node:path';
import { createRequire } from 'node:module';
import type { Browser } from 'playwright-core';
import Replicate from 'replicate-stainless';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { launchChromium } from './helpers/chromium.js';
import { fingerprintOf } from '../src/predictions/idempotency.js';
import { CATALOGUE, HARDWARE, simVersionOf } from '../src/simulator/models.js';
import { type Gateway, KEY_A, KEY_B, MODEL_PATH, call, startGateway, upstreamCalls, useGateway, useSimulator, waitFor } from './helpers/stack.js';

const s = useSimulator(100);
const ORIGIN = 'https://app.example.com';
// team-c may use one black-forest-labs model and meta's.
const KEY_C = 'team-c-key-0123456789abcdef';
const gw = useGateway(() => ({
  sim: s,
  tenants: [
    { id: 'team-a', keys: [KEY_A], allowedOrigins: [ORIGIN] },
    { id: 'team-b', keys: [KEY_B] },
    { id: 'team-c', keys: [KEY_C], models: ['black-forest-labs/flux-dev', 'meta/*', 'sim/*'] },
  ],
}));

const sdk = (opts: { key?: string; timeout?: number; maxRetries?: number } = {}) =>
  new Replicate({ bearerToken: opts.key ?? KEY_A, baseURL: `${gw.url}/replicate/v1`, timeout: opts.timeout, maxRetries: opts.maxRetries });
const upstreamCreates = () => upstreamCalls(s.sim).filter((r) => r.method === 'POST' && !r.url.endsWith('/cancel'));

describe('creates the SDK retries on its own (X-Stainless-Retry-Count)', () => {
  const marked = (attempt: string, input: Record<string, unknown>, key = KEY_A) =>
    call(gw.url, 'POST', MODEL_PATH, { key, body: { input }, headers: { 'x-stainless-retry-count': attempt } });

  it('makes one upstream create where a 1.5 s SDK timeout with Prefer: wait=3 made three (issue 23)', async () => {
    // The SDK gives up on the held create after 1.5 s and sends it again, twice: the retries wait for the first.
    const { data, response } = await sdk({ timeout: 1500, maxRetries: 2 })
      .models.predictions.create({ model_owner: 'black-forest-labs', model_name: 'flux-schnell', input: { prompt: 'as seen', duration_ms: 10_000 }, Prefer: 'wait=3' })
      .withResponse();
    expect(response.status).toBe(201);
    expect(response.headers.get('idempotent-replayed')).toBe('true');
    expect(upstreamCreates()).toHaveLength(1);
    expect(upstreamCreates()[0]!.body).toMatchObject({ input: { prompt: 'as seen' } });
    expect(data.status).not.toBe('succeeded');
  });

  it('answers a held create before the client times out, where the client says when that is', async () => {
    const client = sdk({ maxRetries: 2 });
    // The SDK announces a per-request timeout (X-Stainless-Timeout: 1, whole seconds): too short to hold a create.
    const { data, response } = await client.models.predictions
      .create({ model_owner: 'black-forest-labs', model_name: 'flux-schnell', input: { prompt: 'held', duration_ms: 10_000 }, Prefer: 'wait=3' }, { timeout: 1500 })
      .withResponse();
    expect(response.status).toBe(201);
    expect(response.headers.get('idempotent-replayed')).toBeNull();
    expect(data.status).toBe('starting');
    expect(upstreamCreates()).toHaveLength(1);
    expect(upstreamCreates()[0]!.headers.prefer).toBeUndefined();
    // Its default timeout (60 s, not announced) is the longest wait: run()'s Prefer: wait is held 57 s at most.
    s.sim.clearRequests();
    await client.models.predictions.create({ model_owner: 'black-forest-labs', model_name: 'flux-schnell', input: { prompt: 'quick' }, Prefer: 'wait' });
    expect(upstreamCreates()[0]!.headers.prefer).toBe('wait=57');
    // The Python SDKs say X-Stainless-Read-Timeout (seconds, fractional): 5 s less 1.25 s, less a second for the create.
    s.sim.clearRequests();
    const py = await call(gw.url, 'POST', MODEL_PATH, {
      key: KEY_A,
      body: { input: { prompt: 'python' } },
      headers: { 'x-stainless-retry-count': '0', 'x-stainless-read-timeout': '5.0', prefer: 'wait=60' },
    });
    expect(py.status).toBe(201);
    expect(upstreamCreates()[0]!.headers.prefer).toBe('wait=2');
  });

  it('answers a retry of a create the client gave up on with that create, never a second job', async () => {
    // The upstream holds its answer 2.5 s; the SDK gives up after 1.5 s and retries (with backoff, honouring retry-after).
    const client = sdk({ timeout: 1500, maxRetries: 3 });
    const { data, response } = await client.models.predictions
      .create({ model_owner: 'black-forest-labs', model_name: 'flux-schnell', input: { prompt: 'slow upstream', hold_ms: 2500 } })
      .withResponse();
    expect(response.status).toBe(201);
    expect(response.headers.get('idempotent-replayed')).toBe('true');
    expect(upstreamCreates()).toHaveLength(1);
    expect((await client.predictions.get({ prediction_id: data.id })).id).toBe(data.id);
  });

  it('lets a retry that arrives while the first attempt is still waiting wait for it', async () => {
    const input = { prompt: 'waits', hold_ms: 1500 };
    const first = marked('0', input);
    await waitFor(() => upstreamCreates().length === 1, 5000, 'the first attempt to reach the upstream');
    const retry = await marked('1', input);
    expect((await first).status).toBe(201);
    expect(retry.status).toBe(201);
    expect(retry.headers.get('idempotent-replayed')).toBe('true');
    expect(retry.body.id).toBe((await first).body.id);
    expect(upstreamCreates()).toHaveLength(1);
  });

  it('keeps first attempts apart, scopes retries to the exact body, and costs unmarked creates no store trip', async () => {
    const input = { prompt: `same ${Date.now()}` };
    const a = await marked('0', input);
    const b = await marked('0', input);
    // Two identical first attempts are two jobs the client asked for.
    expect(b.body.id).not.toBe(a.body.id);
    // A retry is answered with the newest identical first attempt; a different body is a job of its own.
    const retry = await marked('2', input);
    expect(retry.body.id).toBe(b.body.id);
    const other = await marked('1', { ...input, seed: 1 });
    expect(other.status).toBe(201);
    expect(other.headers.get('idempotent-replayed')).toBeNull();
    // Another tenant's identical retry is not answered with this tenant's prediction.
    const theirs = await marked('1', input, KEY_B);
    expect(theirs.headers.get('idempotent-replayed')).toBeNull();
    expect(upstreamCreates()).toHaveLength(4);
    // Without the marker nothing is claimed in the store.
    const plain = { prompt: `unmarked ${Date.now()}` };
    await call(gw.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: plain } });
    expect(await gw.app.store.idemGet(`team-a:retry:${fingerprintOf('/models/black-forest-labs/flux-schnell/predictions', JSON.stringify({ input: plain }))}`)).toBeNull();
    expect(await gw.app.store.idemGet(`team-a:retry:${fingerprintOf('/models/black-forest-labs/flux-schnell/predictions', JSON.stringify({ input }))}`)).not.toBeNull();
  });
});

describe('problem JSON as the SDK reads it', () => {
  it('carries `message` (the same text as `detail`), from which the SDK builds its error message', async () => {
    const err = await sdk().predictions.get({ prediction_id: 'nope' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Replicate.NotFoundError);
    expect((err as Error).message).toBe('404 prediction nope was not found');
    const r = await call(gw.url, 'GET', '/replicate/v1/predictions/nope', { key: KEY_A });
    expect(r.body).toEqual({ type: 'urn:fuhu-gateway:problem:not-found', title: 'Not found', status: 404, detail: 'prediction nope was not found', message: 'prediction nope was not found', request_id: r.headers.get('x-request-id') });
  });
});

describe('the SDK in a browser', () => {
  // A page on its own origin loads the SDK's own ES modules (no bundler) and calls the gateway with CORS.
  const SDK_DIR = dirname(createRequire(import.meta.url).resolve('replicate-stainless'));
  const PAGE = readFileSync(new URL('./fixtures/stainless-page/index.html', import.meta.url), 'utf8');
  let site: Server;
  let origin: string;
  let browserGw: Gateway;
  let browser: Browser;

  beforeAll(async () => {
    site = createServer((req, res) => {
      const path = (req.url ?? '/').split('?')[0]!;
      if (path === '/') return res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(PAGE);
      const file = normalize(path.slice('/sdk/'.length));
      if (!path.startsWith('/sdk/') || !file.endsWith('.mjs') || file.startsWith('..')) return res.writeHead(404).end();
      try {
        res.writeHead(200, { 'content-type': 'text/javascript; charset=utf-8' }).end(readFileSync(join(SDK_DIR, file)));
      } catch {
        res.writeHead(404).end();
      }
    });
    await new Promise<void>((resolve) => site.listen(0, '127.0.0.1', resolve));
    origin = `http://127.0.0.1:${(site.address() as { port: number }).port}`;
    browserGw = await startGateway({
      sim: s,
      tenants: [{ id: 'web', keys: ['web-tenant-key-0123456789abcdef'], allowedOrigins: [origin] }],
      env: { TOKEN_SIGNING_SECRET: 'stainless-browser-signing-secret-0123456789', LOG_LEVEL: 'warn' },
    });
    browser = await launchChromium();
  });
  afterAll(async () => {
    await browser?.close();
    await browserGw?.close();
    await new Promise((resolve) => site?.close(resolve));
  });

  it('creates, reads and searches from a page on another origin, with a short-lived token', async () => {
    const minted = await call(browserGw.url, 'POST', '/gateway/v1/tokens', { key: 'web-tenant-key-0123456789abcdef', body: { ttl_seconds: 300, models: ['black-forest-labs/*'] } });
    expect(minted.status).toBe(201);
    const context = await browser.newContext();
    try {
      const page = await context.newPage();
      await page.goto(`${origin}/?gateway=${encodeURIComponent(browserGw.url)}&token=${encodeURIComponent(minted.body.token)}`, { timeout: 5000 });
      await page.waitForSelector('#out[data-state="done"], #out[data-state="error"]', { timeout: 10_000 });
      const text = await page.locator('#out').innerText();
      expect(await page.locator('#out').getAttribute('data-state'), text).toBe('done');
      const r = JSON.parse(text);
      expect(r.got).toBe(r.id);
      expect(r.urlsGet).toBe(`${browserGw.url}/replicate/v1/predictions/${r.id}`);
      expect(r.hardware).toBe(HARDWARE.length);
      expect(r.found).toEqual(['flux-schnell', 'flux-dev']);
    } finally {
      await context.close();
    }
  });

  it('passes the CORS preflight: every header the SDK sends is allowed, and QUERY (models.search) too', async () => {
    let sent: Headers | undefined;
    const client = new Replicate({
      bearerToken: KEY_A,
      baseURL: `${gw.url}/replicate/v1`,
      fetch: async (url, init) => {
        sent = new Headers(init?.headers);
        return fetch(url, init);
      },
    });
    await client.models.predictions.create({ model_owner: 'black-forest-labs', model_name: 'flux-schnell', input: { prompt: 'cors' } }, { timeout: 30_000 });
    // What a browser lists in Access-Control-Request-Headers: all but the CORS-safelisted ones.
    const asked = [...sent!.keys()].filter((h) => h !== 'accept');
    expect(asked).toEqual(expect.arrayContaining(['x-stainless-retry-count', 'x-stainless-timeout', 'x-stainless-os', 'x-stainless-package-version']));
    for (const method of ['POST', 'GET', 'QUERY']) {
      const res = await fetch(`${gw.url}${MODEL_PATH}`, {
        method: 'OPTIONS',
        headers: { origin: ORIGIN, 'access-control-request-method': method, 'access-control-request-headers': asked.join(',') },
      });
      expect(res.status).toBe(204);
      expect(res.headers.get('access-control-allow-origin')).toBe(ORIGIN);
      const allowed = (res.headers.get('access-control-allow-headers') ?? '').toLowerCase().split(/\s*,\s*/);
      expect(allowed).toEqual(expect.arrayContaining(asked));
      expect((res.headers.get('access-control-allow-methods') ?? '').split(/\s*,\s*/)).toContain(method);
    }
  });
});

describe('the prediction list with created_after / created_before', () => {
  it('lists only the window, across pages, keeping it in next and previous; a bad date is 422', async () => {
    const client = sdk({ key: KEY_B });
    const make = (prompt: string) => client.models.predictions.create({ model_owner: 'black-forest-labs', model_name: 'flux-schnell', input: { prompt } });
    /** A moment after every prediction made so far and before any made next (the index has microseconds). */
    const mark = async () => {
      const at = Date.now() + 1;
      await waitFor(() => Date.now() > at, 1000, 'the clock to pass the mark');
      return at;
    };
    for (let i = 0; i < 3; i++) await make(`before ${i}`);
    const after = new Date(await mark()).toISOString();
    const inside: string[] = [];
    for (let i = 0; i < 105; i++) inside.push((await make(`inside ${i}`)).id);
    // The same moment with an offset and microseconds: 12:00:00.001000+02:00 is 10:00:00.001Z.
    const beforeMs = await mark();
    const before = new Date(beforeMs + 2 * 3600_000).toISOString().replace('Z', '000+02:00');
    for (let i = 0; i < 3; i++) await make(`after ${i}`);

    const first = await client.predictions.list({ created_after: after, created_before: before });
    expect(first.results).toHaveLength(100);
    expect(first.results[0]!.id).toBe(inside.at(-1));
    const next = new URL(first.next);
    expect(`${next.origin}${next.pathname}`).toBe(`${gw.url}/replicate/v1/predictions`);
    expect(next.searchParams.get('created_after')).toBe(after);
    expect(next.searchParams.get('created_before')).toBe(before);
    const second = await call(gw.url, 'GET', first.next.slice(gw.url.length), { key: KEY_B });
    expect(second.body.results.map((p: { id: string }) => p.id)).toEqual(inside.slice(0, 5).reverse());
    // The last page of the window says so, and its previous link keeps the window too.
    expect(second.body.next).toBeNull();
    expect(new URL(second.body.previous).searchParams.get('created_before')).toBe(before);
    const seen: string[] = [];
    for await (const p of client.predictions.list({ created_after: after, created_before: before })) seen.push(p.id);
    expect(seen).toEqual([...inside].reverse());
    // One bound alone.
    const newer = await client.predictions.list({ created_after: new Date(beforeMs).toISOString() });
    expect(newer.results.map((p) => p.input)).toEqual([2, 1, 0].map((i) => ({ prompt: `after ${i}` })));
    expect(newer.hasNextPage()).toBe(false);

    const bad = await client.predictions.list({ created_after: 'yesterday' }).catch((e: unknown) => e);
    expect(bad).toBeInstanceOf(Replicate.UnprocessableEntityError);
    expect((bad as Error).message).toBe('422 query created_after must be an ISO 8601 date-time, e.g. 2025-01-31T12:00:00Z');
    expect((await call(gw.url, 'GET', '/replicate/v1/predictions?created_before=2025-02-30T00:00:00Z', { key: KEY_B })).status).toBe(422);
  });
});

/** Every URL in a JSON text: none may point at the upstream's host (a client would send the tenant's key there). */
const urlsIn = (text: string) => [...text.matchAll(/https?:\/\/[^"\s]+/g)].map((m) => m[0]);
const expectGatewayLinks = (page: { next?: unknown; previous?: unknown }) => {
  for (const link of [page.next, page.previous]) if (link) expect(String(link).startsWith(`${gw.url}/replicate/v1/`)).toBe(true);
};

describe('paged reads the gateway forwards', () => {
  it('model versions: next and previous are gateway URLs, and their cursor reaches the upstream', async () => {
    const model = 'sim/versioned-model';
    const first = await sdk().models.versions.list({ model_owner: 'sim', model_name: 'versioned-model' }) as unknown as { next: string; previous: string | null; results: { id: string }[] };
    expect(first.results.map((v) => v.id)).toEqual([simVersionOf(model), simVersionOf(`${model}#1`)]);
    expect(first.next).toMatch(new RegExp(`^${gw.url}/replicate/v1/models/sim/versioned-model/versions\\?cursor=[\\w%-]+$`));
    expect(first.previous).toBeNull();
    const second = await call(gw.url, 'GET', first.next.slice(gw.url.length), { key: KEY_A });
    expect(second.body.results.map((v: { id: string }) => v.id)).toEqual([simVersionOf(`${model}#2`)]);
    expect(second.body.next).toBeNull();
    expectGatewayLinks(second.body);
    expect(upstreamCalls(s.sim, /versions\?cursor=/)).toHaveLength(1);
    const back = await call(gw.url, 'GET', second.body.previous.slice(gw.url.length), { key: KEY_A });
    expect(back.body.results).toEqual(first.results);
    for (const r of [first, second.body, back.body]) expect(urlsIn(JSON.stringify(r)).filter((u) => u.includes('api.replicate.com'))).toEqual([]);
    expect((await call(gw.url, 'GET', '/replicate/v1/models/sim/versioned-model/versions?cursor=%20', { key: KEY_A })).status).toBe(422);
  });
});

describe('catalogue reads: hardware, collections, the model list and search', () => {
  const names = (models: { owner: string; name: string }[]) => models.map((m) => `${m.owner}/${m.name}`);

  it('forwards hardware and collections, keeping a collection\'s models to the allowlist', async () => {
    expect(await sdk().hardware.list()).toEqual(HARDWARE);
    const collections = (await sdk().collections.list()) as unknown as { next: string; results: { slug: string }[] };
    expect(collections.results.map((c) => c.slug)).toEqual(['text-to-image', 'speech-to-text']);
    expectGatewayLinks(collections);
    const rest = await call(gw.url, 'GET', collections.next.slice(gw.url.length), { key: KEY_A });
    expect(rest.body.results.map((c: { slug: string }) => c.slug)).toEqual(['language-models']);
    const all = (await sdk().collections.get({ collection_slug: 'text-to-image' })) as unknown as { models: { owner: string; name: string }[] };
    expect(names(all.models)).toEqual(['black-forest-labs/flux-schnell', 'black-forest-labs/flux-dev', 'stability-ai/sdxl']);
    const mine = (await sdk({ key: KEY_C }).collections.get({ collection_slug: 'text-to-image' })) as unknown as { models: { owner: string; name: string }[] };
    expect(names(mine.models)).toEqual(['black-forest-labs/flux-dev']);
    await expect(sdk().collections.get({ collection_slug: 'nope' })).rejects.toBeInstanceOf(Replicate.NotFoundError);
  });

  it('lists models page by page through gateway links, only those the caller may use', async () => {
    const every: string[] = [];
    for await (const m of sdk().models.list()) every.push(`${m.owner}/${m.name}`);
    expect(every).toEqual(CATALOGUE);
    // team-c's models sit on pages 1 and 3: the page between, empty for it, is skipped rather than ending the list.
    const mine: string[] = [];
    for await (const m of sdk({ key: KEY_C }).models.list()) mine.push(`${m.owner}/${m.name}`);
    expect(mine).toEqual(['black-forest-labs/flux-dev', 'meta/meta-llama-3-8b']);
    const first = await call(gw.url, 'GET', '/replicate/v1/models', { key: KEY_A });
    expectGatewayLinks(first.body);
    expect(first.body.next).toMatch(new RegExp(`^${gw.url}/replicate/v1/models\\?cursor=`));
  });

  it('searches with QUERY /models (the words as text/plain), keeping the allowlist', async () => {
    const found = (await sdk().models.search({ body: 'flux' })) as unknown as { results: { owner: string; name: string }[] };
    expect(names(found.results)).toEqual(['black-forest-labs/flux-schnell', 'black-forest-labs/flux-dev']);
    const search = upstreamCalls(s.sim).find((r) => r.method === 'QUERY')!;
    expect(search.body).toBe('flux');
    expect(search.headers['content-type']).toMatch(/^text\/plain/);
    const mine = (await sdk({ key: KEY_C }).models.search({ body: 'flux' })) as unknown as { results: { owner: string; name: string }[] };
    expect(names(mine.results)).toEqual(['black-forest-labs/flux-dev']);
    const empty = await fetch(`${gw.url}/replicate/v1/models`, { method: 'QUERY', headers: { authorization: `Bearer ${KEY_A}`, 'content-type': 'text/plain' }, body: ' ' });
    expect(empty.status).toBe(422);
  });
});

describe('file uploads from the SDK', () => {
  it('stores metadata sent as metadata[key] fields as the object it was', async () => {
    const client = sdk();
    const metadata = { purpose: 'test', nested: { k: 'v' }, tags: ['a', 'b'], n: 3 };
    const created = await client.files.create({ content: new File([Buffer.from('hello')], 'hello.txt', { type: 'text/plain' }), filename: 'hello.txt', type: 'text/plain', metadata });
    // A form keeps no types: the number comes back as the string the SDK sent.
    const expected = { purpose: 'test', nested: { k: 'v' }, tags: ['a', 'b'], n: '3' };
    expect(created.metadata).toEqual(expected);
    expect((await client.files.get({ file_id: created.id })).metadata).toEqual(expected);
    const upload = (fields: [string, string][]) => {
      const form = new FormData();
      form.append('content', new Blob(['x']), 'x.txt');
      for (const [k, v] of fields) form.append(k, v);
      return fetch(`${gw.url}/replicate/v1/files`, { method: 'POST', headers: { authorization: `Bearer ${KEY_A}` }, body: form });
    };
    // __proto__ is a key like any other, never the object's prototype.
    const proto = await upload([['metadata[__proto__][polluted]', 'yes']]);
    expect(proto.status).toBe(201);
    expect((await proto.json()).metadata).toEqual(JSON.parse('{"__proto__":{"polluted":"yes"}}'));
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    const conflict = await upload([['metadata[a]', '1'], ['metadata[a][b]', '2']]);
    expect(conflict.status).toBe(422);
    expect((await conflict.json()).detail).toBe('metadata field metadata[a][b] conflicts with another metadata field');
    const deep = await upload([[`metadata${'[k]'.repeat(65)}`, 'x']]);
    expect(deep.status).toBe(422);
    expect((await deep.json()).detail).toBe('metadata nests deeper than JSON_MAX_DEPTH (64) levels');
  });
});
