// Real gateway processes (`node --import tsx src/server.ts`), as a replica would run in production: spawned with
// their own environment, waited on until /readyz answers, and stopped on cleanup. Their output is kept for the
// error message when one fails to start or dies.
import { type ChildProcess, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { inject } from 'vitest';
import { freePort } from './redis.js';
import type { SimHandle } from './stack.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

export interface GatewayProcess {
  url: string;
  pid: number;
  /** Everything the process wrote to stdout and stderr so far. */
  output(): string;
  stop(): Promise<void>;
}

export interface GatewayProcessOptions {
  sim: SimHandle;
  tenantsFile: string;
  /** Processes that should share state get the same prefix. */
  prefix?: string;
  /** Default: the run's Redis. */
  redisUrl?: string;
  env?: Record<string, string>;
  /** How long to wait for /readyz (default 20 s). */
  readyTimeoutMs?: number;
}

const running = new Set<ChildProcess>();

// A test that crashes must not leave gateways behind.
process.once('exit', () => {
  for (const p of running) p.kill('SIGKILL');
});

async function isReady(url: string): Promise<boolean> {
  try {
    const r = await fetch(`${url}/readyz`, { signal: AbortSignal.timeout(1000) });
    await r.arrayBuffer();
    return r.status === 200;
  } catch {
    return false;
  }
}

export async function startGatewayProcess(opts: GatewayProcessOptions): Promise<GatewayProcess> {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin',
    HOME: process.env.HOME ?? '/tmp',
    NODE_ENV: 'test',
    UPSTREAM_BASE_URL: opts.sim.url,
    UPSTREAM_API_KEY: opts.sim.apiKey,
    TENANTS_FILE: opts.tenantsFile,
    REDIS_URL: opts.redisUrl ?? inject('redisUrl'),
    REDIS_KEY_PREFIX: opts.prefix ?? `proc:${randomUUID()}:`,
    PORT: String(port),
    HOST: '127.0.0.1',
    LOG_LEVEL: 'warn',
    ...opts.env,
  };
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/server.ts'], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(child);
  let out = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (out += d));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.once('exit', () => running.delete(child));

  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(timer);
  };

  const until = Date.now() + (opts.readyTimeoutMs ?? 20_000);
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`gateway process exited (${child.exitCode ?? child.signalCode}) before it was ready:\n${out}`);
    }
    if (await isReady(url)) break;
    if (Date.now() > until) {
      await stop();
      throw new Error(`gateway process on ${url} was not ready in time:\n${out}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { url, pid: child.pid!, output: () => out, stop };
}

/** Stops every gateway process this file started and has not stopped yet. */
export async function stopAllGatewayProcesses(): Promise<void> {
  await Promise.all(
    [...running].map(
      (p) =>
        new Promise<void>((resolve) => {
          if (p.exitCode !== null || p.signalCode !== null) return resolve();
          p.once('exit', () => resolve());
          p.kill('SIGTERM');
          setTimeout(() => p.kill('SIGKILL'), 5000).unref();
        }),
    ),
  );
}
