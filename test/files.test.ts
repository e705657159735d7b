// Issue 13, files: the clients upload Blob and Buffer inputs to POST /files and put the file's urls.get in the
// input; the gateway keeps the file for its tenant and hands the upstream the bytes (a data: URI, or a signed link).
// With the official `replicate` client and the AI SDK's generateImage, on Redis and in memory.
import { createHash } from 'node:crypto';
import { createReplicate } from '@ai-sdk/replicate';
import { generateImage } from 'ai';
import Replicate from 'replicate';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { OUTPUT_IMAGE } from '../src/simulator/routes.js';
import { KEY_A, KEY_B, type Gateway, type SimHandle, call, expectProblem, startGateway, startSimulator, upstreamCalls } from './helpers/stack.js';

const FLUX = 'black-forest-labs/flux-schnell';
const SECRET = 'files-test-signing-secret-0123456789abcdef';
const TENANTS = [
  { id: 'team-a', keys: [KEY_A], allowedOrigins: ['https://app.example.com'] },
  { id: 'team-b', keys: [KEY_B] },
];

/** Deterministic bytes of a given size (not all one value, so truncation or re-encoding would show). */
const bytesOf = (size: number, seed = 7) => Buffer.from(Array.from({ length: size }, (_, i) => (i * 31 + seed) & 0xff));
const dataUri = (type: string, bytes: Buffer) => `data:${type};base64,${bytes.toString('base64')}`;
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** A multipart upload as curl -F would send it. */
async function upload(base: string, key: string | undefined, bytes: Buffer, type = 'image/png', name = 'in.png') {
  const form = new FormData();
  form.append('content', new Blob([new Uint8Array(bytes)], { type }), name);
  form.append('metadata', JSON.stringify({ purpose: 'test' }));
  const res = await fetch(`${base}/replicate/v1/files`, { method: 'POST', body: form, headers: key ? { authorization: `Bearer ${key}` } : {} });
  return { status: res.status, body: (await res.json()) as any, headers: res.headers };
}

/** The input of the last create the simulator received. */
const lastCreateInput = (s: SimHandle) => (upstreamCalls(s.sim).filter((r) => r.method === 'POST' && /predictions$/.test(r.url)).at(-1)!.body as { input: Record<string, unknown> }).input;

describe.each([['redis'], ['memory']] as const)('files with the %s store', (kind) => {
  let s: SimHandle;
  let gw: Gateway;
  const client = (auth: string) => new Replicate({ auth, baseUrl: `${gw.url}/replicate/v1`, useFileOutput: false });
  const store = kind === 'memory' ? { redis: 'memory' as const } : {};

  beforeAll(async () => {
    s = await startSimulator(50);
    gw = await startGateway({ sim: s, tenants: TENANTS, ...store, env: { TOKEN_SIGNING_SECRET: SECRET } });
  });
  afterAll(async () => {
    await gw.close();
    await s.sim.close();
  });

  it.each([
    ['a 1 KB Buffer', () => bytesOf(1024), 'application/octet-stream'],
    ['a 200 KB Blob', () => new Blob([new Uint8Array(bytesOf(200 * 1024))], { type: 'image/png' }), 'image/png'],
    ['a 5 MB Blob', () => new Blob([new Uint8Array(bytesOf(5 * 1024 * 1024))], { type: 'image/jpeg' }), 'image/jpeg'],
    ['a 5 MB Buffer', () => bytesOf(5 * 1024 * 1024, 3), 'application/octet-stream'],
  ] as const)('runs with %s input: uploaded to the gateway, sent upstream as the same bytes', async (_what, make, type) => {
    s.sim.clearRequests();
    const value = make();
    const bytes = Buffer.isBuffer(value) ? value : Buffer.from(await (value as Blob).arrayBuffer());
    const before = (await client(KEY_A).files.list()).results.map((f) => f.id);
    const output = await client(KEY_A).run(FLUX, { input: { image: value, prompt: 'x' }, wait: { mode: 'poll', interval: 50 } });
    expect(output).toEqual([expect.stringMatching(/^https:\/\/replicate\.delivery\//)]);
    // The client uploaded it (no fallback to inlining on its side): one new file of the tenant, the same bytes.
    const added = (await client(KEY_A).files.list()).results.filter((f) => !before.includes(f.id));
    expect(added).toHaveLength(1);
    expect(added[0]).toMatchObject({ size: bytes.length, checksums: { sha256: sha256(bytes) } });
    const input = lastCreateInput(s);
    expect(input.prompt).toBe('x');
    expect(input.image).toBe(dataUri(type, bytes));
    // Nothing of the files went to the upstream's own files API (on the shared key it lists every team's files).
    expect(upstreamCalls(s.sim, /\/files/)).toHaveLength(0);
  });

  it('answers Replicate file objects; get, list and delete work for the owner only', async () => {
    const a = client(KEY_A);
    const b = client(KEY_B);
    const bytes = bytesOf(3000);
    const file = await a.files.create(new Blob([new Uint8Array(bytes)], { type: 'image/png' }), { note: 'mine' });
    expect(file).toMatchObject({
      content_type: 'image/png',
      size: 3000,
      checksums: { sha256: sha256(bytes) },
      metadata: { note: 'mine' },
      urls: { get: `${gw.url}/replicate/v1/files/${file.id}` },
    });
    expect(Date.parse(file.expires_at!) - Date.parse(file.created_at)).toBe(86_400_000);
    expect(await a.files.get(file.id)).toEqual(file);
    expect((await a.files.list()).results.map((f) => f.id)).toContain(file.id);
    const download = await fetch(`${gw.url}/replicate/v1/files/${file.id}/download`, { headers: { authorization: `Bearer ${KEY_A}` } });
    expect(download.status).toBe(200);
    expect(download.headers.get('content-disposition')).toMatch(/^attachment/);
    expect(download.headers.get('x-content-type-options')).toBe('nosniff');
    expect(Buffer.from(await download.arrayBuffer())).toEqual(bytes);

    // Another tenant cannot see, list, download or delete it: 404, as for a file that does not exist.
    await expect(b.files.get(file.id)).rejects.toMatchObject({ response: { status: 404 } });
    expect((await b.files.list()).results.map((f) => f.id)).not.toContain(file.id);
    expect((await call(gw.url, 'GET', `/replicate/v1/files/${file.id}/download`, { key: KEY_B })).status).toBe(404);
    await expect(b.files.delete(file.id)).rejects.toMatchObject({ response: { status: 404 } });
    expect((await a.files.get(file.id)).id).toBe(file.id);

    expect(await a.files.delete(file.id)).toBe(true);
    await expect(a.files.get(file.id)).rejects.toMatchObject({ response: { status: 404 } });
    expect((await a.files.list()).results.map((f) => f.id)).not.toContain(file.id);
  });

  it('refuses with 422 a create naming another tenant\'s file, or one that does not exist, and sends nothing upstream', async () => {
    const mine = await upload(gw.url, KEY_A, bytesOf(100));
    expect(mine.status).toBe(201);
    s.sim.clearRequests();
    for (const url of [mine.body.urls.get, `${gw.url}/replicate/v1/files/${'x'.repeat(32)}`]) {
      const r = await call(gw.url, 'POST', `/replicate/v1/models/${FLUX}/predictions`, { key: KEY_B, body: { input: { image: url } } });
      expect(r.status).toBe(422);
      expect(r.body).toMatchObject({ title: 'Invalid request', status: 422, detail: expect.stringMatching(/does not exist, has expired, or is not yours/) });
    }
    expect(upstreamCalls(s.sim)).toHaveLength(0);
    // Its owner can use it, nested in arrays and objects too; other strings are left as they were.
    const r = await call(gw.url, 'POST', `/replicate/v1/models/${FLUX}/predictions`, { key: KEY_A, body: { input: { images: [mine.body.urls.get, { mask: mine.body.urls.get }], caption: 'see /replicate/v1/files/' } } });
    expect(r.status).toBe(201);
    const expected = dataUri('image/png', bytesOf(100));
    expect(lastCreateInput(s)).toEqual({ images: [expected, { mask: expected }], caption: 'see /replicate/v1/files/' });
    // JSON may escape the slashes (PHP's json_encode does): the URL is still found, and still judged.
    const escaped = (url: string) => JSON.stringify({ input: { image: url } }).replaceAll('/', '\\/');
    s.sim.clearRequests();
    const theirs = await call(gw.url, 'POST', `/replicate/v1/models/${FLUX}/predictions`, { key: KEY_B, rawBody: escaped(mine.body.urls.get) });
    expect(theirs.status).toBe(422);
    expect(upstreamCalls(s.sim)).toHaveLength(0);
    const own = await call(gw.url, 'POST', `/replicate/v1/models/${FLUX}/predictions`, { key: KEY_A, rawBody: escaped(mine.body.urls.get) });
    expect(own.status).toBe(201);
    expect(lastCreateInput(s)).toEqual({ image: expected });
  });

  it('refuses uploads that are not multipart, or have no file, as problem JSON', async () => {
    const json = await call(gw.url, 'POST', '/replicate/v1/files', { key: KEY_A, body: { content: 'x' } });
    expect(json.status).toBe(415);
    expect(json.body).toMatchObject({ status: 415, detail: expect.stringMatching(/multipart\/form-data/) });
    const form = new FormData();
    form.append('metadata', '{}');
    const none = await fetch(`${gw.url}/replicate/v1/files`, { method: 'POST', body: form, headers: { authorization: `Bearer ${KEY_A}` } });
    expect(none.status).toBe(422);
    expect(await none.json()).toMatchObject({ detail: expect.stringMatching(/no file in a part named "content"/) });
    expect((await upload(gw.url, undefined, bytesOf(10))).status).toBe(401);
    // A type that could not be served safely is stored as plain bytes.
    const odd = await upload(gw.url, KEY_A, bytesOf(10), 'text/html"><script>', 'x.html');
    expect(odd.body.content_type).toBe('application/octet-stream');
  });

  it('answers malformed multipart with 400 problem JSON: no boundary, a boundary that never occurs, a body cut off', async () => {
    const part = '--XYZ\r\nContent-Disposition: form-data; name="content"; filename="a.png"\r\nContent-Type: image/png\r\n\r\nabc';
    const cases: [string, string][] = [
      ['multipart/form-data', `${part}\r\n--XYZ--\r\n`],
      ['multipart/form-data; boundary=XYZ', 'just some bytes, no boundary anywhere'],
      ['multipart/form-data; boundary=XYZ', part],
      ['multipart/form-data; boundary=XYZ', `${part}\r\n--XY`],
    ];
    for (const [type, body] of cases) {
      const r = await call(gw.url, 'POST', '/replicate/v1/files', { key: KEY_A, rawBody: body, headers: { 'content-type': type } });
      expectProblem(r, 400, /multipart/);
    }
    // Nothing was stored.
    expect((await call(gw.url, 'GET', '/replicate/v1/files', { key: KEY_A })).body.results.filter((f: { name: string }) => f.name === 'a.png')).toEqual([]);
  });

  it('lets a browser token upload and use its own files, not another token\'s, and not list them', async () => {
    const mint = async () => (await call(gw.url, 'POST', '/gateway/v1/tokens', { key: KEY_A, body: {} })).body.token as string;
    const [t1, t2] = [await mint(), await mint()];
    const origin = { origin: 'https://app.example.com' };
    const form = new FormData();
    form.append('content', new Blob([new Uint8Array(bytesOf(500))], { type: 'image/png' }), 'a.png');
    const up = await fetch(`${gw.url}/replicate/v1/files`, { method: 'POST', body: form, headers: { authorization: `Bearer ${t1}`, ...origin } });
    expect(up.status).toBe(201);
    const file = (await up.json()) as { id: string; urls: { get: string } };
    expect((await call(gw.url, 'GET', `/replicate/v1/files/${file.id}`, { key: t1, headers: origin })).status).toBe(200);
    expect((await call(gw.url, 'GET', `/replicate/v1/files/${file.id}`, { key: t2, headers: origin })).status).toBe(404);
    expect((await call(gw.url, 'GET', '/replicate/v1/files', { key: t1, headers: origin })).status).toBe(403);
    const other = await call(gw.url, 'POST', `/replicate/v1/models/${FLUX}/predictions`, { key: t2, headers: origin, body: { input: { image: file.urls.get } } });
    expect(other.status).toBe(422);
    const own = await call(gw.url, 'POST', `/replicate/v1/models/${FLUX}/predictions`, { key: t1, headers: origin, body: { input: { image: file.urls.get } } });
    expect(own.status).toBe(201);
    // The tenant's key may use it too: the file belongs to the tenant.
    expect((await call(gw.url, 'GET', `/replicate/v1/files/${file.id}`, { key: KEY_A })).status).toBe(200);
  });

  it('serves the AI SDK\'s generateImage through the gateway', async () => {
    const simOrigin = new URL(s.url).origin;
    // The output CDN (replicate.delivery) is outside this machine: its host is pointed at the simulator's stand-in.
    const cdn: typeof fetch = (input, init) => {
      const url = String(input instanceof Request ? input.url : input).replace('https://replicate.delivery/', `${simOrigin}/delivery/`);
      return fetch(url, init);
    };
    const provider = createReplicate({ apiToken: KEY_A, baseURL: `${gw.url}/replicate/v1`, fetch: cdn });
    s.sim.clearRequests();
    const { images } = await generateImage({ model: provider.image(FLUX), prompt: 'a lighthouse', providerOptions: { replicate: { maxWaitTimeInSeconds: 5 } } });
    expect(images).toHaveLength(1);
    expect(Buffer.from(images[0]!.uint8Array)).toEqual(OUTPUT_IMAGE);
    const create = upstreamCalls(s.sim).find((r) => r.method === 'POST')!;
    expect(create.headers.prefer).toBe('wait=5');
    expect((create.body as { input: { prompt: string } }).input.prompt).toBe('a lighthouse');
  });
});

describe('file limits and signed links', () => {
  let s: SimHandle;
  beforeAll(async () => {
    s = await startSimulator(50);
  });
  afterAll(async () => {
    await s.sim.close();
  });

  it('refuses with 413 a file over FILES_MAX_BYTES, and holds each tenant to FILES_TENANT_MAX_BYTES even in parallel', async () => {
    const gw = await startGateway({ sim: s, env: { FILES_MAX_BYTES: '65536', FILES_TENANT_MAX_BYTES: '150000' } });
    try {
      const big = await upload(gw.url, KEY_A, bytesOf(65537));
      expect(big.status).toBe(413);
      expect(big.body).toMatchObject({ title: 'Payload too large', status: 413, detail: expect.stringMatching(/FILES_MAX_BYTES \(65536 bytes\)/) });
      // Five parallel 60 KB uploads against 150 000 bytes: exactly two fit.
      const results = await Promise.all(Array.from({ length: 5 }, (_, i) => upload(gw.url, KEY_A, bytesOf(60_000, i))));
      expect(results.map((r) => r.status).sort()).toEqual([201, 201, 413, 413, 413]);
      expect(results.find((r) => r.status === 413)!.body.detail).toMatch(/FILES_TENANT_MAX_BYTES \(150000\)/);
      // Another tenant's quota is its own; deleting frees room.
      expect((await upload(gw.url, KEY_B, bytesOf(60_000))).status).toBe(201);
      const stored = results.find((r) => r.status === 201)!.body;
      expect((await call(gw.url, 'DELETE', `/replicate/v1/files/${stored.id}`, { key: KEY_A })).status).toBe(204);
      expect((await upload(gw.url, KEY_A, bytesOf(60_000))).status).toBe(201);
      // Files within the cap but over it together, inlined as data: URIs: 413 before anything goes upstream.
      const [f1, f2] = (await call(gw.url, 'GET', '/replicate/v1/files', { key: KEY_A })).body.results;
      s.sim.clearRequests();
      const both = await call(gw.url, 'POST', `/replicate/v1/models/${FLUX}/predictions`, { key: KEY_A, body: { input: { a: f1.urls.get, b: f2.urls.get } } });
      expect(both.status).toBe(413);
      expect(both.body.detail).toMatch(/add up to 120000 bytes/);
      // One file named many times is inlined as many times: counted so, before a byte is copied.
      const again = await call(gw.url, 'POST', `/replicate/v1/models/${FLUX}/predictions`, { key: KEY_A, body: { input: { a: [f1.urls.get, f1.urls.get] } } });
      expect(again.status).toBe(413);
      expect(again.body.detail).toMatch(/add up to 120000 bytes/);
      expect(upstreamCalls(s.sim)).toHaveLength(0);
    } finally {
      await gw.close();
    }
  });

  it('refuses metadata nested past JSON_MAX_DEPTH with 422, and such uploads claim no quota', async () => {
    const gw = await startGateway({ sim: s, env: { FILES_MAX_BYTES: '100000', FILES_TENANT_MAX_BYTES: '100000' } });
    try {
      const deep = `{"a":${'['.repeat(30_000)}${']'.repeat(30_000)}}`;
      const send = async (asFile: boolean) => {
        const form = new FormData();
        form.append('content', new Blob([new Uint8Array(bytesOf(60_000))], { type: 'image/png' }), 'in.png');
        // The JS client sends metadata as a JSON Blob, the Python client as a field.
        form.append('metadata', asFile ? new Blob([deep], { type: 'application/json' }) : deep);
        const res = await fetch(`${gw.url}/replicate/v1/files`, { method: 'POST', body: form, headers: { authorization: `Bearer ${KEY_A}` } });
        return { status: res.status, body: (await res.json()) as any };
      };
      for (const asFile of [true, false]) {
        const r = await send(asFile);
        expect(r.status).toBe(422);
        expect(r.body).toMatchObject({ status: 422, detail: expect.stringMatching(/metadata nests deeper than JSON_MAX_DEPTH \(64\)/) });
      }
      // The whole quota is still free, and nothing was listed.
      expect((await call(gw.url, 'GET', '/replicate/v1/files', { key: KEY_A })).body.results).toEqual([]);
      expect((await upload(gw.url, KEY_A, bytesOf(100_000))).status).toBe(201);
    } finally {
      await gw.close();
    }
  });

  it('with FILES_DELIVERY=url sends the upstream a signed, expiring gateway link that serves the bytes', async () => {
    const publicBase = 'http://gateway.test:8080';
    const gw = await startGateway({ sim: s, env: { FILES_DELIVERY: 'url', PUBLIC_BASE_URL: publicBase, FILES_URL_SECRET: SECRET, FILES_URL_TTL_SECONDS: '600' } });
    try {
      const bytes = bytesOf(2048);
      const file = await upload(gw.url, KEY_A, bytes, 'image/webp', 'in.webp');
      expect(file.body.urls.get).toBe(`${publicBase}/replicate/v1/files/${file.body.id}`);
      s.sim.clearRequests();
      const created = await call(gw.url, 'POST', `/replicate/v1/models/${FLUX}/predictions`, { key: KEY_A, body: { input: { image: file.body.urls.get } } });
      expect(created.status).toBe(201);
      const link = new URL(lastCreateInput(s).image as string);
      expect(link.origin).toBe(publicBase);
      expect(link.pathname).toBe(`/gateway/v1/files/${file.body.id}/content`);
      expect(Number(link.searchParams.get('expires')) * 1000 - Date.now()).toBeGreaterThan(590_000);
      // What the upstream does: fetch it, with no key.
      const got = await fetch(`${gw.url}${link.pathname}${link.search}`);
      expect(got.status).toBe(200);
      expect(got.headers.get('content-type')).toBe('image/webp');
      expect(Buffer.from(await got.arrayBuffer())).toEqual(bytes);
      // A changed signature, a later expiry or another id: 403 problem JSON, no bytes.
      const sig = link.searchParams.get('signature')!;
      const tampered = [
        `${link.pathname}?expires=${link.searchParams.get('expires')}&signature=${sig.slice(0, -1)}${sig.endsWith('A') ? 'B' : 'A'}`,
        `${link.pathname}?expires=${Number(link.searchParams.get('expires')) + 1}&signature=${sig}`,
        `${link.pathname.replace(file.body.id, 'y'.repeat(32))}${link.search}`,
        `${link.pathname}?expires=1000&signature=${sig}`,
      ];
      for (const path of tampered) {
        const r = await call(gw.url, 'GET', path);
        expect(r.status, path).toBe(403);
        expect(r.body.detail).toBe('this file link is not valid or has expired');
      }
      // Neither the signing secret nor a link's signature (the link is the permission) reaches a log line.
      expect(gw.logs.join('\n')).not.toContain(SECRET);
      expect(gw.logs.join('\n')).not.toContain(sig);
      expect(gw.logs.join('\n')).toContain(`/gateway/v1/files/${file.body.id}/content?expires=`);
    } finally {
      await gw.close();
    }
  });
});

describe('file settings at boot', () => {
  const base = { UPSTREAM_API_KEY: 'k', TENANTS_FILE: '/dev/null' };
  it.each([
    [{ FILES_DELIVERY: 'link' }, /FILES_DELIVERY must be data-uri or url/],
    [{ FILES_DELIVERY: 'url', FILES_URL_SECRET: SECRET }, /FILES_DELIVERY=url needs PUBLIC_BASE_URL/],
    [{ FILES_DELIVERY: 'url', PUBLIC_BASE_URL: 'https://gw.example.com' }, /FILES_DELIVERY=url needs FILES_URL_SECRET/],
    [{ FILES_URL_SECRET: 'short' }, /FILES_URL_SECRET must be at least 32 characters/],
    [{ FILES_MAX_BYTES: '10' }, /FILES_MAX_BYTES must be at least 1024/],
  ])('refuses %o, naming the variable', (env, message) => {
    expect(() => loadConfig({ ...base, ...env })).toThrow(message);
  });

  it('sizes the upstream answer cap for the inlined files by default', () => {
    // 10 MiB body + 1 MiB + 10 MiB of file as base64.
    expect(loadConfig(base).UPSTREAM_MAX_BODY_BYTES).toBe(10 * 1024 * 1024 + 1024 * 1024 + Math.ceil((10 * 1024 * 1024 * 4) / 3));
    expect(loadConfig({ ...base, FILES_DELIVERY: 'url', PUBLIC_BASE_URL: 'https://gw.example.com', TOKEN_SIGNING_SECRET: SECRET }).UPSTREAM_MAX_BODY_BYTES).toBe(16 * 1024 * 1024);
  });
});
