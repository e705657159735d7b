// `npm run bench:redis`: what each Redis mode costs in latency. One gateway process in front of the simulator on
// loopback, on one redis-server, on a primary + replica behind three sentinels (with and without
// REDIS_WAIT_REPLICAS=1), and on a 3-master Cluster: cached GETs and creates one at a time (latency, to the
// microsecond) and with autocannon at BENCH_CONNECTIONS (16; throughput), BENCH_SECONDS (3) each after 1 s warm-up,
// BENCH_ROUNDS (3) rounds through all modes; each figure is the median of its rounds.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import autocannon from 'autocannon';
import { Pool } from 'undici';
import { intFromEnv } from '../src/config.js';
import { startGatewayProcess, startSimulatorProcess, stopAllProcesses } from '../test/support/processes.js';
import { RedisServer } from '../test/support/redis.js';
import { RedisCluster, RedisSentinelGroup, startAll } from '../test/support/redis-topologies.js';

const SECONDS = intFromEnv(process.env, 'BENCH_SECONDS', 3, 1, 600);
const ROUNDS = intFromEnv(process.env, 'BENCH_ROUNDS', 3, 1, 100);
const CONNECTIONS = intFromEnv(process.env, 'BENCH_CONNECTIONS', 16, 1, 1024);
const UPSTREAM_KEY = 'sim-bench-key';
const TENANT_KEY = 'bench-tenant-key-0123456789abcdef';
const MODEL = '/replicate/v1/models/black-forest-labs/flux-schnell/predictions';
const headers = { authorization: `Bearer ${TENANT_KEY}`, 'content-type': 'application/json' };

interface Row {
  mode: string;
  target: string;
  connections: number;
  rps: number;
  p50: number;
  p99: number;
}

/** One request at a time for SECONDS: percentiles to a microsecond (autocannon rounds to whole milliseconds). */
async function sequential(opts: autocannon.Options): Promise<Omit<Row, 'mode' | 'target'>> {
  const pool = new Pool(new URL(opts.url as string).origin, { connections: 1 });
  const { pathname } = new URL(opts.url as string);
  const once = async () => {
    const r = await pool.request({ path: pathname, method: (opts.method ?? 'GET') as 'GET' | 'POST', headers: opts.headers, body: opts.body as string | undefined });
    await r.body.text();
    if (r.statusCode >= 300) throw new Error(`${opts.url}: ${r.statusCode}`);
  };
  for (const end = Date.now() + 1000; Date.now() < end; ) await once();
  const times: number[] = [];
  for (const end = Date.now() + SECONDS * 1000; Date.now() < end; ) {
    const t = performance.now();
    await once();
    times.push(performance.now() - t);
  }
  await pool.close();
  times.sort((a, b) => a - b);
  const at = (q: number) => Math.round(times[Math.min(times.length - 1, Math.floor(q * times.length))]! * 1000) / 1000;
  return { connections: 1, rps: Math.round(times.length / SECONDS), p50: at(0.5), p99: at(0.99) };
}

async function measure(opts: autocannon.Options, connections: number): Promise<Omit<Row, 'mode' | 'target'>> {
  if (connections === 1) return sequential(opts);
  await autocannon({ ...opts, connections, duration: 1 });
  const r = await autocannon({ ...opts, connections, duration: SECONDS });
  if (r.non2xx || r.errors) throw new Error(`${opts.url}: ${r.non2xx} non-2xx answers, ${r.errors} errors`);
  return { connections, rps: Math.round(r.requests.average), p50: r.latency.p50, p99: r.latency.p99 };
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'fgw-bench-redis-'));
  const tenantsFile = join(dir, 'tenants.json');
  writeFileSync(tenantsFile, JSON.stringify({ tenants: [{ id: 'bench', keys: [TENANT_KEY], rateLimit: { max: 1e9, timeWindow: '1 minute' } }] }));
  const sim = await startSimulatorProcess({ apiKey: UPSTREAM_KEY, stepMs: 50, quiet: true });
  const [single, group, cluster] = await startAll<[RedisServer, RedisSentinelGroup, RedisCluster]>(
    [() => RedisServer.start(), () => RedisSentinelGroup.start(), () => RedisCluster.start()],
    async (s) => (s as { destroy(): Promise<void> }).destroy(),
  ).catch(async (err) => {
    await stopAllProcesses();
    throw err;
  });
  const modes: [string, Record<string, string>, string[]?][] = [
    ['one server', { REDIS_URL: single.url }],
    ['sentinel', { REDIS_SENTINELS: group.sentinels, REDIS_SENTINEL_NAME: group.name }],
    ['sentinel, WAIT 1', { REDIS_SENTINELS: group.sentinels, REDIS_SENTINEL_NAME: group.name, REDIS_WAIT_REPLICAS: '1' }],
    ['cluster (3 masters)', { REDIS_CLUSTER_NODES: cluster.nodes }],
  ];
  // BENCH_GATEWAY: another checkout's src/server.ts (e.g. before Cluster support) on the one server, in the same rounds.
  if (process.env.BENCH_GATEWAY) modes.unshift([`one server, ${process.env.BENCH_GATEWAY}`, { REDIS_URL: single.url }, ['--import', 'tsx', resolve(process.env.BENCH_GATEWAY)]]);
  const rows: Row[] = [];
  try {
    // Every mode's gateway stays up, and the rounds go through the modes in turn: the machine's noise (it is shared)
    // then falls on every mode alike, and each figure is the median of its rounds.
    const gateways: { mode: string; targets: [string, autocannon.Options][] }[] = [];
    for (const [mode, env, args] of modes) {
      const gw = await startGatewayProcess({ args, upstreamUrl: sim.url, upstreamKey: UPSTREAM_KEY, tenantsFile, env: { LOG_LEVEL: 'warn', NODE_ENV: 'production', ...env }, quiet: true });
      // A terminal prediction to GET (cached), then creates.
      const created = (await (await fetch(`${gw.url}${MODEL}`, { method: 'POST', headers, body: JSON.stringify({ input: { prompt: 'b' } }) })).json()) as { id: string };
      for (let i = 0; i < 100; i++) {
        const p = (await (await fetch(`${gw.url}/replicate/v1/predictions/${created.id}`, { headers })).json()) as { status: string };
        if (p.status === 'succeeded') break;
        await new Promise((r) => setTimeout(r, 50));
      }
      gateways.push({
        mode,
        targets: [
          ['cached GET', { url: `${gw.url}/replicate/v1/predictions/${created.id}`, headers }],
          ['create', { url: `${gw.url}${MODEL}`, method: 'POST', headers, body: JSON.stringify({ input: { prompt: 'bench' } }) }],
        ],
      });
    }
    const runs = new Map<string, Omit<Row, 'mode' | 'target'>[]>();
    for (let round = 1; round <= ROUNDS; round++) {
      for (const { mode, targets } of gateways) {
        for (const [target, opts] of targets) {
          for (const c of [1, CONNECTIONS]) {
            const r = await measure(opts, c);
            const k = `${mode}\t${target}\t${c}`;
            runs.set(k, [...(runs.get(k) ?? []), r]);
            process.stderr.write(`round ${round}: ${mode} / ${target} / ${c} conn: ${r.rps} req/s, p50 ${r.p50} ms, p99 ${r.p99} ms\n`);
          }
        }
      }
    }
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    for (const [k, rs] of runs) {
      const [mode, target] = k.split('\t') as [string, string];
      rows.push({ mode, target, connections: rs[0]!.connections, rps: median(rs.map((r) => r.rps)), p50: median(rs.map((r) => r.p50)), p99: median(rs.map((r) => r.p99)) });
    }
  } finally {
    await stopAllProcesses();
    await Promise.all([single.destroy(), group.destroy(), cluster.destroy()]);
  }
  process.stdout.write(`machine: ${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, Node ${process.versions.node}, 1 connection: undici, sequential; ${CONNECTIONS}: autocannon; ${SECONDS} s per target, median of ${ROUNDS} rounds\n\n`);
  process.stdout.write('| mode | target | connections | req/s | p50 ms | p99 ms |\n|---|---|---:|---:|---:|---:|\n');
  for (const r of rows) process.stdout.write(`| ${r.mode} | ${r.target} | ${r.connections} | ${r.rps} | ${r.p50} | ${r.p99} |\n`);
}

main().catch((err: Error) => {
  process.stderr.write(`bench:redis: ${err.stack ?? err.message}\n`);
  process.exit(1);
});
