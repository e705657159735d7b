// A real redis-server on a free port, started and stopped by the tests and benchmarks themselves.
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { freePort } from './processes.js';

/** Every Redis process started for tests and benchmarks: one that crashes must not leave them loading the machine. */
const running = new Set<ChildProcess>();
process.once('exit', () => {
  for (const p of running) p.kill('SIGKILL');
});

/** Kills `proc` when this process exits, however it ends, unless it has exited by then. */
export function killOnExit(proc: ChildProcess): ChildProcess {
  running.add(proc);
  proc.once('exit', () => running.delete(proc));
  return proc;
}

export class RedisServer {
  #proc: ChildProcess | undefined;
  readonly #dir = mkdtempSync(join(tmpdir(), 'fgw-redis-'));
  constructor(readonly port: number) {}

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  static async start(): Promise<RedisServer> {
    const s = new RedisServer(await freePort());
    await s.start();
    return s;
  }

  /** Starts (or restarts, on the same port and data directory, so AOF data survives). */
  async start(): Promise<void> {
    let spawnError: Error | undefined;
    this.#proc = spawn(
      'redis-server',
      ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'yes', '--dir', this.#dir],
      { stdio: 'ignore' },
    );
    killOnExit(this.#proc).once('error', (err) => (spawnError = err));
    const probe = new Redis(this.url, { lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0 });
    probe.on('error', () => {});
    for (let i = 0; i < 100; i++) {
      if (spawnError) {
        throw new Error(`cannot start redis-server (${spawnError.message}): install it (apt-get install redis-server) or set REDIS_URL`);
      }
      try {
        await probe.connect();
        await probe.ping();
        probe.disconnect();
        return;
      } catch {
        probe.disconnect();
        await sleep(50);
      }
    }
    throw new Error(`redis-server did not start on port ${this.port} (is redis-server installed?)`);
  }

  /** SIGSTOP: the server keeps its connections open but answers nothing, like a hung or black-holed Redis. */
  pause(): void {
    this.#proc?.kill('SIGSTOP');
  }

  resume(): void {
    this.#proc?.kill('SIGCONT');
  }

  async stop(): Promise<void> {
    const p = this.#proc;
    if (!p || p.exitCode !== null) return;
    const exited = new Promise((r) => p.once('exit', r));
    // SIGTERM: redis flushes its AOF first, as a real restart would.
    p.kill('SIGTERM');
    const timer = setTimeout(() => p.kill('SIGKILL'), 3000);
    await exited;
    clearTimeout(timer);
  }

  async destroy(): Promise<void> {
    await this.stop();
    rmSync(this.#dir, { recursive: true, force: true });
  }
}
