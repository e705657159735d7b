// A real stack for a test: the FuhuAPI simulator on port 0 and a listening gateway in front of it, with its log
// lines captured, or real gateway processes (from ../support). Tests talk to them over real HTTP.
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from 'node:net';
import { Writable } from 'node:stream';
import type { FastifyInstance } from 'fastify';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, expect, inject } from 'vitest';
import { type AppDeps, buildApp } from '../../src/app.js';
import { type Config, loadConfig } from '../../src/config.js';
import { loggerOptions } from '../../src/logger.js';
import { type Simulator, createSimulator } from '../../src/simulator/simulator.js';
import type { TenantInput } from '../../src/access/tenants.js';
import type { Redis } from 'ioredis';
import { type RedisTarget, createRedisClient } from '../../src/store/redis-client.js';
import { UpstreamClient } from '../../src/upstream/client.js';
import { type GatewayProcess, type GatewayProcessOptions, startGatewayProcess as startProcess, stopAllProcesses } from '../support/processes.js';

export const KEY_A = 'team-a-key-0123456789abcdef';
export const KEY_B = 'team-b-key-0123456789abcdef';

export const DEFAULT_TENANTS: TenantInput[] = [
  { id: 'team-a', keys: [KEY_A] },
  { id: 'team-b', keys: [KEY_B] },
];

export interface SimHandle {
  sim: Simulator;
  url: string;
  apiKey: string;
}

/** Every upstream key a simulator of this file was given: no answer to a client may contain one. */
const upstreamKeys = new Set<string>();

export async function startSimulator(stepMs = 200): Promise<SimHandle> {
  const apiKey = `sk-upstream-${randomBytes(12).toString('hex')}`;
  upstreamKeys.add(apiKey);
  const sim = createSimulator({ apiKey, stepMs });
  const url = await sim.listen(0, '127.0.0.1');
  return { sim, url, apiKey };
}

/**
 * Something started before the tests of the enclosing file or describe block and closed after them. The handle
 * reads through to it (its `keys`, methods bound), so tests use it as the thing itself, spread included.
 */
function startedFor<T extends object>(what: string, keys: (keyof T)[], start: () => Promise<T>, close: (t: T) => Promise<void>) {
  let current: T | undefined;
  beforeAll(async () => {
    current = await start();
  });
  afterAll(async () => {
    if (current) await close(current);
  });
  const handle = {} as T;
  for (const k of keys) {
    Object.defineProperty(handle, k, {
      enumerable: true,
      get: () => {
        if (!current) throw new Error(`the ${what} is only there inside tests (it starts in beforeAll)`);
        const v = current[k];
        return typeof v === 'function' ? v.bind(current) : v;
      },
    });
  }
  return { handle, current: () => current };
}

/** A simulator for the enclosing file or describe block; its faults and recorded requests are cleared after each test. */
export function useSimulator(stepMs = 200): SimHandle {
  const { handle, current } = startedFor<SimHandle>('simulator', ['sim', 'url', 'apiKey'], () => startSimulator(stepMs), (h) => h.sim.close());
  afterEach(() => {
    current()?.sim.clearFaults();
    current()?.sim.clearRequests();
  });
  return handle;
}

/**
 * A gateway for the enclosing file or describe block, started with the options `opts()` gives then (so they may
 * name a simulator from useSimulator).
 */
export function useGateway(opts: () => GatewayOptions): Gateway {
  return startedFor<Gateway>('gateway', ['app', 'config', 'url', 'logs', 'close'], () => startGateway(opts()), (g) => g.close()).handle;
}

/**
 * For files whose tests each start their own gateways, with their own options: `start(opts)` starts one, and every
 * one started is closed after the test. Call it after useSimulator: after-hooks run in reverse, so the gateways are
 * closed before the simulator forgets its requests, and a closing gateway's last call is not left for the next test.
 */
export function gatewaysPerTest(): (opts: GatewayOptions) => Promise<Gateway> {
  const opened: Gateway[] = [];
  afterEach(async () => {
    await Promise.all(opened.splice(0).map((g) => g.close()));
  });
  return async (opts) => {
    const gw = await startGateway(opts);
    opened.push(gw);
    return gw;
  };
}

/**
 * A gateway whose own upstream client has a 500 ms deadline and 2 retries, and whose breaker never opens, so one
 * test's faults cannot leak into the next.
 */
export function useSteadyGateway(s: SimHandle): Gateway {
  let upstream: UpstreamClient | undefined;
  beforeAll(() => {
    upstream = new UpstreamClient({ baseUrl: s.url, apiKey: s.apiKey, timeoutMs: 500, retries: 2, breakerThreshold: 1_000_000 });
  });
  // Registered before the gateway's own: runs after the gateway has closed.
  afterAll(async () => {
    await upstream?.close();
  });
  return useGateway(() => ({ sim: s, env: { UPSTREAM_TIMEOUT_MS: '500', DEFAULT_RATE_LIMIT_MAX: '100000' }, deps: { upstream: upstream! } }));
}

export function writeTenants(tenants: TenantInput[], dir = mkdtempSync(join(tmpdir(), 'fgw-tenants-'))): string {
  const file = join(dir, 'tenants.json');
  writeFileSync(file, JSON.stringify({ tenants }));
  return file;
}

export interface Gateway {
  app: FastifyInstance;
  config: Config;
  url: string;
  /** Every log line the gateway wrote, as raw JSON text. */
  logs: string[];
  close(): Promise<void>;
}

export interface GatewayOptions {
  sim: SimHandle;
  tenants?: TenantInput[];
  tenantsFile?: string;
  /** 'memory', or a Redis URL (default: the run's Redis). */
  redis?: string | 'memory';
  /** Shared by gateways that should see one state; unique by default. */
  prefix?: string;
  env?: Record<string, string>;
  deps?: AppDeps;
  /** Wait until the store is connected (default true). */
  waitReady?: boolean;
}

export async function startGateway(opts: GatewayOptions): Promise<Gateway> {
  const redisUrl = opts.redis === 'memory' ? undefined : (opts.redis ?? inject('redisUrl'));
  const env: Record<string, string | undefined> = {
    UPSTREAM_BASE_URL: opts.sim.url,
    UPSTREAM_API_KEY: opts.sim.apiKey,
    TENANTS_FILE: opts.tenantsFile ?? writeTenants(opts.tenants ?? DEFAULT_TENANTS),
    REDIS_URL: redisUrl,
    REDIS_KEY_PREFIX: opts.prefix ?? `test:${randomUUID()}:`,
    UPSTREAM_TIMEOUT_MS: '5000',
    LOG_LEVEL: 'info',
    ...opts.env,
  };
  const config = loadConfig(env);
  const logs: string[] = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      logs.push(...String(chunk).split('\n').filter(Boolean));
      cb();
    },
  });
  const logger = pino(loggerOptions(config.LOG_LEVEL), sink);
  const app = await buildApp(config, { logger, ...opts.deps });
  await app.listen({ port: 0, host: '127.0.0.1' });
  if (redisUrl && opts.waitReady !== false) await waitFor(() => app.store.isReady(), 5000, 'the gateway to connect to Redis');
  const addr = app.server.address();
  const port = typeof addr === 'object' && addr ? addr.port : 0;
  return { app, config, url: `http://127.0.0.1:${port}`, logs, close: () => app.close() };
}

/** The run's Redis in each mode, for suites that must pass on all three: [name, target]. */
export function redisTargets(): [string, RedisTarget][] {
  const hostPorts = (v: string) => v.split(',').map((hp) => ({ host: hp.slice(0, hp.lastIndexOf(':')), port: Number(hp.slice(hp.lastIndexOf(':') + 1)) }));
  return [
    ['redis', { mode: 'single', url: inject('redisUrl') }],
    ['redis sentinel', { mode: 'sentinel', sentinels: hostPorts(inject('redisSentinels')), name: inject('redisSentinelName') }],
    ['redis cluster', { mode: 'cluster', nodes: hostPorts(inject('redisCluster')) }],
  ];
}

/**
 * A contract suite's stores: the in-memory one, and one per Redis mode on a client with its own prefix, each
 * connected before the suite starts. `close()` quits those clients.
 */
export function storeFactories<T>(suite: string, memory: () => T, redis: (client: Redis) => T): { factories: [string, () => Promise<T>][]; close: () => Promise<void> } {
  const clients: Redis[] = [];
  const factories: [string, () => Promise<T>][] = [
    ['memory', async () => memory()],
    ...redisTargets().map(([kind, target]): [string, () => Promise<T>] => [
      kind,
      async () => {
        const client = createRedisClient(target, `${suite}:${randomUUID()}:`) as Redis;
        clients.push(client);
        await waitFor(() => client.status === 'ready', 10_000, kind);
        return redis(client);
      },
    ]),
  ];
  return { factories, close: async () => void (await Promise.all(clients.map((c) => c.quit()))) };
}

export async function waitFor(check: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`timed out waiting for ${what}`);
}

export interface CallResult {
  status: number;
  headers: Headers;
  body: any;
  text: string;
}

/** One HTTP call to the gateway, as a client would make it. */
export async function call(
  base: string,
  method: string,
  path: string,
  opts: { key?: string; body?: unknown; rawBody?: string; headers?: Record<string, string> } = {},
): Promise<CallResult> {
  const headers: Record<string, string> = { ...opts.headers };
  if (opts.key) headers.authorization = `Bearer ${opts.key}`;
  let body: string | undefined;
  if (opts.rawBody !== undefined) body = opts.rawBody;
  else if (opts.body !== undefined) body = JSON.stringify(opts.body);
  if (body !== undefined && !headers['content-type']) headers['content-type'] = 'application/json';
  const res = await fetch(base + path, { method, headers, body });
  const text = await res.text();
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  return { status: res.status, headers: res.headers, body: parsed, text };
}

export const MODEL_PATH = '/replicate/v1/models/black-forest-labs/flux-schnell/predictions';

/**
 * A client-visible error: problem JSON with the given status (and detail), a Retry-After in whole seconds when asked,
 * and never a stack trace or an upstream key.
 */
export function expectProblem(r: CallResult, status: number, detail?: RegExp, retryAfter = false): void {
  expect(r.status).toBe(status);
  expect(r.headers.get('content-type')).toMatch(/^application\/problem\+json/);
  expect(r.body).toMatchObject({ status, type: expect.stringMatching(/^urn:fuhu-gateway:problem:/), title: expect.any(String) });
  if (detail) expect(r.body.detail).toMatch(detail);
  if (retryAfter) expect(r.headers.get('retry-after')).toMatch(/^[1-9]\d*$/);
  expect(r.text).not.toMatch(/at .*\.(ts|js):\d+/);
  for (const key of upstreamKeys) expect(r.text).not.toContain(key);
}

/** Creates a prediction by model for `key` and returns its id. */
export async function createPrediction(base: string, key: string, input: Record<string, unknown> = { prompt: 'a cat' }, headers?: Record<string, string>): Promise<string> {
  const r = await call(base, 'POST', MODEL_PATH, { key, body: { input }, headers });
  if (r.status !== 201) throw new Error(`create failed: ${r.status} ${r.text}`);
  return r.body.id as string;
}

/** A create by model as a client sends it, with `idem` as its Idempotency-Key; the whole answer. */
export function sendCreate(base: string, opts: { key?: string; input?: Record<string, unknown>; idem?: string; headers?: Record<string, string> } = {}) {
  const headers: Record<string, string> = { ...opts.headers };
  if (opts.idem) headers['idempotency-key'] = opts.idem;
  return call(base, 'POST', MODEL_PATH, { key: opts.key ?? KEY_A, body: { input: opts.input ?? { prompt: 'a cat' } }, headers });
}

/**
 * A fault matcher for a client's request through the gateway: what gateways do in the background on the same
 * simulator (the watcher's looks at open predictions, named watch-…, and balance reads, balance-…) must not take a
 * fault a test meant for its own request.
 */
export const fromClients = (_m: string, _p: string, req: { headers: Record<string, string | string[] | undefined> }) =>
  !/^(watch|balance)-/.test(String(req.headers['x-request-id']));

/** Whether an upstream request was the watcher's look at an open prediction (it names them watch-<id>). */
export const byWatcher = (req: { headers: Record<string, string | string[] | undefined> }) => String(req.headers['x-request-id']).startsWith('watch-');

/** Upstream requests the simulator received, optionally only those whose path matches. */
export function upstreamCalls(sim: Simulator, match?: RegExp) {
  return sim.requests.filter((r) => !match || match.test(r.url));
}

export type { GatewayProcess };

/** A real gateway process in front of `sim`, on the run's Redis unless told otherwise (see ../support/processes.ts). */
export function startGatewayProcess(
  opts: Omit<GatewayProcessOptions, 'upstreamUrl' | 'upstreamKey' | 'redisUrl'> & { sim: SimHandle; redisUrl?: string },
): Promise<GatewayProcess> {
  const { sim, redisUrl, ...rest } = opts;
  return startProcess({ ...rest, upstreamUrl: sim.url, upstreamKey: sim.apiKey, redisUrl: redisUrl ?? inject('redisUrl') });
}

/** Stops every gateway process this file started and has not stopped yet. */
export const stopAllGatewayProcesses = stopAllProcesses;

/**
 * Sends only a request's head (its Content-Length announcing a body that never comes) and resolves with the answer.
 * An answer at all proves the server refused without reading the body: it could not have read what was never sent.
 */
export async function sendHeadOnly(base: string, method: string, path: string, headers: Record<string, string>): Promise<{ status: number; body: any }> {
  const { hostname, port } = new URL(base);
  const socket = connect(Number(port), hostname);
  const head = [`${method} ${path} HTTP/1.1`, `host: ${hostname}:${port}`, ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`)].join('\r\n');
  socket.write(`${head}\r\n\r\n`);
  let text = '';
  socket.setEncoding('utf8').on('data', (d: string) => (text += d));
  // The answer, complete once its own Content-Length has arrived (the server may keep the socket open for the body).
  await new Promise<void>((resolve, reject) => {
    const done = () => {
      const at = text.indexOf('\r\n\r\n');
      const length = /\r\ncontent-length: (\d+)/i.exec(text.slice(0, at))?.[1];
      return at >= 0 && length !== undefined && Buffer.byteLength(text.slice(at + 4)) >= Number(length);
    };
    socket.on('data', () => done() && resolve());
    socket.on('end', () => (done() ? resolve() : reject(new Error(`the server closed without an answer: ${JSON.stringify(text)}`))));
    socket.on('error', reject);
  });
  socket.destroy();
  const at = text.indexOf('\r\n\r\n');
  return { status: Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1]), body: JSON.parse(text.slice(at + 4)) };
}
