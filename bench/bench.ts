// `npm run bench`: the gateway's overhead as ratios to baselines measured in the same run on the same machine.
// Starts Redis, the simulator, a bare Fastify hello and the gateway as separate processes and loads each over
// loopback with wrk when it is installed (it costs the machine less CPU than the servers it loads), else autocannon.
// Bounded: 10 targets of 2 s warm-up and 7 s measured each, 90 s of load, plus start-up.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import autocannon from 'autocannon';
import { intFromEnv } from '../src/config.js';
import { type ServerProcess, answers, freePort, startGatewayProcess, startNodeServer, startSimulatorProcess, stopAllProcesses } from '../test/support/processes.js';
import { RedisServer } from '../test/support/redis.js';
import { buildBaseline, cpuSeconds, has, runBench } from './shared.js';

const DURATION = intFromEnv(process.env, 'BENCH_SECONDS', 7, 1, 60);
// What the slower upstream waits before each answer: a same-region round trip plus a little service time. Real
// FuhuAPI calls cross the internet and take longer, which only makes the gateway's share smaller.
const LATENCY_MS = intFromEnv(process.env, 'BENCH_UPSTREAM_LATENCY_MS', 20, 0, 10_000);
const CONNECTIONS = intFromEnv(process.env, 'BENCH_CONNECTIONS', 32, 1, 10_000);
const UPSTREAM_KEY = 'bench-upstream-key-000000000000';
const TENANT_KEY = 'bench-tenant-key-0000000000000';

interface Row {
  name: string;
  rps: number;
  p50: number;
  p99: number;
  errors: number;
  non2xx: number;
  /** CPU time the server under test spent per request: steadier than req/s on a shared, noisy machine. */
  cpuUs?: number;
}

const WRK = process.env.BENCH_LOADER !== 'autocannon' && has('wrk', ['--version']);

/** wrk's latency figures ("1.23ms", "850.00us", "1.02s") in milliseconds. */
function wrkMs(text: string, label: string): number {
  const m = new RegExp(`^\\s*${label}\\s+([\\d.]+)(us|ms|s)\\s*$`, 'm').exec(text);
  if (!m) return NaN;
  const n = Number(m[1]);
  return Math.round((m[2] === 'us' ? n / 1000 : m[2] === 's' ? n * 1000 : n) * 100) / 100;
}

function runWrk(opts: autocannon.Options, seconds = DURATION): Omit<Row, 'name'> {
  const lua = join(mkdtempSync(join(tmpdir(), 'fgw-wrk-')), 'req.lua');
  const headers = Object.entries((opts.headers ?? {}) as Record<string, string>)
    .map(([k, v]) => `wrk.headers[${JSON.stringify(k)}] = ${JSON.stringify(v)}`)
    .join('\n');
  writeFileSync(lua, `wrk.method = ${JSON.stringify(opts.method ?? 'GET')}\n${opts.body ? `wrk.body = ${JSON.stringify(opts.body)}\n` : ''}${headers}\n`);
  // One wrk thread leaves the other core to the servers under test.
  const out = execFileSync('wrk', ['-t1', `-c${CONNECTIONS}`, `-d${seconds}s`, '--latency', '-s', lua, String(opts.url)], { encoding: 'utf8' });
  const socketErrors = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  return {
    rps: Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1] ?? 0),
    p50: wrkMs(out, '50%'),
    p99: wrkMs(out, '99%'),
    errors: socketErrors ? socketErrors.slice(1).reduce((a, b) => a + Number(b), 0) : 0,
    non2xx: Number(/Non-2xx or 3xx responses: (\d+)/.exec(out)?.[1] ?? 0),
  };
}

const WARMUP_SECONDS = 2;

async function load(name: string, opts: autocannon.Options, server: ServerProcess): Promise<Row> {
  // A short unmeasured run first: JIT and connection set-up would otherwise land in the p99.
  if (WRK) runWrk(opts, WARMUP_SECONDS);
  else await autocannon({ connections: CONNECTIONS, ...opts, duration: WARMUP_SECONDS });
  const cpuBefore = cpuSeconds(server.pid);
  let row: Row;
  if (WRK) {
    row = { name, ...runWrk(opts) };
  } else {
    const r = await autocannon({ connections: CONNECTIONS, duration: DURATION, ...opts });
    row = { name, rps: r.requests.average, p50: r.latency.p50, p99: r.latency.p99, errors: r.errors + r.timeouts, non2xx: r.non2xx };
  }
  const cpuAfter = cpuSeconds(server.pid);
  if (cpuBefore !== undefined && cpuAfter !== undefined && row.rps > 0) row.cpuUs = Math.round(((cpuAfter - cpuBefore) * 1e6) / (row.rps * DURATION));
  process.stderr.write(`  ${name}: ${Math.round(row.rps)} req/s, p50 ${row.p50} ms, p99 ${row.p99} ms${row.cpuUs ? `, ${row.cpuUs} µs CPU/request` : ''}${row.non2xx ? `, ${row.non2xx} non-2xx` : ''}\n`);
  return row;
}

async function json(url: string, init: RequestInit): Promise<any> {
  // One retry: a pooled connection idle since start-up can meet the server's keep-alive timeout (72 s) mid-request.
  const res = await fetch(url, init).catch(() => fetch(url, init));
  if (!res.ok) throw new Error(`${init.method ?? 'GET'} ${url}: ${res.status} ${await res.text()}`);
  return res.json();
}

let ownRedis: RedisServer | undefined;

async function main(): Promise<void> {
  ownRedis = process.env.REDIS_URL ? undefined : await RedisServer.start();
  const redisUrl = process.env.REDIS_URL ?? ownRedis!.url;
  const dir = mkdtempSync(join(tmpdir(), 'fgw-bench-'));
  const tenantsFile = join(dir, 'tenants.json');
  writeFileSync(tenantsFile, JSON.stringify({ tenants: [{ id: 'bench', keys: [TENANT_KEY], rateLimit: { max: 1e9, timeWindow: '1 minute' } }] }));

  // Every process gets this one's environment too: gateway settings the script does not set reach both gateways.
  const helloPort = await freePort();
  const helloStarting = startNodeServer({
    args: ['--import', 'tsx', 'bench/hello.ts'],
    env: { ...process.env, PORT: String(helloPort) },
    url: `http://127.0.0.1:${helloPort}`,
    ready: (url) => answers(`${url}/`),
    quiet: true,
    what: 'bare Fastify hello',
  });
  // Two upstreams: one on loopback answering in microseconds (the harshest baseline for a gateway), and one that
  // waits LATENCY_MS before each answer, as a real upstream across a network does. Each gets its own gateway.
  const simulator = (latencyMs: number) =>
    startSimulatorProcess({ args: ['dist/simulator/main.js'], apiKey: UPSTREAM_KEY, stepMs: 1000, latencyMs, inheritEnv: true, quiet: true });
  // BENCH_GATEWAY runs another build (e.g. an older commit's dist/server.js) for before/after comparisons; a relative
  // path is taken from the current directory. The same V8 flag as `npm start` and the Docker image (see the Dockerfile).
  const builds = [{ name: process.env.BENCH_GATEWAY ? 'BENCH_GATEWAY' : 'this build', entry: resolve(process.env.BENCH_GATEWAY ?? 'dist/server.js') }];
  if (process.env.BENCH_BASELINE) builds.push(buildBaseline(process.env.BENCH_BASELINE));
  const gateway = (upstream: ServerProcess, name: string, entry: string) =>
    startGatewayProcess({
      args: ['--max-semi-space-size=32', entry],
      upstreamUrl: upstream.url,
      upstreamKey: UPSTREAM_KEY,
      tenantsFile,
      redisUrl,
      prefix: `bench:${Date.now()}:${name}:`,
      env: { LOG_LEVEL: process.env.BENCH_LOG_LEVEL ?? 'info', NODE_ENV: 'production' },
      inheritEnv: true,
      quiet: true,
    });
  const [helloProc, simProc, slowSimProc] = await Promise.all([helloStarting, simulator(0), simulator(LATENCY_MS)]);
  // Each build gets its own pair of gateways (own key prefix), in front of the same two upstreams.
  const pairs = await Promise.all(builds.map(async (b, i) => {
    const [fastP, slowP] = await Promise.all([gateway(simProc, `fast${i}`, b.entry), gateway(slowSimProc, `slow${i}`, b.entry)]);
    return { ...b, fastP, slowP };
  }));
  const simBase = simProc.url;
  const slowSimBase = slowSimProc.url;

  const up = { authorization: `Bearer ${UPSTREAM_KEY}`, 'content-type': 'application/json' };
  const mine = { authorization: `Bearer ${TENANT_KEY}`, 'content-type': 'application/json' };
  const createBody = JSON.stringify({ input: { prompt: 'bench' } });
  const longBody = JSON.stringify({ input: { prompt: 'bench', duration_ms: 3_600_000 } });
  const modelPath = '/replicate/v1/models/black-forest-labs/flux-schnell/predictions';
  const simModelPath = '/models/black-forest-labs/flux-schnell/predictions';

  // Each prediction is made right before its phase: the simulator keeps at most 100 000, and the create phases
  // push older ones out.
  const running = (base: string, headers: Record<string, string>, path: string) =>
    json(`${base}${path}`, { method: 'POST', headers, body: longBody });

  process.stderr.write(`load: ${WRK ? 'wrk (1 thread)' : 'autocannon'}, ${CONNECTIONS} connections, ${WARMUP_SECONDS} s warm-up + ${DURATION} s per target\n`);
  const hello = await load('bare Fastify hello', { url: `${helloProc.url}/` }, helloProc);
  const tag = (b: { name: string }) => (builds.length > 1 ? ` [${b.name}]` : '');
  const cachedOf = async (b: (typeof pairs)[number]) => {
    const gw = b.fastP.url;
    const done = await json(`${gw}${modelPath}`, { method: 'POST', headers: { ...mine, prefer: 'wait=5' }, body: createBody });
    await json(`${gw}/replicate/v1/predictions/${done.id}`, { headers: mine });
    return load(`gateway${tag(b)}: GET cached terminal`, { url: `${gw}/replicate/v1/predictions/${done.id}`, headers: mine }, b.fastP);
  };
  const cachedRows = [];
  for (const b of pairs) cachedRows.push(await cachedOf(b));

  // One upstream after the other: direct GET, direct create, then each build's gateway poll and create.
  async function against(label: string, sim: string, simP: ServerProcess, gwOf: (b: (typeof pairs)[number]) => ServerProcess) {
    const simRunning = await running(sim, up, simModelPath);
    const simGet = await load(`upstream ${label} direct: GET running`, { url: `${sim}/predictions/${simRunning.id}`, headers: up }, simP);
    const simCreate = await load(`upstream ${label} direct: create`, { url: `${sim}${simModelPath}`, method: 'POST', headers: up, body: createBody }, simP);
    const perBuild = [];
    for (const b of pairs) {
      const gwP = gwOf(b);
      const gwRunning = await running(gwP.url, mine, modelPath);
      const poll = await load(`gateway${tag(b)} → ${label}: poll running`, { url: `${gwP.url}/replicate/v1/predictions/${gwRunning.id}`, headers: mine }, gwP);
      const create = await load(`gateway${tag(b)} → ${label}: create`, { url: `${gwP.url}${modelPath}`, method: 'POST', headers: mine, body: createBody }, gwP);
      perBuild.push({ poll, create });
    }
    return { simGet, simCreate, perBuild };
  }
  const fastAll = await against('on loopback', simBase, simProc, (b) => b.fastP);
  const slowAll = await against(`+${LATENCY_MS} ms`, slowSimBase, slowSimProc, (b) => b.slowP);
  const fast = { ...fastAll, ...fastAll.perBuild[0]! };
  const slow = { ...slowAll, ...slowAll.perBuild[0]! };
  const cached = cachedRows[0]!;

  const rows = [
    hello, ...cachedRows,
    fast.simGet, fast.simCreate, ...fastAll.perBuild.flatMap((r) => [r.poll, r.create]),
    slow.simGet, slow.simCreate, ...slowAll.perBuild.flatMap((r) => [r.poll, r.create]),
  ];
  const fmt = (n: number | string, w: number) => String(n).padStart(w);
  const lines = [
    `machine: ${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, Node ${process.versions.node}, ${WRK ? 'wrk' : 'autocannon'}, ${CONNECTIONS} connections, ${DURATION} s per target`,
    '',
    '| target | req/s | p50 ms | p99 ms | CPU µs/request (server) | errors |',
    '|---|---:|---:|---:|---:|---:|',
    ...rows.map((r) => `| ${r.name} | ${fmt(Math.round(r.rps), 6)} | ${fmt(r.p50, 4)} | ${fmt(r.p99, 4)} | ${fmt(r.cpuUs ?? '-', 4)} | ${r.errors + r.non2xx} |`),
    '',
    '| ratio | value | target | |',
    '|---|---:|---:|---|',
  ];
  const ratio = (name: string, value: number, target: number) =>
    lines.push(`| ${name} | ${value.toFixed(2)} | ≥ ${target.toFixed(2)} | ${value >= target ? 'met' : 'MISSED'} |`);
  ratio('cached GET / bare hello', cached.rps / hello.rps, 0.5);
  // The same comparison in CPU per request (baseline over gateway, so higher is better as with req/s).
  if (hello.cpuUs && cached.cpuUs) lines.push(`| by CPU: bare hello / cached GET | ${(hello.cpuUs / cached.cpuUs).toFixed(2)} | (≥ 0.50) | ${hello.cpuUs} µs vs ${cached.cpuUs} µs |`);
  lines.push(`| p99 of cached GET (ms, ${CONNECTIONS} connections) | ${cached.p99} | ≤ 5 | ${cached.p99 <= 5 ? 'met' : 'MISSED'} |`);
  for (const [label, r] of [['upstream on loopback', fast], [`upstream +${LATENCY_MS} ms`, slow]] as const) {
    ratio(`${label}: create / direct create`, r.create.rps / r.simCreate.rps, 0.5);
    ratio(`${label}: poll running / direct GET`, r.poll.rps / r.simGet.rps, 1);
  }
  if (fast.simCreate.cpuUs && fast.create.cpuUs) {
    lines.push(`| by CPU: upstream create / gateway create (loopback) | ${(fast.simCreate.cpuUs / fast.create.cpuUs).toFixed(2)} | (≥ 0.50) | ${fast.simCreate.cpuUs} µs vs ${fast.create.cpuUs} µs |`);
  }
  if (pairs.length > 1) {
    // The same three ratios for the baseline, from this same run: the current build must not fall below it.
    lines.push('', `| ratio, this run | this build | ${pairs[1]!.name} | not below it |`, '|---|---:|---:|---|');
    const vs = (name: string, now: number, then: number) => lines.push(`| ${name} | ${now.toFixed(2)} | ${then.toFixed(2)} | ${now >= then ? 'yes' : 'NO'} |`);
    vs('cached GET / bare hello', cached.rps / hello.rps, cachedRows[1]!.rps / hello.rps);
    vs('loopback: poll / direct GET', fast.poll.rps / fast.simGet.rps, fastAll.perBuild[1]!.poll.rps / fast.simGet.rps);
    vs('loopback: create / direct create', fast.create.rps / fast.simCreate.rps, fastAll.perBuild[1]!.create.rps / fast.simCreate.rps);
    vs(`+${LATENCY_MS} ms: poll / direct GET`, slow.poll.rps / slow.simGet.rps, slowAll.perBuild[1]!.poll.rps / slow.simGet.rps);
    vs(`+${LATENCY_MS} ms: create / direct create`, slow.create.rps / slow.simCreate.rps, slowAll.perBuild[1]!.create.rps / slow.simCreate.rps);
    if (cached.cpuUs && cachedRows[1]!.cpuUs) lines.push(`| CPU µs per cached GET / poll / create (loopback) | ${cached.cpuUs} / ${fast.poll.cpuUs} / ${fast.create.cpuUs} | ${cachedRows[1]!.cpuUs} / ${fastAll.perBuild[1]!.poll.cpuUs} / ${fastAll.perBuild[1]!.create.cpuUs} | |`);
  }
  const failed = rows.filter((r) => r.errors > 0 || r.non2xx > 0);
  if (failed.length) lines.push('', `errors in: ${failed.map((r) => r.name).join(', ')}`);
  process.stdout.write(`${lines.join('\n')}\n`);
}

try {
  await runBench('bench', main);
} finally {
  await stopAllProcesses();
  // Also when a phase failed: a redis-server left running would load the machine for every later run.
  await ownRedis?.destroy();
}
