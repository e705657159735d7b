// `BENCH_BASELINE=<commit> npm run bench:ab` (or a path to another build's dist/server.js): this build against an older commit, in CPU per request of the gateway's
// main thread, over interleaved rounds. `npm run bench` gives the issue's ratios, but one 7 s run per target moves
// by 10 % or more on a shared 2-vCPU machine: too coarse for a step that saves 2 µs of 45. Here, each round starts
// a fresh gateway of each build in turn in front of the same simulator and Redis, pinned to its own core when
// `taskset` and two CPUs are there (the simulator, Redis and wrk share the others), and the median over the rounds
// is printed with the range. Two copies of one build came out 0.4 µs apart over 3 rounds, but 3 rounds can still
// mislead (one such run showed the rate-limit step of f8d82e5 as -0.4 %; 7 rounds showed -7.3 %): take 5 or more.
//
// BENCH_AB_TARGETS (cached,poll,create), BENCH_ROUNDS (5), BENCH_SECONDS (5 measured, after 2 of warm-up),
// BENCH_AB_CPU=process to count every thread of the gateway (libuv's pool, GC helpers) instead of the main one.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { intFromEnv } from '../src/config.js';
import { startGatewayProcess, startSimulatorProcess, stopAllProcesses } from '../test/support/processes.js';
import { RedisServer } from '../test/support/redis.js';
import { BenchError, buildBaseline, cpuSeconds, has, runBench } from './shared.js';

const ROUNDS = intFromEnv(process.env, 'BENCH_ROUNDS', 5, 1, 50);
const SECONDS = intFromEnv(process.env, 'BENCH_SECONDS', 5, 1, 60);
const TARGETS = (process.env.BENCH_AB_TARGETS ?? 'cached,poll,create').split(',').map((t) => t.trim());
const UPSTREAM_KEY = 'bench-upstream-key-000000000000';
const TENANT_KEY = 'bench-tenant-key-0000000000000';
const MODEL_PATH = '/replicate/v1/models/black-forest-labs/flux-schnell/predictions';

const CPUS = cpus().length;
const PIN = CPUS >= 2 && has('taskset', ['-V']);
const GATEWAY_CPU = String(CPUS - 1);
const OTHER_CPUS = CPUS > 2 ? `0-${CPUS - 2}` : '0';

/** Every thread of a running process onto `cpus` (best effort: an unpinned run is only noisier). */
function pin(pid: number | string, cpuList: string): void {
  if (!PIN) return;
  try {
    execFileSync('taskset', ['-apc', cpuList, String(pid)], { stdio: 'ignore' });
  } catch {
    // The process may have exited, or taskset may be refused: measure anyway.
  }
}

const WHOLE_PROCESS = process.env.BENCH_AB_CPU === 'process';

function wrk(lua: string, url: string, seconds: number): number {
  const args = ['-t1', '-c32', `-d${seconds}s`, '-s', lua, url];
  const out = PIN ? execFileSync('taskset', ['-c', OTHER_CPUS, 'wrk', ...args], { encoding: 'utf8' }) : execFileSync('wrk', args, { encoding: 'utf8' });
  const errors = /Non-2xx or 3xx responses: (\d+)/.exec(out);
  if (errors) throw new Error(`${url}: ${errors[1]} answers were not 2xx`);
  return Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1] ?? 0);
}

async function main(): Promise<void> {
  if (!process.env.BENCH_BASELINE) throw new BenchError('set BENCH_BASELINE=<commit> (for example HEAD~1): the build to compare this one with');
  if (!has('wrk', ['--version'])) throw new BenchError('wrk is not installed (apt-get install wrk)');
  const unknown = TARGETS.filter((t) => !['cached', 'poll', 'create'].includes(t));
  if (unknown.length) throw new BenchError(`BENCH_AB_TARGETS: ${unknown.join(', ')} is not a target (cached, poll, create)`);
  // A path to a built server.js (a throwaway build) is taken as it is; anything else names a commit.
  const given = process.env.BENCH_BASELINE;
  if (given.endsWith('.js') && !existsSync(given)) throw new BenchError(`BENCH_BASELINE=${given}: no such file`);
  const baseline = given.endsWith('.js') ? { name: given, entry: resolve(given) } : buildBaseline(given);
  const builds = [{ name: 'this build', entry: resolve('dist/server.js') }, baseline];

  const redis = await RedisServer.start();
  try {
    pin(execFileSync('pgrep', ['-f', `redis-server 127.0.0.1:${redis.port}`], { encoding: 'utf8' }).trim().split('\n')[0]!, OTHER_CPUS);
    const dir = mkdtempSync(join(tmpdir(), 'fgw-bench-ab-'));
    const tenantsFile = join(dir, 'tenants.json');
    writeFileSync(tenantsFile, JSON.stringify({ tenants: [{ id: 'bench', keys: [TENANT_KEY], rateLimit: { max: 1e9, timeWindow: '1 minute' } }] }));
    const sim = await startSimulatorProcess({ args: ['dist/simulator/main.js'], apiKey: UPSTREAM_KEY, stepMs: 1000, latencyMs: 0, inheritEnv: true, quiet: true });
    pin(sim.pid, OTHER_CPUS);
    process.stderr.write(`${ROUNDS} rounds of ${TARGETS.join(', ')}; ${PIN ? `gateway on CPU ${GATEWAY_CPU}, the rest on ${OTHER_CPUS}` : 'not pinned (no taskset or one CPU)'}\n`);

    const headers = { authorization: `Bearer ${TENANT_KEY}`, 'content-type': 'application/json' };
    const results = new Map<string, number[]>();
    for (let round = 0; round < ROUNDS; round++) {
      for (const target of TARGETS) {
        for (const build of builds) {
          const gw = await startGatewayProcess({
            args: ['--max-semi-space-size=32', build.entry],
            upstreamUrl: sim.url,
            upstreamKey: UPSTREAM_KEY,
            tenantsFile,
            redisUrl: redis.url,
            prefix: `ab:${Date.now()}:${round}:`,
            env: { LOG_LEVEL: 'info', NODE_ENV: 'production' },
            inheritEnv: true,
            quiet: true,
          });
          try {
            pin(gw.pid, GATEWAY_CPU);
            const create = (input: Record<string, unknown>, extra: Record<string, string> = {}) =>
              fetch(`${gw.url}${MODEL_PATH}`, { method: 'POST', headers: { ...headers, ...extra }, body: JSON.stringify({ input }) }).then((r) => r.json() as Promise<{ id: string }>);
            let url: string;
            let request = '';
            if (target === 'cached') url = `${gw.url}/replicate/v1/predictions/${(await create({ prompt: 'bench' }, { prefer: 'wait=5' })).id}`;
            else if (target === 'poll') url = `${gw.url}/replicate/v1/predictions/${(await create({ prompt: 'bench', duration_ms: 3_600_000 })).id}`;
            else if (target === 'create') {
              url = `${gw.url}${MODEL_PATH}`;
              request = `wrk.method = "POST"\nwrk.body = ${JSON.stringify(JSON.stringify({ input: { prompt: 'bench' } }))}\n`;
            } else throw new Error(`unknown target ${target}`);
            const lua = join(dir, 'request.lua');
            writeFileSync(lua, `${request}wrk.headers["authorization"] = "Bearer ${TENANT_KEY}"\nwrk.headers["content-type"] = "application/json"\n`);
            wrk(lua, url, 2);
            const cpu = () => cpuSeconds(gw.pid, WHOLE_PROCESS ? undefined : gw.pid) ?? NaN;
            const before = cpu();
            const rps = wrk(lua, url, SECONDS);
            const us = ((cpu() - before) * 1e6) / (rps * SECONDS);
            const key = `${target}\t${build.name}`;
            results.set(key, [...(results.get(key) ?? []), us]);
            process.stderr.write(`  round ${round + 1}, ${target}, ${build.name}: ${Math.round(rps)} req/s, ${us.toFixed(1)} µs\n`);
          } finally {
            await gw.stop();
          }
        }
      }
    }

    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    const shown = (xs: number[]) => `${median(xs).toFixed(1)} (${Math.min(...xs).toFixed(1)}–${Math.max(...xs).toFixed(1)})`;
    const lines = [
      `machine: ${CPUS} × ${cpus()[0]?.model ?? 'cpu'}, Node ${process.versions.node}, wrk, 32 connections, ${ROUNDS} rounds of ${SECONDS} s, ${PIN ? 'gateway pinned to its own core' : 'not pinned'}`,
      '',
      `| gateway ${WHOLE_PROCESS ? 'process' : 'main-thread'} CPU µs per request, median (range) | this build | ${builds[1]!.name} | change |`,
      '|---|---:|---:|---:|',
    ];
    for (const target of TARGETS) {
      const now = results.get(`${target}\tthis build`)!;
      const then = results.get(`${target}\t${builds[1]!.name}`)!;
      const change = (median(now) / median(then) - 1) * 100;
      lines.push(`| ${target} (upstream on loopback) | ${shown(now)} | ${shown(then)} | ${change >= 0 ? '+' : ''}${change.toFixed(1)} % |`);
    }
    process.stdout.write(`${lines.join('\n')}\n`);
  } finally {
    await stopAllProcesses();
    await redis.destroy();
  }
}

await runBench('bench:ab', main);
