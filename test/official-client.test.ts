// The official `replicate` npm client, unchanged but for baseUrl and auth, against the gateway over real HTTP.
import Replicate from 'replicate';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createSimulator } from '../src/simulator/simulator.js';
import { KEY_A, KEY_B, type Gateway, type SimHandle, startGateway, upstreamCalls } from './helpers/stack.js';

let s: SimHandle;
let gw: Gateway;
let replicate: Replicate;

beforeAll(async () => {
  const apiKey = 'sk-upstream-official-client-0000';
  const sim = createSimulator({ apiKey, stepMs: 150, selfStreamUrls: true });
  s = { sim, apiKey, url: await sim.listen(0, '127.0.0.1') };
  gw = await startGateway({ sim: s });
  replicate = new Replicate({ auth: KEY_A, baseUrl: `${gw.url}/replicate/v1`, useFileOutput: false });
});
afterAll(async () => {
  await gw.close();
  await s.sim.close();
});

describe('official replicate client through the gateway', () => {
  it('creates by model and by version, gets, and waits', async () => {
    const byModel = await replicate.predictions.create({ model: 'black-forest-labs/flux-schnell', input: { prompt: 'a fox' } });
    expect(byModel.urls.get).toBe(`${gw.url}/replicate/v1/predictions/${byModel.id}`);
    const byVersion = await replicate.predictions.create({ version: 'abc123def', input: { prompt: 'a fox' } });
    expect(byVersion.status).toBe('starting');
    const got = await replicate.predictions.get(byModel.id);
    expect(got.id).toBe(byModel.id);
    const done = await replicate.wait(byModel, { interval: 50 });
    expect(done.status).toBe('succeeded');
    expect(done.output).toEqual([`https://replicate.delivery/xezq/${byModel.id}/out-0.webp`]);
  });

  it('cancels (POST with an empty JSON body)', async () => {
    const p = await replicate.predictions.create({ model: 'black-forest-labs/flux-schnell', input: { prompt: 'slow', duration_ms: 10_000 } });
    const canceled = await replicate.predictions.cancel(p.id);
    expect(canceled.status).toBe('canceled');
    const cancelCall = upstreamCalls(s.sim, new RegExp(`${p.id}/cancel$`));
    expect(cancelCall).toHaveLength(1);
  });

  it('runs in block mode (Prefer: wait) and in poll mode', async () => {
    s.sim.clearRequests();
    const blocked = await replicate.run('black-forest-labs/flux-schnell', { input: { prompt: 'block' } });
    expect(blocked).toEqual([expect.stringMatching(/^https:\/\/replicate\.delivery\//)]);
    const create = upstreamCalls(s.sim, /predictions$/).find((r) => r.method === 'POST');
    expect(create!.headers.prefer).toBe('wait');
    const polled = await replicate.run('black-forest-labs/flux-schnell', { input: { prompt: 'poll' }, wait: { mode: 'poll', interval: 50 } });
    expect(polled).toEqual([expect.stringMatching(/^https:\/\/replicate\.delivery\//)]);
  });

  it('clamps an over-long Prefer: wait=90 to 60 before forwarding', async () => {
    s.sim.clearRequests();
    await replicate.predictions.create({ model: 'black-forest-labs/flux-schnell', input: { prompt: 'x' }, wait: 90 } as never);
    const create = upstreamCalls(s.sim).find((r) => r.method === 'POST');
    expect(create!.headers.prefer).toBe('wait=60');
  });

  it('lists and paginates only its own tenant\'s predictions, following `next` through the gateway', async () => {
    const mine = new Replicate({ auth: KEY_B, baseUrl: `${gw.url}/replicate/v1`, useFileOutput: false });
    const created: string[] = [];
    for (let i = 0; i < 130; i++) {
      const p = await mine.predictions.create({ model: 'black-forest-labs/flux-schnell', input: { prompt: `n${i}` } });
      created.push(p.id);
    }
    const first = await mine.predictions.list();
    expect(first.results).toHaveLength(100);
    expect(first.next).toMatch(new RegExp(`^${gw.url}/replicate/v1/predictions\\?cursor=`));
    expect(first.results[0]!.id).toBe(created.at(-1));
    const seen: string[] = [];
    for await (const page of mine.paginate(mine.predictions.list)) seen.push(...page.map((p) => p.id));
    expect(seen).toEqual([...created].reverse());
    // The upstream list (every team's predictions on the shared key) was never called.
    expect(upstreamCalls(s.sim).some((r) => r.method === 'GET' && /\/predictions(\?|$)/.test(r.url))).toBe(false);
  });

  it('streams from urls.stream, which is passed through unchanged', async () => {
    const events: string[] = [];
    for await (const event of replicate.stream('black-forest-labs/flux-schnell', { input: { prompt: 'stream' } })) {
      events.push(`${event.event}:${event.data}`);
    }
    expect(events).toContain('output:hello');
  });

  it('uploads a Blob input to POST /files, and the upstream gets its bytes as a data: URI', async () => {
    s.sim.clearRequests();
    const filesBefore = (await replicate.files.list()).results.length;
    const output = await replicate.run('black-forest-labs/flux-schnell', {
      input: { image: new Blob([Buffer.from('PNGDATA')], { type: 'image/png' }) },
    });
    expect(output).toBeTruthy();
    const create = upstreamCalls(s.sim).find((r) => r.method === 'POST');
    expect((create!.body as { input: { image: string } }).input.image).toBe(`data:image/png;base64,${Buffer.from('PNGDATA').toString('base64')}`);
    expect((await replicate.files.list()).results).toHaveLength(filesBefore + 1);
  });
});
