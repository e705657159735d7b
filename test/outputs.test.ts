// Outputs that outlive the upstream's one-hour deletion: a succeeded prediction's files are copied (once, across
// replicas) into a folder or an S3-compatible bucket, the prediction's output points at the gateway, and only the
// owning tenant (or the holder of a signed link) gets the bytes, with Range, ETag and the headers a browser needs.
// The simulator serves real output bytes on loopback (its stand-in for the output CDN); 127.0.0.1 is allowed by the
// webhook allow-lists the copy follows.
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, readdirSync } from 'node:fs';
import { type Server, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import S3rver from 's3rver';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TenantInput } from '../src/access/tenants.js';
import { createSimulator } from '../src/simulator/simulator.js';
import { OUTPUT_IMAGE } from '../src/simulator/routes.js';
import { launchChromium } from './helpers/chromium.js';
import {
  type Gateway, type GatewayProcess, KEY_A, KEY_B, MODEL_PATH, type SimHandle, call, createPrediction, expectProblem, startGateway, startGatewayProcess,
  stopAllGatewayProcesses, waitFor, writeTenants,
} from './helpers/stack.js';

const FIXTURES = join(import.meta.dirname, 'fixtures', 'outputs');
const VIDEO = readFileSync(join(FIXTURES, 'clip.webm'));
const PNG = readFileSync(join(FIXTURES, 'image.png'));
const KEY_OFF = 'team-off-key-0123456789abcdef';
const KEY_SHORT = 'team-short-key-0123456789abcdef';
const KEY_QUOTA = 'team-quota-key-0123456789abcdef';
const lots = { max: 100_000, timeWindow: '1 minute' };
const TENANTS: TenantInput[] = [
  { id: 'team-a', keys: [KEY_A], rateLimit: lots },
  { id: 'team-b', keys: [KEY_B], rateLimit: lots },
  { id: 'team-off', keys: [KEY_OFF], rateLimit: lots, keepOutputs: false },
  // About 17 s: the end of retention within a test.
  { id: 'team-short', keys: [KEY_SHORT], rateLimit: lots, outputRetentionDays: 0.0002 },
  { id: 'team-quota', keys: [KEY_QUOTA], rateLimit: lots, outputsMaxBytes: VIDEO.length + 1000 },
];
const SECRET = 'outputs-test-signing-secret-0123456789abcdef';

let s: SimHandle;
beforeAll(async () => {
  const apiKey = `sk-upstream-${randomBytes(12).toString('hex')}`;
  const sim = createSimulator({
    apiKey,
    stepMs: 100,
    selfOutputUrls: true,
    deliveryFiles: { 'clip.webm': { contentType: 'video/webm', bytes: VIDEO }, 'image.png': { contentType: 'image/png', bytes: PNG } },
  });
  s = { sim, url: await sim.listen(0, '127.0.0.1'), apiKey };
});
afterAll(async () => {
  await s?.sim.close();
});

const envFor = (store: string, extra: Record<string, string> = {}) => ({
  OUTPUTS_STORE: store,
  WEBHOOK_ALLOW_HTTP_HOSTS: '127.0.0.1',
  WEBHOOK_ALLOW_PRIVATE_HOSTS: '127.0.0.1',
  TOKEN_SIGNING_SECRET: SECRET,
  WATCH_MIN_MS: '100',
  WATCH_MAX_MS: '300',
  LOG_LEVEL: 'warn',
  ...extra,
});

/** The prediction once its outputs are kept (its output names the gateway) or, with `until`, once that holds. */
async function settled(gw: { url: string }, key: string, id: string, until?: (p: any) => boolean): Promise<any> {
  let last: any;
  const done = until ?? ((p: any) => JSON.stringify(p.output ?? null).includes(`${gw.url}/gateway/v1/outputs/${id}/`));
  await waitFor(async () => {
    last = (await call(gw.url, 'GET', `/replicate/v1/predictions/${id}`, { key })).body;
    return last?.status === 'succeeded' && done(last);
  }, until ? 50_000 : 15_000, `prediction ${id} to have its outputs kept`);
  return last;
}

const deliveries = (id: string) => s.sim.deliveries.filter((path) => path.startsWith(`/delivery/xezq/${id}/`)).length;

async function bytesOf(url: string, key?: string, headers: Record<string, string> = {}) {
  const res = await fetch(url, { headers: { ...(key ? { authorization: `Bearer ${key}` } : {}), ...headers } });
  return { res, body: Buffer.from(await res.arrayBuffer()) };
}

async function metric(gw: Gateway, line: RegExp): Promise<number> {
  const text = await (await fetch(`${gw.url}/metrics`)).text();
  const m = text.split('\n').find((l) => line.test(l));
  return m ? Number(m.split(' ').at(-1)) : 0;
}

describe('outputs kept in a folder', () => {
  let gw: Gateway;
  let dir: string;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'fgw-outputs-'));
    gw = await startGateway({ sim: s, tenants: TENANTS, env: envFor(`file:${dir}`, { OUTPUTS_MAX_BYTES: '200000' }) });
  });
  afterAll(async () => {
    await gw?.close();
  });

  it('copies every output (URLs, a data: URI, nested in objects and arrays) and answers them from the gateway', async () => {
    const thumb = `data:image/png;base64,${PNG.toString('base64')}`;
    const id = await createPrediction(gw.url, KEY_A, { prompt: 'a cat', output: { images: ['sim:a.webp', 'sim:image.png'], video: 'sim:clip.webm', thumb, caption: 'https://not a url' } });
    const p = await settled(gw, KEY_A, id);
    const base = `${gw.url}/gateway/v1/outputs/${id}`;
    expect(p.output).toEqual({ images: [`${base}/0`, `${base}/1`], video: `${base}/2`, thumb: `${base}/3`, caption: 'https://not a url' });

    const expected: [number, Buffer, string][] = [[0, OUTPUT_IMAGE, 'image/webp'], [1, PNG, 'image/png'], [2, VIDEO, 'video/webm'], [3, PNG, 'image/png']];
    for (const [n, bytes, type] of expected) {
      const { res, body } = await bytesOf(`${base}/${n}`, KEY_A);
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toBe(type);
      expect(res.headers.get('x-content-type-options')).toBe('nosniff');
      expect(res.headers.get('content-security-policy')).toBe("default-src 'none'; sandbox");
      expect(res.headers.get('accept-ranges')).toBe('bytes');
      expect(body.equals(bytes)).toBe(true);
    }
    // Each file was fetched once, and the copies are on the volume.
    expect(deliveries(id)).toBe(3);
    expect(readdirSync(join(dir, 'team-a', id)).sort()).toEqual(['0', '1', '2', '3']);
    // The list (from the store only) shows the same links; so does the cached answer, every time.
    const list = await call(gw.url, 'GET', '/replicate/v1/predictions', { key: KEY_A });
    expect(list.body.results.find((r: any) => r.id === id).output).toEqual(p.output);
    const again = await call(gw.url, 'GET', `/replicate/v1/predictions/${id}`, { key: KEY_A });
    expect(again.headers.get('x-cache')).toBe('HIT');
    expect(again.body.output).toEqual(p.output);
    expect(await metric(gw, /^fgw_output_copies_total\{outcome="copied"\}/)).toBeGreaterThanOrEqual(4);
  });

  it('answers the create that waited for the end (Prefer: wait) with the kept links already', async () => {
    const r = await call(gw.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: { prompt: 'now', output: ['sim:first.webp', 'sim:clip.webm'] } }, headers: { prefer: 'wait=10' } });
    expect(r.status).toBe(201);
    expect(r.body.status).toBe('succeeded');
    expect(r.body.output).toEqual([`${gw.url}/gateway/v1/outputs/${r.body.id}/0`, `${gw.url}/gateway/v1/outputs/${r.body.id}/1`]);
    expect((await bytesOf(r.body.output[1], KEY_A)).body.equals(VIDEO)).toBe(true);
  });

  it('answers a Range request with 206 and only those bytes; a matching ETag with 304; a range past the end with 416', async () => {
    const id = await createPrediction(gw.url, KEY_A, { prompt: 'a clip', output: 'sim:clip.webm' });
    const p = await settled(gw, KEY_A, id);
    expect(p.output).toBe(`${gw.url}/gateway/v1/outputs/${id}/0`);
    const part = await bytesOf(p.output, KEY_A, { range: 'bytes=100-1099' });
    expect(part.res.status).toBe(206);
    expect(part.res.headers.get('content-range')).toBe(`bytes 100-1099/${VIDEO.length}`);
    expect(part.body.equals(VIDEO.subarray(100, 1100))).toBe(true);
    const tail = await bytesOf(p.output, KEY_A, { range: 'bytes=-10' });
    expect(tail.res.status).toBe(206);
    expect(tail.body.equals(VIDEO.subarray(VIDEO.length - 10))).toBe(true);

    const head = await fetch(p.output, { method: 'HEAD', headers: { authorization: `Bearer ${KEY_A}` } });
    expect(head.status).toBe(200);
    expect(head.headers.get('content-length')).toBe(String(VIDEO.length));
    expect(head.headers.get('content-type')).toBe('video/webm');

    const etag = part.res.headers.get('etag')!;
    expect(etag).toMatch(/^"[\w-]+"$/);
    const cached = await fetch(p.output, { headers: { authorization: `Bearer ${KEY_A}`, 'if-none-match': etag } });
    expect(cached.status).toBe(304);
    const past = await call(gw.url, 'GET', `/gateway/v1/outputs/${id}/0`, { key: KEY_A, headers: { range: `bytes=${VIDEO.length + 5}-` } });
    expectProblem(past, 416);
    expect(past.headers.get('content-range')).toBe(`bytes */${VIDEO.length}`);
  });

  it('serves outputs to their tenant only: another tenant gets 404, no key 401, a bad signed link 403', async () => {
    const id = await createPrediction(gw.url, KEY_A, { prompt: 'mine' });
    const p = await settled(gw, KEY_A, id);
    const path = `/gateway/v1/outputs/${id}/0`;
    expect(p.output).toEqual([`${gw.url}${path}`]);
    expectProblem(await call(gw.url, 'GET', path, { key: KEY_B }), 404);
    expectProblem(await call(gw.url, 'GET', `${path}/link`, { key: KEY_B }), 404);
    expectProblem(await call(gw.url, 'GET', `/replicate/v1/predictions/${id}`, { key: KEY_B }), 404);
    expectProblem(await call(gw.url, 'GET', path), 401);
    expectProblem(await call(gw.url, 'GET', `/gateway/v1/outputs/${id}/7`, { key: KEY_A }), 404);
    expectProblem(await call(gw.url, 'GET', `/gateway/v1/outputs/${id}/x`, { key: KEY_A }), 422);

    const link = await call(gw.url, 'GET', `${path}/link`, { key: KEY_A });
    expect(link.status).toBe(200);
    expect(link.body.url).toMatch(new RegExp(`^${gw.url}${path}/content\\?expires=\\d+&signature=`));
    const viaLink = await bytesOf(link.body.url);
    expect(viaLink.res.status).toBe(200);
    expect(viaLink.body.equals(OUTPUT_IMAGE)).toBe(true);
    expectProblem(await call(gw.url, 'GET', `${link.body.url.slice(gw.url.length)}x`), 403);
    expectProblem(await call(gw.url, 'GET', `${path}/content?expires=99999999999&signature=${'a'.repeat(43)}`), 403);
  });

  it('keeps the upstream URL for an output it cannot copy (gone, too large, a private address) and counts why', async () => {
    const before = {
      notFound: await metric(gw, /^fgw_output_copies_total\{outcome="not_found"\}/),
      tooLarge: await metric(gw, /^fgw_output_copies_total\{outcome="too_large"\}/),
      refused: await metric(gw, /^fgw_output_copies_total\{outcome="refused"\}/),
    };
    const privateUrl = 'https://[::1]:9/out.webp';
    const id = await createPrediction(gw.url, KEY_A, { prompt: 'mixed', output: ['sim:gone-0.webp', 'sim:big-300000.bin', privateUrl, 'sim:ok.webp'] });
    const p = await settled(gw, KEY_A, id);
    const sim = s.url.replace(/\/replicate\/v1$/, '');
    expect(p.output).toEqual([`${sim}/delivery/xezq/${id}/gone-0.webp`, `${sim}/delivery/xezq/${id}/big-300000.bin`, privateUrl, `${gw.url}/gateway/v1/outputs/${id}/3`]);
    expect(await metric(gw, /^fgw_output_copies_total\{outcome="not_found"\}/)).toBe(before.notFound + 1);
    expect(await metric(gw, /^fgw_output_copies_total\{outcome="too_large"\}/)).toBe(before.tooLarge + 1);
    expect(await metric(gw, /^fgw_output_copies_total\{outcome="refused"\}/)).toBe(before.refused + 1);
    // Nothing is left of the file that was cut off.
    expect(readdirSync(join(dir, 'team-a', id))).toEqual(['3']);
  });

  it('tries a copy that failed for a passing reason (a 503) again, and keeps the output then', { timeout: 60_000 }, async () => {
    const failedBefore = await metric(gw, /^fgw_output_copies_total\{outcome="failed"\}/);
    const id = await createPrediction(gw.url, KEY_A, { prompt: 'flaky CDN', output: ['sim:flaky.webp', 'sim:steady.webp'] });
    const first = await settled(gw, KEY_A, id);
    // The first try kept what it could; the other output still points upstream.
    expect(first.output[0]).toMatch(/\/delivery\/xezq\/.*\/flaky\.webp$/);
    expect(first.output[1]).toBe(`${gw.url}/gateway/v1/outputs/${id}/1`);
    expect(await metric(gw, /^fgw_output_copies_total\{outcome="failed"\}/)).toBe(failedBefore + 1);
    // The retry (30 s later) keeps it too.
    const later = await settled(gw, KEY_A, id, (p) => p.output[0] === `${gw.url}/gateway/v1/outputs/${id}/0`);
    expect(later.output[1]).toBe(`${gw.url}/gateway/v1/outputs/${id}/1`);
    expect((await bytesOf(later.output[0], KEY_A)).body.equals(OUTPUT_IMAGE)).toBe(true);
    expect(deliveries(id)).toBe(3);
  });

  it('copies nothing for a tenant that opted out (keepOutputs: false)', async () => {
    const id = await createPrediction(gw.url, KEY_OFF, { prompt: 'not kept' });
    await waitFor(async () => (await call(gw.url, 'GET', `/replicate/v1/predictions/${id}`, { key: KEY_OFF })).body?.status === 'succeeded', 10_000, 'the prediction to end');
    // A prediction kept for another tenant after it shows the copy had its chance.
    const other = await createPrediction(gw.url, KEY_A, { prompt: 'kept' });
    await settled(gw, KEY_A, other);
    const p = (await call(gw.url, 'GET', `/replicate/v1/predictions/${id}`, { key: KEY_OFF })).body;
    expect(p.output[0]).toMatch(/\/delivery\/xezq\//);
    expect(deliveries(id)).toBe(0);
    expect(existsSync(join(dir, 'team-off'))).toBe(false);
  });

  it('holds a tenant to its outputsMaxBytes, and its usage shows the bytes it keeps', async () => {
    const first = await createPrediction(gw.url, KEY_QUOTA, { prompt: 'a clip', output: ['sim:clip.webm'] });
    await settled(gw, KEY_QUOTA, first);
    const usage = await call(gw.url, 'GET', '/gateway/v1/usage', { key: KEY_QUOTA });
    expect(usage.body.outputs).toEqual({ bytes: VIDEO.length, max_bytes: VIDEO.length + 1000 });
    // The image alone would fit in what is left; the second clip would not.
    const second = await createPrediction(gw.url, KEY_QUOTA, { prompt: 'more', output: ['sim:clip.webm', 'sim:tiny.webp'] });
    const p = await settled(gw, KEY_QUOTA, second);
    expect(p.output[0]).toMatch(/\/delivery\/xezq\//);
    expect(p.output[1]).toBe(`${gw.url}/gateway/v1/outputs/${second}/1`);
    expect((await call(gw.url, 'GET', '/gateway/v1/usage', { key: KEY_QUOTA })).body.outputs.bytes).toBe(VIDEO.length + OUTPUT_IMAGE.length);
    expect(await metric(gw, /^fgw_output_copies_total\{outcome="quota"\}/)).toBeGreaterThanOrEqual(1);
  });

  it('deletes the outputs when their retention ends, and the prediction then shows data_removed', { timeout: 90_000 }, async () => {
    const id = await createPrediction(gw.url, KEY_SHORT, { prompt: 'brief' });
    const kept = await settled(gw, KEY_SHORT, id);
    expect((await bytesOf(kept.output[0], KEY_SHORT)).res.status).toBe(200);
    expect((await call(gw.url, 'GET', '/gateway/v1/usage', { key: KEY_SHORT })).body.outputs.bytes).toBe(OUTPUT_IMAGE.length);
    // About 17 s of retention, then within a minute.
    const removed = await (async () => {
      let p: any;
      await waitFor(async () => {
        p = (await call(gw.url, 'GET', `/replicate/v1/predictions/${id}`, { key: KEY_SHORT })).body;
        return p.data_removed === true;
      }, 80_000, 'the end of retention');
      return p;
    })();
    expect(removed).toMatchObject({ status: 'succeeded', data_removed: true, output: null });
    expectProblem(await call(gw.url, 'GET', `/gateway/v1/outputs/${id}/0`, { key: KEY_SHORT }), 404);
    expect(existsSync(join(dir, 'team-short', id, '0'))).toBe(false);
    expect((await call(gw.url, 'GET', '/gateway/v1/usage', { key: KEY_SHORT })).body.outputs.bytes).toBe(0);
  });
});

describe('without Redis (the in-memory store)', () => {
  let gw: Gateway;
  beforeAll(async () => {
    gw = await startGateway({ sim: s, tenants: TENANTS, redis: 'memory', env: envFor(`file:${mkdtempSync(join(tmpdir(), 'fgw-outputs-'))}`) });
  });
  afterAll(async () => {
    await gw?.close();
  });

  it('keeps and serves outputs the same way', async () => {
    const id = await createPrediction(gw.url, KEY_A, { prompt: 'on a laptop', output: ['sim:clip.webm'] });
    const p = await settled(gw, KEY_A, id);
    const part = await bytesOf(p.output[0], KEY_A, { range: 'bytes=0-99' });
    expect(part.res.status).toBe(206);
    expect(part.body.equals(VIDEO.subarray(0, 100))).toBe(true);
    expectProblem(await call(gw.url, 'GET', `/gateway/v1/outputs/${id}/0`, { key: KEY_B }), 404);
    expect((await call(gw.url, 'GET', '/gateway/v1/usage', { key: KEY_A })).body.outputs).toEqual({ bytes: VIDEO.length, max_bytes: null });
  });
});

describe('two replicas on one Redis', () => {
  let a: GatewayProcess;
  let b: GatewayProcess;
  beforeAll(async () => {
    // Two gateway processes, as replicas run, sharing the Redis state and the outputs volume.
    const dir = mkdtempSync(join(tmpdir(), 'fgw-outputs-'));
    const prefix = `outputs-replicas:${randomBytes(6).toString('hex')}:`;
    const tenantsFile = writeTenants(TENANTS);
    [a, b] = await Promise.all([0, 1].map(() => startGatewayProcess({ sim: s, tenantsFile, prefix, env: envFor(`file:${dir}`) })));
  });
  afterAll(stopAllGatewayProcesses);

  it('copy each output once, and both serve it', async () => {
    const id = await createPrediction(a.url, KEY_A, { prompt: 'shared', output: ['sim:one.webp', 'sim:clip.webm'] });
    // Both replicas read it (and their watchers look) while it runs and ends.
    const [pa, pb] = await Promise.all([settled(a, KEY_A, id), settled(b, KEY_A, id)]);
    expect(pa.output).toEqual([`${a.url}/gateway/v1/outputs/${id}/0`, `${a.url}/gateway/v1/outputs/${id}/1`]);
    expect(pb.output).toEqual([`${b.url}/gateway/v1/outputs/${id}/0`, `${b.url}/gateway/v1/outputs/${id}/1`]);
    expect(deliveries(id)).toBe(2);
    for (const gw of [a, b]) {
      const { res, body } = await bytesOf(`${gw.url}/gateway/v1/outputs/${id}/1`, KEY_A);
      expect(res.status).toBe(200);
      expect(body.equals(VIDEO)).toBe(true);
    }
  });
});

describe('outputs kept in an S3-compatible bucket', () => {
  let gw: Gateway;
  let server: S3rver;
  let s3: S3Client;
  beforeAll(async () => {
    // s3rver: an S3 API on loopback, backed by a folder; it takes any signed request for the keys it was given.
    server = new S3rver({ port: 0, address: '127.0.0.1', silent: true, directory: mkdtempSync(join(tmpdir(), 'fgw-s3rver-')), configureBuckets: [{ name: 'kept-outputs', configs: [] }] });
    const { port } = await server.run();
    const endpoint = `http://127.0.0.1:${port}`;
    s3 = new S3Client({ endpoint, region: 'us-east-1', forcePathStyle: true, credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' } });
    gw = await startGateway({
      sim: s,
      tenants: TENANTS,
      env: envFor('s3://kept-outputs/gateway/', { S3_ENDPOINT: endpoint, S3_ACCESS_KEY_ID: 'S3RVER', S3_SECRET_ACCESS_KEY: 'S3RVER', S3_FORCE_PATH_STYLE: 'true' }),
    });
  });
  afterAll(async () => {
    await gw?.close();
    s3?.destroy();
    await server?.close();
  });

  const listed = async () => ((await s3.send(new ListObjectsV2Command({ Bucket: 'kept-outputs', Prefix: 'gateway/' }))).Contents ?? []).map((o) => o.Key).sort();

  it('keeps outputs as objects under the prefix, serves ranges from them, and deletes them when retention ends', { timeout: 90_000 }, async () => {
    const id = await createPrediction(gw.url, KEY_SHORT, { prompt: 'to the bucket', output: ['sim:clip.webm', 'sim:image.png'] });
    const p = await settled(gw, KEY_SHORT, id);
    expect(await listed()).toEqual([`gateway/team-short/${id}/0`, `gateway/team-short/${id}/1`]);
    const part = await bytesOf(p.output[0], KEY_SHORT, { range: 'bytes=1000-1999' });
    expect(part.res.status).toBe(206);
    expect(part.body.equals(VIDEO.subarray(1000, 2000))).toBe(true);
    const whole = await bytesOf(p.output[1], KEY_SHORT);
    expect(whole.res.headers.get('content-type')).toBe('image/png');
    expect(whole.body.equals(PNG)).toBe(true);
    // No secret in any log line.
    expect(gw.logs.join('\n')).not.toContain('S3RVER');

    await waitFor(async () => (await call(gw.url, 'GET', `/replicate/v1/predictions/${id}`, { key: KEY_SHORT })).body.data_removed === true, 80_000, 'the end of retention');
    expect(await listed()).toEqual([]);
  });
});

describe('a browser', () => {
  let gw: Gateway;
  let browser: Browser;
  beforeAll(async () => {
    const dir = mkdtempSync(join(tmpdir(), 'fgw-outputs-'));
    [gw, browser] = await Promise.all([startGateway({ sim: s, tenants: TENANTS, env: envFor(`file:${dir}`, { LOG_LEVEL: 'info' }) }), launchChromium()]);
  });
  afterAll(async () => {
    await browser?.close();
    await gw?.close();
  });

  it('shows a kept image and plays and seeks a kept video through signed links', { timeout: 60_000 }, async () => {
    const id = await createPrediction(gw.url, KEY_A, { prompt: 'for a page', output: { image: 'sim:image.png', video: 'sim:clip.webm' } });
    await settled(gw, KEY_A, id);
    const link = async (n: number) => (await call(gw.url, 'GET', `/gateway/v1/outputs/${id}/${n}/link`, { key: KEY_A })).body.url as string;
    const [img, video] = await Promise.all([link(0), link(1)]);
    const page = await browser.newPage();
    let server: Server | undefined;
    try {
      // A page of another origin, as a team's web app would show its outputs: a real server on loopback (Chromium
      // keeps pages it cannot place on this machine from loading loopback addresses).
      const html = `<img id="i" src="${img}"><video id="v" src="${video}" preload="auto" muted></video>`;
      server = createServer((_req, res) => res.writeHead(200, { 'content-type': 'text/html' }).end(html));
      await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
      await page.goto(`http://localhost:${(server.address() as AddressInfo).port}/`);
      const image = await page.evaluate(async () => {
        const i = document.getElementById('i') as HTMLImageElement;
        await i.decode();
        return { w: i.naturalWidth, h: i.naturalHeight };
      });
      expect(image).toEqual({ w: 32, h: 24 });
      const seek = await page.evaluate(async () => {
        const v = document.getElementById('v') as HTMLVideoElement;
        if (v.readyState < 1) await new Promise((r) => v.addEventListener('loadedmetadata', r, { once: true }));
        const seekable = v.seekable.length ? v.seekable.end(0) : 0;
        const seeked = new Promise((r) => v.addEventListener('seeked', r, { once: true }));
        v.currentTime = 4.5;
        await seeked;
        if (v.readyState < 2) await new Promise((r) => v.addEventListener('loadeddata', r, { once: true }));
        return { duration: v.duration, seekable, at: v.currentTime, error: v.error?.code ?? null };
      });
      expect(seek.error).toBeNull();
      expect(seek.duration).toBeCloseTo(6, 0);
      expect(seek.seekable).toBeCloseTo(6, 0);
      expect(seek.at).toBeCloseTo(4.5, 1);
      // The video came in ranges (206), as browsers fetch media.
      const videoAnswers = gw.logs.map((l) => JSON.parse(l)).filter((l) => l.msg === 'request completed' && String(l.url).startsWith(`/gateway/v1/outputs/${id}/1/content`));
      expect(videoAnswers.map((l) => l.statusCode)).toContain(206);
    } finally {
      await page.close();
      await new Promise((resolve) => server?.close(resolve));
    }
  });
});
