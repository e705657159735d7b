// `npm run bench:streams`: browser event streams. (1) The delay from the gateway's observation of a change (the
// lifecycle's pub/sub message, heard here on the same Redis) to the stream's event at the client, p50 and p99, with
// one gateway process and with two (streams on one, creates on the other, changes seen by either's watcher).
// (2) What an open stream costs: BENCH_STREAMS (10000) streams held open on one gateway process, its RSS and heap
// before and after. Everything on loopback, with its own redis-server and the simulator.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { Agent, request } from 'undici';
import { intFromEnv } from '../src/config.js';
import { quantile } from '../src/lib/quantile.js';
import { type ServerProcess, startGatewayProcess, startSimulatorProcess, stopAllProcesses } from '../test/support/processes.js';
import { RedisServer } from '../test/support/redis.js';

const STREAMS = intFromEnv(process.env, 'BENCH_STREAMS', 10_000, 1, 100_000);
const WATCHED = intFromEnv(process.env, 'BENCH_WATCHED', 100, 1, 10_000);
const UPSTREAM_KEY = 'sim-streams-key';
const KEY = 'streams-tenant-key-0123456789abcdef';
const MODEL = '/replicate/v1/models/black-forest-labs/flux-schnell/predictions';
const auth = { authorization: `Bearer ${KEY}` };

async function create(url: string, durationMs: number): Promise<string> {
  const r = await request(`${url}${MODEL}`, { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ input: { prompt: 'x', duration_ms: durationMs } }) });
  const body = (await r.body.json()) as { id: string };
  if (r.statusCode !== 201) throw new Error(`create: ${r.statusCode}`);
  return body.id;
}

/** Opens a stream and calls `onStatus` with each status event's status as it arrives; resolves when it closes. */
async function stream(url: string, id: string, dispatcher: Agent, onStatus?: (status: string) => void): Promise<{ opened: Promise<void>; closed: Promise<void> }> {
  let opened!: () => void;
  const isOpen = new Promise<void>((r) => (opened = r));
  const closed = (async () => {
    const r = await request(`${url}/gateway/v1/predictions/${id}/events`, { headers: auth, dispatcher });
    if (r.statusCode !== 200) throw new Error(`stream: ${r.statusCode} ${await r.body.text()}`);
    opened();
    let buf = '';
    for await (const chunk of r.body) {
      buf += chunk.toString();
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        if (onStatus && block.includes('event: status')) {
          const data = block.split('\n').find((l) => l.startsWith('data: '));
          if (data) onStatus((JSON.parse(data.slice(6)) as { status: string }).status);
        }
      }
    }
  })();
  return { opened: isOpen, closed };
}

async function delays(redisUrl: string, prefix: string, creator: ServerProcess, streamer: ServerProcess, n: number): Promise<number[]> {
  const published = new Map<string, number>();
  const sub = new Redis(redisUrl);
  sub.on('pmessage', (_p: string, channel: string, status: string) => published.set(`${channel.slice(`${prefix}prediction:`.length)}:${status}`, Date.now()));
  await sub.psubscribe(`${prefix}prediction:*`);
  const dispatcher = new Agent({ connections: null });
  const got: number[] = [];
  const ids = await Promise.all(Array.from({ length: n }, () => create(creator.url, 2000 + Math.floor(Math.random() * 2000))));
  const all = await Promise.all(
    ids.map((id) =>
      stream(streamer.url, id, dispatcher, (status) => {
        const at = published.get(`${id}:${status}`);
        if (at !== undefined) got.push(Date.now() - at);
      }),
    ),
  );
  await Promise.all(all.map((s) => s.closed));
  await sub.quit();
  await dispatcher.close();
  return got.sort((a, b) => a - b);
}

async function metric(url: string, name: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  return Number(new RegExp(`^${name} (\\S+)`, 'm').exec(text)?.[1] ?? NaN);
}

async function main(): Promise<void> {
  const redis = await RedisServer.start();
  const sim = await startSimulatorProcess({ apiKey: UPSTREAM_KEY, stepMs: 500, quiet: true });
  const dir = mkdtempSync(join(tmpdir(), 'fgw-streams-'));
  const tenantsFile = join(dir, 'tenants.json');
  writeFileSync(tenantsFile, JSON.stringify({ tenants: [{ id: 'streams', keys: [KEY], rateLimit: { max: 10_000_000, timeWindow: '1 minute' } }] }));
  const env = { LOG_LEVEL: 'warn', ACCESS_LOG: 'false', MAX_STREAMS_PER_TENANT: '1000000', MAX_STREAMS_PER_IP: '1000000' };
  const start = (prefix: string) => startGatewayProcess({ upstreamUrl: sim.url, upstreamKey: UPSTREAM_KEY, tenantsFile, redisUrl: redis.url, prefix, env, quiet: true });

  const [solo] = await Promise.all([start('solo:')]);
  const one = await delays(redis.url, 'solo:', solo, solo, 50);
  console.log(`observation → client event, one replica: p50 ${quantile(one, 0.5)} ms, p99 ${quantile(one, 0.99)} ms (${one.length} events)`);
  const [a, b] = await Promise.all([start('pair:'), start('pair:')]);
  const two = await delays(redis.url, 'pair:', a!, b!, 50);
  console.log(`observation → client event, streams on replica B, creates on A: p50 ${quantile(two, 0.5)} ms, p99 ${quantile(two, 0.99)} ms (${two.length} events)`);

  // Memory: STREAMS streams over WATCHED long predictions on the solo gateway.
  // In batches: a tenant may hold only so many upstream calls at once (UPSTREAM_TENANT_MAX_CONCURRENCY).
  const ids: string[] = [];
  for (let i = 0; i < WATCHED; i += 20) ids.push(...(await Promise.all(Array.from({ length: Math.min(20, WATCHED - i) }, () => create(solo.url, 600_000)))));
  await new Promise((r) => setTimeout(r, 2000));
  const rss0 = await metric(solo.url, 'fgw_process_resident_memory_bytes');
  const heap0 = await metric(solo.url, 'fgw_nodejs_heap_size_used_bytes');
  const dispatcher = new Agent({ connections: null, keepAliveTimeout: 600_000 });
  const t0 = Date.now();
  const open: Awaited<ReturnType<typeof stream>>[] = [];
  for (let i = 0; i < STREAMS; i += 500) {
    const batch = await Promise.all(Array.from({ length: Math.min(500, STREAMS - i) }, (_, j) => stream(solo.url, ids[(i + j) % ids.length]!, dispatcher)));
    await Promise.all(batch.map((s) => s.opened));
    open.push(...batch);
  }
  const openMs = Date.now() - t0;
  await new Promise((r) => setTimeout(r, 3000));
  const rss1 = await metric(solo.url, 'fgw_process_resident_memory_bytes');
  const heap1 = await metric(solo.url, 'fgw_nodejs_heap_size_used_bytes');
  const mib = (n: number) => (n / 1024 / 1024).toFixed(1);
  console.log(`${STREAMS} streams open on one gateway process (${WATCHED} predictions) in ${(openMs / 1000).toFixed(1)} s`);
  console.log(`RSS ${mib(rss0)} → ${mib(rss1)} MiB (${((rss1 - rss0) / STREAMS / 1024).toFixed(1)} KiB per stream); heap ${mib(heap0)} → ${mib(heap1)} MiB (${((heap1 - heap0) / STREAMS / 1024).toFixed(1)} KiB per stream)`);
  const answers = await request(`${solo.url}/healthz`);
  console.log(`the gateway still answers: /healthz ${answers.statusCode}`);
  await answers.body.text();
  for (const s of open) s.closed.catch(() => {});
  await dispatcher.destroy();
  await stopAllProcesses();
  await redis.destroy();
}

main().catch(async (err) => {
  console.error(err);
  await stopAllProcesses();
  process.exit(1);
});
