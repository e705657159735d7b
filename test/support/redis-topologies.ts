// Real Redis topologies on loopback for the tests and the benchmark: a 3-master Cluster, and a primary with one
// replica watched by three redis-sentinel processes. Each lives in a temp directory and is torn down with it.
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { freePort } from './processes.js';
import { killOnExit } from './redis.js';

const probe = (port: number) => {
  const c = new Redis({ port, host: '127.0.0.1', lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0, enableOfflineQueue: false });
  c.on('error', () => {});
  return c;
};

async function until<T>(what: string, timeoutMs: number, check: () => Promise<T | undefined>): Promise<T> {
  const end = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < end) {
    try {
      const v = await check();
      if (v !== undefined) return v;
    } catch (err) {
      last = err;
    }
    await sleep(100);
  }
  throw new Error(`timed out waiting for ${what}${last instanceof Error ? ` (${last.message})` : ''}`);
}

/** Runs one command on a fresh connection and closes it. */
async function ask(port: number, ...args: string[]): Promise<unknown> {
  const c = probe(port);
  try {
    await c.connect();
    return await c.call(args[0]!, ...args.slice(1));
  } finally {
    c.disconnect();
  }
}

class Node {
  proc: ChildProcess | undefined;
  spawnError: Error | undefined;
  constructor(
    readonly port: number,
    readonly bin: string,
    readonly args: string[],
  ) {}

  start(): void {
    this.proc = killOnExit(spawn(this.bin, this.args, { stdio: 'ignore' }));
    this.proc.once('error', (err) => (this.spawnError = err));
  }

  async up(): Promise<void> {
    await until(`${this.bin} on port ${this.port}`, 10_000, async () => {
      if (this.spawnError) throw new Error(`cannot start ${this.bin} (${this.spawnError.message}): run scripts/setup.sh (apt-get install redis-server redis-sentinel)`);
      return (await ask(this.port, 'PING')) === 'PONG' ? true : undefined;
    });
  }

  /** SIGKILL: the process is gone at once, as a crashed machine would be. */
  async kill(): Promise<void> {
    const p = this.proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const exited = new Promise((r) => p.once('exit', r));
    p.kill('SIGKILL');
    await exited;
  }
}

/** Starts servers side by side; if one fails, the others are torn down before the error goes on (none is left running). */
export async function startAll<T extends readonly unknown[]>(starts: { [K in keyof T]: () => Promise<T[K]> }, destroy: (started: unknown) => Promise<void>): Promise<T> {
  const settled = await Promise.allSettled(starts.map((start) => start()));
  const failed = settled.find((r) => r.status === 'rejected');
  if (failed) {
    await Promise.all(settled.map((r) => (r.status === 'fulfilled' ? destroy(r.value) : undefined)));
    throw failed.reason;
  }
  return settled.map((r) => (r as PromiseFulfilledResult<unknown>).value) as unknown as T;
}

/** A free port can be taken by someone else before the server binds it: start again on new ports, twice at most. */
async function withRetries<T>(start: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await start();
    } catch (err) {
      if (attempt === 3 || /cannot start/.test((err as Error).message)) throw err;
    }
  }
}

/** Free ports, none twice: the OS may hand the same just-released port to two asks in a row. */
async function distinctPorts(n: number): Promise<number[]> {
  const ports = new Set<number>();
  while (ports.size < n) ports.add(await freePort());
  return [...ports];
}

const serverArgs = (port: number, dir: string, extra: string[] = []) => ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, ...extra];

/** Three masters, no replicas, every slot assigned: `nodes` is the REDIS_CLUSTER_NODES value. */
export class RedisCluster {
  readonly #dir = mkdtempSync(join(tmpdir(), 'fgw-cluster-'));
  readonly #nodes: Node[] = [];

  get nodes(): string {
    return this.#nodes.map((n) => `127.0.0.1:${n.port}`).join(',');
  }

  static async start(masters = 3): Promise<RedisCluster> {
    return withRetries(() => RedisCluster.#start(masters));
  }

  static async #start(masters: number): Promise<RedisCluster> {
    const c = new RedisCluster();
    const ports = await distinctPorts(2 * masters);
    for (let i = 0; i < masters; i++) {
      // cluster-port (Redis 7): the bus on a free port of its own, not port + 10000.
      const [port, bus] = [ports[2 * i]!, ports[2 * i + 1]!];
      c.#nodes.push(new Node(port, 'redis-server', serverArgs(port, c.#dir, ['--cluster-enabled', 'yes', '--cluster-config-file', join(c.#dir, `nodes-${port}.conf`), '--cluster-port', String(bus), '--cluster-node-timeout', '3000'])));
    }
    try {
      for (const n of c.#nodes) n.start();
      await Promise.all(c.#nodes.map((n) => n.up()));
      await new Promise<void>((resolve, reject) => {
        const cli = spawn('redis-cli', ['--cluster', 'create', ...c.#nodes.map((n) => `127.0.0.1:${n.port}`), '--cluster-replicas', '0', '--cluster-yes'], { stdio: 'ignore' });
        cli.once('error', reject);
        cli.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`redis-cli --cluster create exited ${code}`))));
      });
      for (const n of c.#nodes) {
        await until('cluster_state:ok', 20_000, async () => (/cluster_state:ok/.test(String(await ask(n.port, 'CLUSTER', 'INFO'))) ? true : undefined));
      }
    } catch (err) {
      await c.destroy();
      throw err;
    }
    return c;
  }

  async destroy(): Promise<void> {
    await Promise.all(this.#nodes.map((n) => n.kill()));
    rmSync(this.#dir, { recursive: true, force: true });
  }
}

/** A primary, one replica and three sentinels (quorum 2) monitoring it as `name`. */
export class RedisSentinelGroup {
  readonly name = 'mymaster';
  readonly #dir = mkdtempSync(join(tmpdir(), 'fgw-sentinel-'));
  #primary!: Node;
  #replica!: Node;
  readonly #sentinels: Node[] = [];

  /** The REDIS_SENTINELS value. */
  get sentinels(): string {
    return this.#sentinels.map((n) => `127.0.0.1:${n.port}`).join(',');
  }

  get primaryPort(): number {
    return this.#primary.port;
  }

  get replicaPort(): number {
    return this.#replica.port;
  }

  static async start(): Promise<RedisSentinelGroup> {
    return withRetries(() => RedisSentinelGroup.#start());
  }

  static async #start(): Promise<RedisSentinelGroup> {
    const g = new RedisSentinelGroup();
    const ports = await distinctPorts(5);
    const [p, r] = [ports[0]!, ports[1]!];
    g.#primary = new Node(p, 'redis-server', serverArgs(p, g.#dir, ['--dbfilename', `dump-${p}.rdb`]));
    g.#replica = new Node(r, 'redis-server', serverArgs(r, g.#dir, ['--dbfilename', `dump-${r}.rdb`, '--replicaof', '127.0.0.1', String(p)]));
    for (let i = 0; i < 3; i++) {
      const port = ports[2 + i]!;
      const conf = join(g.#dir, `sentinel-${port}.conf`);
      // Sentinel rewrites its own file (what it learns of replicas and peers): one writable file each.
      writeFileSync(
        conf,
        [
          `port ${port}`,
          'bind 127.0.0.1',
          'daemonize no',
          `dir ${g.#dir}`,
          `sentinel monitor ${g.name} 127.0.0.1 ${p} 2`,
          `sentinel down-after-milliseconds ${g.name} 1000`,
          `sentinel failover-timeout ${g.name} 3000`,
          `sentinel parallel-syncs ${g.name} 1`,
          '',
        ].join('\n'),
      );
      g.#sentinels.push(new Node(port, 'redis-sentinel', [conf]));
    }
    try {
      g.#primary.start();
      await g.#primary.up();
      g.#replica.start();
      await g.#replica.up();
      await until('the replica to sync', 15_000, async () => (/master_link_status:up/.test(String(await ask(r, 'INFO', 'replication'))) ? true : undefined));
      for (const s of g.#sentinels) s.start();
      await Promise.all(g.#sentinels.map((s) => s.up()));
      // A failover needs each sentinel to know the replica and its two peers (found through the primary's hellos).
      for (const s of g.#sentinels) {
        await until('the sentinels to find the replica and each other', 20_000, async () => {
          const replicas = (await ask(s.port, 'SENTINEL', 'REPLICAS', g.name)) as unknown[];
          const peers = (await ask(s.port, 'SENTINEL', 'SENTINELS', g.name)) as unknown[];
          return replicas.length >= 1 && peers.length >= 2 ? true : undefined;
        });
      }
    } catch (err) {
      await g.destroy();
      throw err;
    }
    return g;
  }

  /** The port the sentinels name as primary now. */
  async currentPrimaryPort(): Promise<number> {
    const [, port] = (await ask(this.#sentinels[0]!.port, 'SENTINEL', 'GET-MASTER-ADDR-BY-NAME', this.name)) as [string, string];
    return Number(port);
  }

  /** INFO <section> of the (first) replica. */
  async replicaInfo(section: string): Promise<string> {
    return String(await ask(this.#replica.port, 'INFO', section));
  }

  /** SIGKILL the primary: no shutdown, no last write, as a lost machine. */
  async killPrimary(): Promise<void> {
    await this.#primary.kill();
  }

  /** Waits until the sentinels have promoted the replica and it accepts writes. */
  async untilPromoted(timeoutMs = 30_000): Promise<void> {
    await until('the sentinels to promote the replica', timeoutMs, async () => {
      if ((await this.currentPrimaryPort()) !== this.#replica.port) return undefined;
      return /role:master/.test(String(await ask(this.#replica.port, 'INFO', 'replication'))) ? true : undefined;
    });
  }

  async destroy(): Promise<void> {
    await Promise.all([...this.#sentinels, this.#replica, this.#primary].map((n) => n.kill()));
    rmSync(this.#dir, { recursive: true, force: true });
  }
}
