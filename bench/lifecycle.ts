// `npm run bench:lifecycle`: how soon the gateway settles predictions nobody asks about, and how many upstream reads
// that costs. Two gateway processes on one redis-server in front of the simulator; BENCH_PREDICTIONS (1000)
// predictions of BENCH_MIN_SECONDS..BENCH_MAX_SECONDS (2..60) are created through both and never polled. The lag of
// each is the time from its completed_at upstream to the gateway publishing its end (the lifecycle's pub/sub
// message, heard here on the same Redis). Gateway settings (UPSTREAM_WATCH_READS_PER_MINUTE, WATCH_MIN_MS,
// WATCH_MAX_MS) pass through. Reads are the watchers' own, from both gateways' /metrics.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { Pool } from 'undici';
import { intFromEnv } from '../src/config.js';
import { quantile } from '../src/lib/quantile.js';
import { startGatewayProcess, startSimulatorProcess, stopAllProcesses } from '../test/support/processes.js';
import { RedisServer } from '../test/support/redis.js';

const N = intFromEnv(process.env, 'BENCH_PREDICTIONS', 1000, 1, 1_000_000);
const MIN_S = intFromEnv(process.env, 'BENCH_MIN_SECONDS', 2, 0, 3600);
const MAX_S = intFromEnv(process.env, 'BENCH_MAX_SECONDS', 60, MIN_S, 3600);
const TIMEOUT_S = intFromEnv(process.env, 'BENCH_TIMEOUT_SECONDS', 3600, 10, 86_400);
const UPSTREAM_KEY = 'sim-lifecycle-key';
const TENANT_KEY = 'lifecycle-tenant-key-0123456789abcdef';
const PREFIX = 'lifebench:';
const TERMINAL = new Set(['succeeded', 'failed', 'canceled', 'aborted']);
const passThrough = ['UPSTREAM_WATCH_READS_PER_MINUTE', 'WATCH_MIN_MS', 'WATCH_MAX_MS'];


async function readsOf(urls: string[]): Promise<number> {
  let total = 0;
  for (const url of urls) {
    const text = await (await fetch(`${url}/metrics`)).text();
    for (const m of text.matchAll(/^fgw_watch_reads_total\{[^}]*\} (\d+)/gm)) total += Number(m[1]);
  }
  return total;
}

async function main(): Promise<void> {
  const redis = await RedisServer.start();
  const sim = await startSimulatorProcess({ apiKey: UPSTREAM_KEY, stepMs: 1000, quiet: true });
  const dir = mkdtempSync(join(tmpdir(), 'fgw-lifebench-'));
  const tenantsFile = join(dir, 'tenants.json');
  writeFileSync(tenantsFile, JSON.stringify({ tenants: [{ id: 'bench', keys: [TENANT_KEY], rateLimit: { max: 10_000_000, timeWindow: '1 minute' } }] }));
  const env: Record<string, string> = { LOG_LEVEL: 'warn' };
  for (const k of passThrough) if (process.env[k]) env[k] = process.env[k]!;
  const gateways = await Promise.all([0, 1].map(() => startGatewayProcess({ upstreamUrl: sim.url, upstreamKey: UPSTREAM_KEY, tenantsFile, redisUrl: redis.url, prefix: PREFIX, env, quiet: true })));
  const urls = gateways.map((g) => g.url);

  // Every end is published on the prediction's channel, once, by the replica that settled it.
  const settledAt = new Map<string, number>();
  const sub = new Redis(redis.url);
  sub.on('pmessage', (_p: string, channel: string, message: string) => {
    const id = channel.slice(`${PREFIX}prediction:`.length);
    if ((TERMINAL.has(message) || message === 'expired') && !settledAt.has(id)) settledAt.set(id, Date.now());
  });
  await sub.psubscribe(`${PREFIX}prediction:*`);

  const pools = urls.map((u) => new Pool(u, { connections: 16 }));
  const ids: string[] = [];
  const t0 = Date.now();
  let next = 0;
  await Promise.all(
    Array.from({ length: 32 }, async (_, w) => {
      while (next < N) {
        const i = next++;
        const ms = Math.round((MIN_S + Math.random() * (MAX_S - MIN_S)) * 1000);
        const r = await pools[(i + w) % 2]!.request({
          method: 'POST',
          path: '/replicate/v1/models/black-forest-labs/flux-schnell/predictions',
          headers: { authorization: `Bearer ${TENANT_KEY}`, 'content-type': 'application/json' },
          body: JSON.stringify({ input: { prompt: `p${i}`, duration_ms: ms } }),
        });
        const body = (await r.body.json()) as { id: string };
        if (r.statusCode !== 201) throw new Error(`create ${i}: ${r.statusCode} ${JSON.stringify(body)}`);
        ids.push(body.id);
      }
    }),
  );
  const created = Date.now();
  console.log(`created ${N} predictions of ${MIN_S}-${MAX_S} s through 2 gateways in ${((created - t0) / 1000).toFixed(1)} s`);

  // Reads per minute, sampled every second: the total, and the most in any 60 s.
  const samples: { at: number; reads: number }[] = [{ at: Date.now(), reads: await readsOf(urls) }];
  while (settledAt.size < N && Date.now() - created < TIMEOUT_S * 1000) {
    await new Promise((r) => setTimeout(r, 1000));
    samples.push({ at: Date.now(), reads: await readsOf(urls) });
    const last = samples.at(-1)!;
    if (samples.length % 30 === 0) console.log(`  ${((last.at - created) / 1000).toFixed(0)} s: ${settledAt.size}/${N} settled, ${last.reads} watcher reads`);
  }
  const end = samples.at(-1)!;

  // completed_at from the simulator itself.
  const simPool = new Pool(new URL(sim.url).origin, { connections: 16 });
  const simPath = new URL(sim.url).pathname;
  const lags: number[] = [];
  let missing = 0;
  let k = 0;
  await Promise.all(
    Array.from({ length: 16 }, async () => {
      while (k < ids.length) {
        const id = ids[k++]!;
        const r = await simPool.request({ method: 'GET', path: `${simPath}/predictions/${id}`, headers: { authorization: `Bearer ${UPSTREAM_KEY}` } });
        const p = (await r.body.json()) as { completed_at?: string };
        const at = settledAt.get(id);
        if (at === undefined || !p.completed_at) missing++;
        else lags.push((at - Date.parse(p.completed_at)) / 1000);
      }
    }),
  );
  lags.sort((a, b) => a - b);
  let maxWindow = 0;
  for (let i = 0; i < samples.length; i++) {
    // The last sample at most 60 s after this one: a span of 59-60 s.
    let j = i;
    while (j + 1 < samples.length && samples[j + 1]!.at <= samples[i]!.at + 60_000) j++;
    maxWindow = Math.max(maxWindow, samples[j]!.reads - samples[i]!.reads);
  }
  const minutes = (end.at - samples[0]!.at) / 60_000;
  const budget = Number(process.env.UPSTREAM_WATCH_READS_PER_MINUTE ?? 1500);
  console.log(`settled ${settledAt.size}/${N} (${missing} without a settle or completed_at)`);
  console.log(`settlement lag: p50 ${quantile(lags, 0.5)?.toFixed(2)} s, p99 ${quantile(lags, 0.99)?.toFixed(2)} s, max ${lags.at(-1)!.toFixed(2)} s`);
  console.log(`watcher reads: ${end.reads - samples[0]!.reads} in ${minutes.toFixed(1)} min = ${((end.reads - samples[0]!.reads) / minutes).toFixed(0)}/min on average; most in any 60 s: ${maxWindow} (budget ${budget}/min)`);
  console.log(`reads per prediction: ${((end.reads - samples[0]!.reads) / N).toFixed(2)}`);

  await sub.quit();
  await Promise.all([...pools, simPool].map((p) => p.close()));
  await stopAllProcesses();
  await redis.destroy();
}

main().catch(async (err) => {
  console.error(err);
  await stopAllProcesses();
  process.exit(1);
});
