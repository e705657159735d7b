// Real server processes for the tests and the benchmarks: free ports, Node processes waited on until they answer,
// the gateway and the simulator as they run in production, and their clean-up. No vitest here (bench/ imports it):
// callers pass every setting, the run's Redis URL included.
import { type ChildProcess, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';

/** The repository root: every process starts there, so relative entry points work from any cwd. */
export const ROOT = fileURLToPath(new URL('../..', import.meta.url));

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface ServerProcess {
  /** Where it answers: for the simulator, its API base (`…/replicate/v1`), as for the in-process one. */
  url: string;
  pid: number;
  child: ChildProcess;
  /** Resolves when the process has exited, however it ended. */
  exited: Promise<Exit>;
  /** Everything it wrote to stdout and stderr so far (empty with `quiet`). */
  output(): string;
  /** SIGTERM, then SIGKILL after 5 s; resolves once it has exited. */
  stop(): Promise<void>;
}

export interface NodeServerOptions {
  /** Arguments to `node`, e.g. `['--import', 'tsx', 'src/server.ts']`. */
  args: string[];
  env: Record<string, string | undefined>;
  url: string;
  /** Whether the server answers as ready yet. */
  ready: (url: string) => Promise<boolean>;
  /** Default 20 s. */
  readyTimeoutMs?: number;
  /** Drop stdout and pass stderr through, instead of keeping both (a benchmark's access log would fill memory). */
  quiet?: boolean;
  /** Names it in errors. */
  what: string;
}

const running = new Set<ChildProcess>();

// A test or a benchmark that crashes must not leave servers behind.
process.once('exit', () => {
  for (const p of running) p.kill('SIGKILL');
});

const hasExited = (p: ChildProcess) => p.exitCode !== null || p.signalCode !== null;

function stopChild(p: ChildProcess): Promise<void> {
  if (hasExited(p)) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => p.kill('SIGKILL'), 5000);
    p.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    p.kill('SIGTERM');
  });
}

/** Whether a GET of `url` answers with a status `accept` takes (any failure to answer is "no"). */
export async function answers(url: string, accept: (status: number) => boolean = (status) => status === 200): Promise<boolean> {
  try {
    const r = await fetch(url, { signal: AbortSignal.timeout(1000) });
    await r.arrayBuffer();
    return accept(r.status);
  } catch {
    return false;
  }
}

/** Starts `node <args>` in the repository root and waits until it is ready; its output is in the error when not. */
export async function startNodeServer(opts: NodeServerOptions): Promise<ServerProcess> {
  const child = spawn(process.execPath, opts.args, { cwd: ROOT, env: opts.env, stdio: ['ignore', opts.quiet ? 'ignore' : 'pipe', opts.quiet ? 'inherit' : 'pipe'] });
  running.add(child);
  let out = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (out += d));
  const exited = new Promise<Exit>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  child.once('exit', () => running.delete(child));
  const stop = () => stopChild(child);

  const until = Date.now() + (opts.readyTimeoutMs ?? 20_000);
  for (;;) {
    if (hasExited(child)) throw new Error(`${opts.what} exited (${child.exitCode ?? child.signalCode}) before it was ready:\n${out}`);
    if (await opts.ready(opts.url)) break;
    if (Date.now() > until) {
      await stop();
      throw new Error(`${opts.what} on ${opts.url} was not ready in time:\n${out}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { url: opts.url, pid: child.pid!, child, exited, output: () => out, stop };
}

/** Stops every process started here and not stopped yet. */
export async function stopAllProcesses(): Promise<void> {
  await Promise.all([...running].map(stopChild));
}

/** The environment a process starts from: only PATH and HOME, so a developer's shell never leaks in, or all of it. */
function baseEnv(inherit: boolean | undefined): Record<string, string | undefined> {
  if (inherit) return { ...process.env };
  return { PATH: process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin', HOME: process.env.HOME ?? '/tmp' };
}

export interface GatewayProcessOptions {
  /** The upstream's API base (`…/replicate/v1`) and the key it expects. */
  upstreamUrl: string;
  upstreamKey: string;
  tenantsFile: string;
  /** Without it, the in-memory store. */
  redisUrl?: string;
  /** Processes that should share state get the same prefix; unique by default. */
  prefix?: string;
  /** Settings on top of the defaults (NODE_ENV=test, LOG_LEVEL=warn); they win over everything else. */
  env?: Record<string, string>;
  /** Start from this process's whole environment rather than PATH and HOME only. */
  inheritEnv?: boolean;
  /** Arguments to `node`. Default: the sources through tsx (`--import tsx src/server.ts`). */
  args?: string[];
  readyTimeoutMs?: number;
  quiet?: boolean;
}

export type GatewayProcess = ServerProcess;

/** A real gateway process on a free port, as a replica runs in production, ready once /readyz answers 200. */
export async function startGatewayProcess(opts: GatewayProcessOptions): Promise<GatewayProcess> {
  const port = await freePort();
  return startNodeServer({
    args: opts.args ?? ['--import', 'tsx', 'src/server.ts'],
    env: {
      ...baseEnv(opts.inheritEnv),
      NODE_ENV: 'test',
      LOG_LEVEL: 'warn',
      UPSTREAM_BASE_URL: opts.upstreamUrl,
      UPSTREAM_API_KEY: opts.upstreamKey,
      TENANTS_FILE: opts.tenantsFile,
      REDIS_URL: opts.redisUrl,
      REDIS_KEY_PREFIX: opts.prefix ?? `proc:${randomUUID()}:`,
      PORT: String(port),
      HOST: '127.0.0.1',
      ...opts.env,
    },
    url: `http://127.0.0.1:${port}`,
    ready: (url) => answers(`${url}/readyz`),
    readyTimeoutMs: opts.readyTimeoutMs,
    quiet: opts.quiet,
    what: 'gateway process',
  });
}

export interface SimulatorProcessOptions {
  apiKey: string;
  /** SIMULATOR_STEP_MS. */
  stepMs?: number;
  /** SIMULATOR_LATENCY_MS. */
  latencyMs?: number;
  inheritEnv?: boolean;
  /** Arguments to `node`. Default: the sources through tsx (`--import tsx src/simulator/main.ts`). */
  args?: string[];
  quiet?: boolean;
}

/** The standalone FuhuAPI simulator on a free port; `url` is its API base, ready once it answers at all. */
export async function startSimulatorProcess(opts: SimulatorProcessOptions): Promise<ServerProcess> {
  const port = await freePort();
  const env: Record<string, string | undefined> = { ...baseEnv(opts.inheritEnv), SIMULATOR_PORT: String(port), SIMULATOR_API_KEY: opts.apiKey };
  if (opts.stepMs !== undefined) env.SIMULATOR_STEP_MS = String(opts.stepMs);
  if (opts.latencyMs !== undefined) env.SIMULATOR_LATENCY_MS = String(opts.latencyMs);
  return startNodeServer({
    args: opts.args ?? ['--import', 'tsx', 'src/simulator/main.ts'],
    env,
    url: `http://127.0.0.1:${port}/replicate/v1`,
    // Unauthenticated, a GET answers 401: the server is up.
    ready: (url) => answers(`${url}/predictions/x`, (status) => status < 500),
    quiet: opts.quiet,
    what: 'simulator process',
  });
}
