// `npm run soak`: 60 s of mixed traffic (creates, polls, cached GETs, lists) against an in-process gateway; the
// heap after a forced GC must grow by less than 10 %. Run once on Redis and once on the in-memory store, whose
// maps must stay within MEMORY_STORE_MAX_ENTRIES (2000 here, so that the warm-up fills them).
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import autocannon from 'autocannon';
import { pino } from 'pino';
import { buildApp } from '../src/app.js';
import { intFromEnv, loadConfig } from '../src/config.js';
import { startSimulatorProcess, stopAllProcesses } from '../test/support/processes.js';
import { RedisServer } from '../test/support/redis.js';

const SECONDS = intFromEnv(process.env, 'SOAK_SECONDS', 60, 1, 3600);
const UPSTREAM_KEY = 'soak-upstream-key-0000000000000';
const KEY = 'soak-tenant-key-00000000000000';
const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error('run with node --expose-gc (npm run soak does)');

async function heapAfterGc(): Promise<number> {
  for (let i = 0; i < 3; i++) {
    gc!();
    await sleep(100);
  }
  return process.memoryUsage().heapUsed;
}

async function soak(store: 'redis' | 'memory', simBase: string, redisUrl: string): Promise<boolean> {
  const dir = mkdtempSync(join(tmpdir(), 'fgw-soak-'));
  const tenantsFile = join(dir, 'tenants.json');
  writeFileSync(tenantsFile, JSON.stringify({ tenants: [{ id: 'soak', keys: [KEY], rateLimit: { max: 1e9 } }] }));
  const config = loadConfig({
    UPSTREAM_BASE_URL: simBase,
    UPSTREAM_API_KEY: UPSTREAM_KEY,
    TENANTS_FILE: tenantsFile,
    REDIS_URL: store === 'redis' ? redisUrl : undefined,
    REDIS_KEY_PREFIX: `soak:${Date.now()}:`,
    MEMORY_STORE_MAX_ENTRIES: '2000',
    LOG_LEVEL: 'info',
  });
  const app = await buildApp(config, { logger: pino({ level: 'info' }, pino.destination({ dest: '/dev/null', sync: false })) });
  await app.listen({ port: 0, host: '127.0.0.1' });
  const gw = `http://127.0.0.1:${(app.server.address() as { port: number }).port}`;
  for (let i = 0; !app.store.isReady(); i++) {
    if (i > 250) throw new Error(`the ${store} store did not become ready in 5 s`);
    await sleep(20);
  }
  const headers = { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' };
  const path = '/replicate/v1/models/black-forest-labs/flux-schnell/predictions';
  const post = async (body: object, extra = {}) => {
    const res = await fetch(gw + path, { method: 'POST', headers: { ...headers, ...extra }, body: JSON.stringify(body) });
    // Without its two predictions the soak would measure 404s.
    if (!res.ok) throw new Error(`soak set-up: create answered ${res.status}: ${await res.text()}`);
    return (await res.json()) as { id: string };
  };
  const done = await post({ input: { prompt: 'soak' } }, { prefer: 'wait=5' });
  const running = await post({ input: { prompt: 'soak', duration_ms: 3_600_000 } });

  const mixed = (seconds: number) =>
    autocannon({
      url: gw,
      connections: 16,
      duration: seconds,
      workers: 1,
      requests: [
        { method: 'POST', path, headers, body: JSON.stringify({ input: { prompt: 'soak' } }) },
        { method: 'GET', path: `/replicate/v1/predictions/${done.id}`, headers },
        { method: 'GET', path: `/replicate/v1/predictions/${running.id}`, headers },
        { method: 'GET', path: `/replicate/v1/predictions/${done.id}`, headers },
        { method: 'GET', path: '/replicate/v1/predictions', headers },
      ],
    });
  await mixed(10); // warm-up: JIT, pools, and the bounded maps filled to their caps
  const before = await heapAfterGc();
  const r = await mixed(SECONDS);
  const after = await heapAfterGc();
  await app.close();
  const growth = (after - before) / before;
  const ok = growth < 0.1 && r.errors === 0 && r.non2xx === 0;
  process.stdout.write(
    `${store.padEnd(6)} ${Math.round(r.requests.total)} requests in ${SECONDS} s (${r.non2xx} non-2xx${r.non2xx ? ` ${JSON.stringify(r.statusCodeStats)}` : ''}, ${r.errors} errors); ` +
      `heap after GC ${(before / 2 ** 20).toFixed(1)} MiB → ${(after / 2 ** 20).toFixed(1)} MiB: ${(growth * 100).toFixed(1)} % ${ok ? '(< 10 %: met)' : '(MISSED)'}\n`,
  );
  return ok;
}

let redis: RedisServer | undefined;
try {
  redis = await RedisServer.start();
  const sim = await startSimulatorProcess({ apiKey: UPSTREAM_KEY, stepMs: 500, inheritEnv: true });
  const simBase = sim.url;
  const results = [await soak('redis', simBase, redis.url), await soak('memory', simBase, redis.url)];
  process.exitCode = results.every(Boolean) ? 0 : 1;
} finally {
  await stopAllProcesses();
  // Also after a failure: a redis-server left running would load the machine for every later run.
  await redis?.destroy();
}
