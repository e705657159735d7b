// `npm run bench:state`: what one prediction costs in Redis memory, typical and with the largest file input allowed
// (FILES_MAX_BYTES), and what a list of such predictions answers. One gateway process on its own redis-server in
// front of the simulator; each prediction is created with an Idempotency-Key and a webhook (the costliest typical
// create), polled to its end, and its webhook delivered; then every key's MEMORY USAGE is summed (BullMQ's included),
// before and after, per prediction. BENCH_PREDICTIONS (20) per kind; FILES_MAX_BYTES passes through.
import { randomUUID } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { intFromEnv } from '../src/config.js';
import { startGatewayProcess, startSimulatorProcess, stopAllProcesses } from '../test/support/processes.js';
import { RedisServer } from '../test/support/redis.js';

const N = intFromEnv(process.env, 'BENCH_PREDICTIONS', 20, 1, 10_000);
const FILE_BYTES = intFromEnv(process.env, 'FILES_MAX_BYTES', 10 * 1024 * 1024, 1024, 1024 ** 3);
const UPSTREAM_KEY = 'sim-state-key';
const TENANT_KEY = 'state-tenant-key-0123456789abcdef';
const MODEL = '/replicate/v1/models/black-forest-labs/flux-schnell/predictions';
const TERMINAL = new Set(['succeeded', 'failed', 'canceled', 'aborted']);

/** Every key of the server and its MEMORY USAGE (bytes, with its own overhead). */
async function usage(redis: Redis): Promise<{ bytes: number; keys: number; byKind: Map<string, number> }> {
  let bytes = 0;
  let n = 0;
  const byKind = new Map<string, number>();
  let cursor = '0';
  do {
    const [next, batch] = await redis.scan(cursor, 'COUNT', 1000);
    cursor = next;
    for (const k of batch) {
      const b = Number((await redis.call('MEMORY', 'USAGE', k, 'SAMPLES', '0')) ?? 0);
      bytes += b;
      n++;
      const kind = k.replace(/^state:/, '').replace(/\{[^}]*\}.*$/, '{…}').replace(/^(bull:webhooks:)w-.*$/, '$1w-<job>').replace(/^(kv:[a-z-]+:).*$/, '$1…');
      byKind.set(kind, (byKind.get(kind) ?? 0) + b);
    }
  } while (cursor !== '0');
  return { bytes, keys: n, byKind };
}

async function main(): Promise<void> {
  const redis = await RedisServer.start();
  const client = new Redis(redis.url);
  const sim = await startSimulatorProcess({ apiKey: UPSTREAM_KEY, stepMs: 50, quiet: true });
  // A webhook receiver on loopback that accepts every delivery.
  let delivered = 0;
  const receiver = createServer((req, res) => {
    req.resume().on('end', () => {
      delivered++;
      res.end('ok');
    });
  });
  await new Promise<void>((r) => receiver.listen(0, '127.0.0.1', r));
  const hook = `http://127.0.0.1:${(receiver.address() as { port: number }).port}/hook`;
  const dir = mkdtempSync(join(tmpdir(), 'fgw-statebench-'));
  const tenantsFile = join(dir, 'tenants.json');
  writeFileSync(tenantsFile, JSON.stringify({ tenants: [{ id: 'bench', keys: [TENANT_KEY], rateLimit: { max: 10_000_000, timeWindow: '1 minute' } }] }));
  const gw = await startGatewayProcess({
    upstreamUrl: sim.url,
    upstreamKey: UPSTREAM_KEY,
    tenantsFile,
    redisUrl: redis.url,
    prefix: 'state:',
    quiet: true,
    env: { LOG_LEVEL: 'warn', FILES_MAX_BYTES: String(FILE_BYTES), WEBHOOK_ALLOW_HTTP_HOSTS: '127.0.0.1', WEBHOOK_ALLOW_PRIVATE_HOSTS: '127.0.0.1', BODY_LIMIT_BYTES: String(Math.max(1024 * 1024, FILE_BYTES + 1024 * 1024)) },
  });
  const auth = { authorization: `Bearer ${TENANT_KEY}` };

  async function upload(size: number): Promise<string> {
    const form = new FormData();
    form.append('content', new Blob([new Uint8Array(Buffer.alloc(size, 7))], { type: 'image/png' }), 'in.png');
    const r = await fetch(`${gw.url}/replicate/v1/files`, { method: 'POST', body: form, headers: auth });
    if (r.status !== 201) throw new Error(`upload: ${r.status} ${await r.text()}`);
    return ((await r.json()) as { urls: { get: string } }).urls.get;
  }

  /** N predictions to their end, webhooks delivered; the Redis bytes they added, and a list of them. */
  async function round(label: string, input: (i: number) => Record<string, unknown>): Promise<void> {
    const before = await usage(client);
    const sentBefore = delivered;
    const ids: string[] = [];
    let answerBytes = 0;
    for (let i = 0; i < N; i++) {
      const r = await fetch(`${gw.url}${MODEL}`, {
        method: 'POST',
        headers: { ...auth, 'content-type': 'application/json', 'idempotency-key': randomUUID() },
        body: JSON.stringify({ input: input(i), webhook: hook, webhook_events_filter: ['completed'] }),
      });
      const text = await r.text();
      if (r.status !== 201) throw new Error(`create: ${r.status} ${text.slice(0, 300)}`);
      answerBytes += text.length;
      ids.push((JSON.parse(text) as { id: string }).id);
    }
    for (const id of ids) {
      for (;;) {
        const p = (await (await fetch(`${gw.url}/replicate/v1/predictions/${id}`, { headers: auth })).json()) as { status: string };
        if (TERMINAL.has(p.status)) break;
        await sleep(50);
      }
    }
    const until = Date.now() + 30_000;
    while (delivered - sentBefore < N && Date.now() < until) await sleep(50);
    await sleep(500);
    const t0 = performance.now();
    const list = await fetch(`${gw.url}/replicate/v1/predictions`, { headers: auth });
    const listText = await list.text();
    const listMs = performance.now() - t0;
    const after = await usage(client);
    const per = (after.bytes - before.bytes) / N;
    console.log(`\n${label}: ${N} predictions, ${delivered - sentBefore} webhooks delivered`);
    console.log(`  Redis: ${Math.round(per)} bytes per prediction (${((after.keys - before.keys) / N).toFixed(1)} keys each)`);
    console.log(`  create answer: ${Math.round(answerBytes / N)} bytes; list of ${Math.min(100, after.keys ? ids.length : 0)}+: ${list.status}, ${listText.length} bytes, ${listMs.toFixed(0)} ms`);
    const kinds = [...after.byKind].map(([k, b]) => [k, b - (before.byKind.get(k) ?? 0)] as const).filter(([, b]) => b !== 0).sort((a, b) => b[1] - a[1]);
    for (const [k, b] of kinds) console.log(`    ${k.padEnd(28)} ${String(Math.round(b / N)).padStart(10)} B/prediction`);
  }

  try {
    await round('typical (a prompt, an Idempotency-Key, a webhook)', (i) => ({ prompt: `a cat number ${i}` }));
    const url = await upload(FILE_BYTES);
    const fileKeys = await usage(client);
    console.log(`\n(the uploaded file itself: ${FILE_BYTES} bytes, in Redis until FILES_TTL_SECONDS; all keys now ${fileKeys.bytes} bytes)`);
    await round(`with a file input of FILES_MAX_BYTES (${FILE_BYTES} bytes)`, (i) => ({ prompt: `a cat number ${i}`, image: url }));
  } finally {
    client.disconnect();
    await stopAllProcesses();
    await sim.stop().catch(() => {});
    receiver.close();
    await redis.destroy();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
