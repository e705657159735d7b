// A real stack for a test: the FuhuAPI simulator on port 0 and a listening gateway in front of it, with its log
// lines captured. Tests talk to it over real HTTP.
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import type { FastifyInstance } from 'fastify';
import { pino } from 'pino';
import { inject } from 'vitest';
import { type AppDeps, buildApp } from '../../src/app.js';
import { type Config, loadConfig } from '../../src/config.js';
import { loggerOptions } from '../../src/logger.js';
import { type Simulator, createSimulator } from '../../src/simulator/simulator.js';
import type { TenantInput } from '../../src/access/tenants.js';

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

export async function startSimulator(stepMs = 200): Promise<SimHandle> {
  const apiKey = `sk-upstream-${randomBytes(12).toString('hex')}`;
  const sim = createSimulator({ apiKey, stepMs });
  const url = await sim.listen(0, '127.0.0.1');
  return { sim, url, apiKey };
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

/** Creates a prediction by model for `key` and returns its id. */
export async function createPrediction(base: string, key: string, input: Record<string, unknown> = { prompt: 'a cat' }, headers?: Record<string, string>): Promise<string> {
  const r = await call(base, 'POST', MODEL_PATH, { key, body: { input }, headers });
  if (r.status !== 201) throw new Error(`create failed: ${r.status} ${r.text}`);
  return r.body.id as string;
}

/** Upstream requests the simulator received, optionally only those whose path matches. */
export function upstreamCalls(sim: Simulator, match?: RegExp) {
  return sim.requests.filter((r) => !match || match.test(r.url));
}
