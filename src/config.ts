// The environment, parsed once at boot by one zod schema: gives both validation and the Config type.
import { z } from 'zod';

// zod's own: true/false, 1/0, yes/no, on/off, in any case.
const bool = z.stringbool({ error: 'must be true or false' });

// The range messages are set on each check: a schema-level `error` would replace them with "must be a number".
const int = (min: number, max: number) =>
  z.coerce
    .number({ error: 'must be a number' })
    .int('must be a whole number')
    .min(min, `must be at least ${min}`)
    .max(max, `must be at most ${max}`);

/** "host:port,host:port" → [{host, port}]; IPv6 hosts in brackets ("[::1]:6379"). */
const hostPorts = z
  .string()
  .transform((v, ctx) => {
    const out: { host: string; port: number }[] = [];
    for (const part of v.split(',').map((p) => p.trim()).filter(Boolean)) {
      const m = /^(?:\[([^\]]+)\]|([^:\s]+)):(\d{1,5})$/.exec(part);
      const port = m ? Number(m[3]) : 0;
      if (!m || port < 1 || port > 65535) {
        ctx.addIssue({ code: 'custom', message: 'must be a comma-separated list of host:port' });
        return z.NEVER;
      }
      out.push({ host: (m[1] ?? m[2])!, port });
    }
    if (!out.length) {
      ctx.addIssue({ code: 'custom', message: 'must be a comma-separated list of host:port' });
      return z.NEVER;
    }
    return out;
  });

const httpUrl = z
  .url({ protocol: /^https?$/, error: 'must be an http(s) URL' })
  .transform((u) => u.replace(/\/+$/, ''));

/** The longest window accepted: Redis PEXPIRE and timers need whole milliseconds of a sane size. */
const MAX_DURATION_MS = 366 * 86_400_000;

/** "1 minute", "30 seconds", "500 ms", "2h" or plain milliseconds → whole milliseconds, 1 ms to 366 days. */
export function parseDuration(value: string | number): number | undefined {
  if (typeof value === 'number') {
    const ms = Math.round(value);
    return Number.isFinite(ms) && ms > 0 && ms <= MAX_DURATION_MS ? ms : undefined;
  }
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|milliseconds?|s|secs?|seconds?|m|mins?|minutes?|h|hours?|d|days?)?\s*$/i.exec(value);
  if (!m) return undefined;
  const n = Number(m[1]);
  const unit = (m[2] ?? 'ms').toLowerCase();
  const factor = unit.startsWith('ms') || unit.startsWith('milli') ? 1
    : unit.startsWith('s') ? 1000
    : unit.startsWith('m') ? 60_000
    : unit.startsWith('h') ? 3_600_000
    : 86_400_000;
  const ms = Math.round(n * factor);
  return ms > 0 && ms <= MAX_DURATION_MS ? ms : undefined;
}

const duration = z.string().transform((v, ctx) => {
  const ms = parseDuration(v);
  if (ms === undefined) {
    ctx.addIssue({ code: 'custom', message: 'must be a duration from 1 ms to 366 days, such as "1 minute", "30 s" or 60000' });
    return z.NEVER;
  }
  return ms;
});

/** "a.example, 127.0.0.1" → lower-case host names (no scheme, path or port). */
const hostList = z
  .string()
  .transform((v) => v.split(',').map((h) => h.trim().toLowerCase()).filter(Boolean))
  .refine((hosts) => hosts.every((h) => /^[a-z0-9.-]+$|^\[[0-9a-f:.]+\]$/.test(h)), 'must be a comma-separated list of host names or IP addresses (no scheme, port or path)')
  .default([]);

/** Where outputs are kept: `file:/absolute/folder` or `s3://bucket/optional/prefix`. */
export type OutputsTarget = { kind: 'file'; dir: string } | { kind: 's3'; bucket: string; prefix: string };

const outputsStore = z.string().transform((v, ctx): OutputsTarget => {
  const file = /^file:(\/.*)$/.exec(v);
  if (file) return { kind: 'file', dir: file[1]!.replace(/\/+$/, '') || '/' };
  // Bucket names as S3 allows them (3-63 lower-case letters, digits, dots and hyphens); the prefix ends in "/".
  const s3 = /^s3:\/\/([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:\/(.*))?$/.exec(v);
  if (s3) {
    const prefix = (s3[2] ?? '').replace(/^\/+|\/+$/g, '');
    return { kind: 's3', bucket: s3[1]!, prefix: prefix ? `${prefix}/` : '' };
  }
  ctx.addIssue({ code: 'custom', message: 'must be file:/absolute/folder or s3://bucket/prefix' });
  return z.NEVER;
});

function validTimeZone(tz: string): boolean {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: tz });
    return true;
  } catch {
    return false;
  }
}

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

export const ConfigSchema = z.object({
  PORT: int(0, 65535).default(8080),
  HOST: z.string().min(1).default('0.0.0.0'),
  UPSTREAM_BASE_URL: httpUrl.default('https://api.fuhuapi.com/replicate/v1'),
  UPSTREAM_API_KEY: z.string().min(1, 'is required').optional(),
  // Several upstream accounts (src/upstream/upstreams-file.ts), instead of UPSTREAM_BASE_URL + UPSTREAM_API_KEY.
  UPSTREAMS_FILE: z.string().min(1).optional(),
  // New-api resellers' balances: how often each is read, and the level at or below which a warning is logged and
  // fgw_upstream_balance_alerts_total counted (in the reseller's display unit, USD on most).
  UPSTREAM_BALANCE_POLL_SECONDS: int(10, 86_400).default(300),
  UPSTREAM_BALANCE_ALERT: z.coerce.number({ error: 'must be a number' }).min(-1e12).max(1e12).optional(),
  PUBLIC_BASE_URL: httpUrl.optional(),
  TENANTS_FILE: z.string({ error: 'is required (path to the tenants file)' }).min(1),
  REDIS_URL: z.url({ protocol: /^rediss?$/, error: 'must be a redis:// or rediss:// URL' }).optional(),
  // Past one Redis (see README "Scaling"): Sentinel (a host:port list and the monitored name) or Cluster (seed
  // nodes). Exactly one of REDIS_URL, REDIS_SENTINELS and REDIS_CLUSTER_NODES.
  REDIS_SENTINELS: hostPorts.optional(),
  REDIS_SENTINEL_NAME: z.string().min(1).optional(),
  REDIS_CLUSTER_NODES: hostPorts.optional(),
  // Credentials and TLS of the Redis servers in Sentinel and Cluster modes (a REDIS_URL carries its own), and of
  // the sentinels themselves.
  REDIS_USERNAME: z.string().min(1).optional(),
  REDIS_PASSWORD: z.string().min(1).optional(),
  REDIS_SENTINEL_PASSWORD: z.string().min(1).optional(),
  REDIS_TLS: bool.default(false),
  // Replicas that must have a create's records (owner, cache, idempotency) before the client gets its answer
  // (Redis WAIT, 500 ms at most): with Sentinel, 1 keeps a failover from losing what the client was told.
  REDIS_WAIT_REPLICAS: int(0, 16).default(0),
  // The first {...} of a key is its Cluster hash slot: a prefix with a brace would put every key in one slot.
  REDIS_KEY_PREFIX: z.string().min(1).regex(/^[^{}]+$/, 'must not contain { or } (they would decide the Redis Cluster hash slot)').default('fgw:'),
  UPSTREAM_TIMEOUT_MS: int(100, 600_000).default(30_000),
  UPSTREAM_RETRIES: int(0, 10).default(2),
  // Sockets to the upstream per process, and how many of them one tenant may hold at once (default: half).
  UPSTREAM_CONNECTIONS: int(1, 4096).default(128),
  UPSTREAM_TENANT_MAX_CONCURRENCY: int(1, 4096).optional(),
  // An upstream answer larger than this is cut off (502). Default: 16 MiB, and always above BODY_LIMIT_BYTES,
  // since a prediction echoes its input.
  UPSTREAM_MAX_BODY_BYTES: int(64 * 1024, 1024 * 1024 * 1024).optional(),
  // How long a client may take to send its whole request (slow bodies are cut off), and an idle socket may live.
  REQUEST_TIMEOUT_MS: int(1000, 600_000).default(30_000),
  CONNECTION_TIMEOUT_MS: int(0, 3_600_000).default(120_000),
  // Deeper JSON is refused with 422 before anything parses it recursively (stack overflows, slow fingerprints).
  JSON_MAX_DEPTH: int(2, 1000).default(64),
  BODY_LIMIT_BYTES: int(1024, 1024 * 1024 * 1024).default(10 * 1024 * 1024),
  // Uploads (POST /files): the largest file, how long it is kept, and how much one tenant may hold at once.
  FILES_MAX_BYTES: int(1024, 1024 * 1024 * 1024).default(10 * 1024 * 1024),
  FILES_TTL_SECONDS: int(60, 30 * 86400).default(86400),
  FILES_TENANT_MAX_BYTES: int(1024, 1024 ** 4).default(1024 * 1024 * 1024),
  // How a file reaches the upstream: inlined as a data: URI, or as a signed gateway URL the upstream fetches.
  FILES_DELIVERY: z.enum(['data-uri', 'url'], { error: 'must be data-uri or url' }).default('data-uri'),
  FILES_URL_SECRET: z.string().min(32, 'must be at least 32 characters').optional(),
  FILES_URL_TTL_SECONDS: int(60, 30 * 86400).default(3600),
  // Webhooks (src/webhooks/): how the gateway learns a prediction ended, how it watches, and where it may deliver.
  WEBHOOK_MODE: z.enum(['poll', 'upstream'], { error: 'must be poll or upstream' }).default('poll'),
  UPSTREAM_WEBHOOK_SECRET: z.string().regex(/^whsec_[A-Za-z0-9+/=]{16,}$/, 'must be a Standard Webhooks secret (whsec_ and base64)').optional(),
  WEBHOOK_POLL_MIN_MS: int(10, 3_600_000).default(1000),
  WEBHOOK_POLL_MAX_MS: int(10, 3_600_000).default(30_000),
  WEBHOOK_RETRY_MIN_MS: int(10, 3_600_000).default(5000),
  WEBHOOK_RETRY_FOR_SECONDS: int(1, 7 * 86400).default(86400),
  WEBHOOK_TIMEOUT_MS: int(100, 60_000).default(10_000),
  WEBHOOK_ALLOW_HTTP_HOSTS: hostList,
  WEBHOOK_ALLOW_PRIVATE_HOSTS: hostList,
  // Outputs kept past the upstream's one-hour deletion (src/outputs/): where (off while unset), the largest file
  // copied, and how long they are kept (days, decimals allowed). S3_* reach any S3-compatible store.
  OUTPUTS_STORE: outputsStore.optional(),
  OUTPUTS_MAX_BYTES: int(1024, 1024 ** 4).default(200 * 1024 * 1024),
  // How long the answer that saw a prediction succeed may wait for its outputs to be kept (0: it never waits).
  OUTPUTS_WAIT_MS: int(0, 60_000).default(5000),
  OUTPUTS_RETENTION_DAYS: z.coerce.number({ error: 'must be a number' }).positive('must be above 0').max(3650, 'must be at most 3650').default(30),
  S3_ENDPOINT: httpUrl.optional(),
  S3_REGION: z.string().min(1).default('us-east-1'),
  S3_ACCESS_KEY_ID: z.string().min(1).optional(),
  S3_SECRET_ACCESS_KEY: z.string().min(1).optional(),
  S3_FORCE_PATH_STYLE: bool.default(false),
  LOG_LEVEL: z.enum(LOG_LEVELS, { error: `must be one of ${LOG_LEVELS.join(', ')}` }).default('info'),
  // The access line is about a fifth of a cached GET's CPU; behind a proxy that logs requests, it can go.
  ACCESS_LOG: bool.default(true),
  TRUST_PROXY: bool.default(false),
  PREDICTION_TTL_SECONDS: int(60, 10 * 365 * 86400).default(30 * 86400),
  // A prediction's life after its create (src/lifecycle/): the watcher looks WATCH_MIN_MS after the create, then at
  // intervals that double with its age up to WATCH_MAX_MS, within UPSTREAM_WATCH_READS_PER_MINUTE upstream reads
  // across all replicas; one still open after PREDICTION_MAX_OPEN_SECONDS is canceled and settled as expired.
  WATCH_MIN_MS: int(10, 3_600_000).default(1000),
  WATCH_MAX_MS: int(10, 3_600_000).default(30_000),
  UPSTREAM_WATCH_READS_PER_MINUTE: int(1, 1_000_000).default(1500),
  // Browser streams (GET /gateway/v1/predictions/{id}/events) open at once, per tenant and per client address.
  MAX_STREAMS_PER_TENANT: int(1, 10_000_000).default(1000),
  MAX_STREAMS_PER_IP: int(1, 10_000_000).default(100),
  // Default: a day, or PREDICTION_TTL_SECONDS when that is shorter.
  PREDICTION_MAX_OPEN_SECONDS: int(1, 365 * 86400).optional(),
  CACHE_TTL_SECONDS: int(1, 365 * 86400).default(86400),
  MEMORY_STORE_MAX_ENTRIES: int(100, 100_000_000).default(100_000),
  MEMORY_STORE_MAX_BYTES: int(1024 * 1024, 1024 ** 4).default(256 * 1024 * 1024),
  DEFAULT_RATE_LIMIT_MAX: int(1, 10_000_000).default(600),
  DEFAULT_RATE_LIMIT_WINDOW: duration.default(60_000),
  // Most rate-limit permits one Redis trip may take for a process (see src/store/rate-limit-store.ts); 1: a trip per request.
  RATE_LIMIT_LEASE_MAX: int(1, 10_000).default(64),
  AUTH_FAILURE_LIMIT: int(1, 1_000_000).default(20),
  TOKEN_SIGNING_SECRET: z.string().min(32, 'must be at least 32 characters').optional(),
  ADMIN_API_KEY: z.string().min(16, 'must be at least 16 characters').regex(/^\S+$/, 'must not contain spaces').optional(),
  // The admin API (src/admin/): how often each replica compares its copy of the API-managed tenants and keys with
  // the store's change counter (a lost pub/sub message is caught by then), and how long audit events are kept.
  ADMIN_SYNC_INTERVAL_MS: int(50, 60_000).default(500),
  AUDIT_RETENTION_DAYS: int(1, 36_500).default(365),
  POLL_CACHE_MS: int(0, 60_000).default(500),
  IDEMPOTENCY_TTL_SECONDS: int(60, 7 * 86400).default(86400),
  SHUTDOWN_GRACE_MS: int(0, 600_000).default(10_000),
  METRICS_TOKEN: z.string().min(16, 'must be at least 16 characters').regex(/^\S+$/, 'must not contain spaces').optional(),
  OVERLOAD_MAX_EVENT_LOOP_DELAY_MS: int(0, 60_000).default(1000),
  OVERLOAD_MAX_HEAP_BYTES: int(0, 1024 ** 4).default(0),
  // Spend control (src/budget/): the price table, the zone budget periods follow, the predict time reserved for a
  // model the price table gives no expectedSeconds, and the shared account's create rate split between tenants.
  PRICES_FILE: z.string().min(1).optional(),
  BUDGET_TIMEZONE: z.string().refine(validTimeZone, 'must be an IANA time zone such as UTC or Europe/Berlin').default('UTC'),
  BUDGET_EXPECTED_SECONDS: z.coerce.number({ error: 'must be a number' }).positive('must be above 0').max(86_400, 'must be at most 86400').default(10),
  UPSTREAM_CREATE_LIMIT: int(1, 10_000_000).optional(),
  UPSTREAM_CREATE_WINDOW: duration.default(60_000),
  // OpenTelemetry traces (src/tracing.ts): off unless the collector's OTLP/HTTP base URL is set (`/v1/traces` is appended).
  OTEL_EXPORTER_OTLP_ENDPOINT: httpUrl.optional(),
  OTEL_SERVICE_NAME: z.string().min(1).max(200).default('fuhu-gateway'),
});

type Parsed = z.output<typeof ConfigSchema>;
export type Config = Readonly<Parsed & { UPSTREAM_TENANT_MAX_CONCURRENCY: number; UPSTREAM_MAX_BODY_BYTES: number; PREDICTION_MAX_OPEN_SECONDS: number }>;

export class ConfigError extends Error {
  override name = 'ConfigError';
}

/** Parses a plain object (tests pass their own; only server.ts passes process.env). Empty strings count as unset. */
export function loadConfig(env: Record<string, string | undefined>): Config {
  const cleaned: Record<string, string> = {};
  for (const key of Object.keys(ConfigSchema.shape)) {
    const v = env[key];
    if (v !== undefined && v.trim() !== '') cleaned[key] = v.trim();
  }
  const parsed = ConfigSchema.safeParse(cleaned);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const name = String(issue.path[0] ?? 'environment');
    // Never echo the value: it may be a secret.
    throw new ConfigError(`invalid configuration: ${name} ${issue.message}`);
  }
  const c = parsed.data;
  if (!c.UPSTREAM_API_KEY && !c.UPSTREAMS_FILE) {
    throw new ConfigError('invalid configuration: UPSTREAM_API_KEY is required (or UPSTREAMS_FILE, listing several upstreams)');
  }
  if (c.UPSTREAM_API_KEY && c.UPSTREAMS_FILE) {
    throw new ConfigError('invalid configuration: UPSTREAM_API_KEY and UPSTREAMS_FILE are both set; list every upstream in UPSTREAMS_FILE (a key there may be {"env": "UPSTREAM_API_KEY"})');
  }
  const redisVars = (['REDIS_URL', 'REDIS_SENTINELS', 'REDIS_CLUSTER_NODES'] as const).filter((k) => c[k] !== undefined);
  if (redisVars.length > 1) {
    throw new ConfigError(`invalid configuration: ${redisVars[0]} and ${redisVars[1]} are both set; choose one Redis mode (one server, Sentinel or Cluster)`);
  }
  if (c.REDIS_SENTINELS && !c.REDIS_SENTINEL_NAME) {
    throw new ConfigError('invalid configuration: REDIS_SENTINELS needs REDIS_SENTINEL_NAME (the name the sentinels monitor)');
  }
  if (c.REDIS_SENTINEL_NAME && !c.REDIS_SENTINELS) {
    throw new ConfigError('invalid configuration: REDIS_SENTINEL_NAME is set without REDIS_SENTINELS');
  }
  if (c.REDIS_SENTINEL_PASSWORD && !c.REDIS_SENTINELS) {
    throw new ConfigError('invalid configuration: REDIS_SENTINEL_PASSWORD is set without REDIS_SENTINELS');
  }
  // A setting that would be silently ignored is a mistake worth stopping for.
  for (const k of ['REDIS_USERNAME', 'REDIS_PASSWORD', 'REDIS_TLS'] as const) {
    if (!c[k]) continue;
    if (c.REDIS_URL) throw new ConfigError(`invalid configuration: ${k} applies to REDIS_SENTINELS and REDIS_CLUSTER_NODES only; with REDIS_URL put it in the URL (redis://user:password@host, rediss:// for TLS)`);
    if (!c.REDIS_SENTINELS && !c.REDIS_CLUSTER_NODES) throw new ConfigError(`invalid configuration: ${k} is set but no Redis is (REDIS_URL, REDIS_SENTINELS or REDIS_CLUSTER_NODES)`);
  }
  if (c.UPSTREAM_MAX_BODY_BYTES !== undefined && c.UPSTREAM_MAX_BODY_BYTES <= c.BODY_LIMIT_BYTES) {
    throw new ConfigError('invalid configuration: UPSTREAM_MAX_BODY_BYTES must be larger than BODY_LIMIT_BYTES (a prediction echoes its input)');
  }
  if (c.FILES_DELIVERY === 'url' && !c.PUBLIC_BASE_URL) {
    throw new ConfigError('invalid configuration: FILES_DELIVERY=url needs PUBLIC_BASE_URL (the address the upstream fetches files from)');
  }
  if (c.FILES_DELIVERY === 'url' && !(c.FILES_URL_SECRET ?? c.TOKEN_SIGNING_SECRET)) {
    throw new ConfigError('invalid configuration: FILES_DELIVERY=url needs FILES_URL_SECRET (or TOKEN_SIGNING_SECRET) to sign file URLs');
  }
  if (c.WEBHOOK_MODE === 'upstream' && !c.PUBLIC_BASE_URL) {
    throw new ConfigError('invalid configuration: WEBHOOK_MODE=upstream needs PUBLIC_BASE_URL (the address the upstream calls back)');
  }
  if (c.WEBHOOK_POLL_MAX_MS < c.WEBHOOK_POLL_MIN_MS) {
    throw new ConfigError('invalid configuration: WEBHOOK_POLL_MAX_MS must be at least WEBHOOK_POLL_MIN_MS');
  }
  if (c.WATCH_MAX_MS < c.WATCH_MIN_MS) {
    throw new ConfigError('invalid configuration: WATCH_MAX_MS must be at least WATCH_MIN_MS');
  }
  if (c.PREDICTION_MAX_OPEN_SECONDS !== undefined && c.PREDICTION_MAX_OPEN_SECONDS > c.PREDICTION_TTL_SECONDS) {
    throw new ConfigError('invalid configuration: PREDICTION_MAX_OPEN_SECONDS must be at most PREDICTION_TTL_SECONDS (a prediction is followed only while its records last)');
  }
  if (c.UPSTREAM_TENANT_MAX_CONCURRENCY !== undefined && c.UPSTREAM_TENANT_MAX_CONCURRENCY > c.UPSTREAM_CONNECTIONS) {
    throw new ConfigError('invalid configuration: UPSTREAM_TENANT_MAX_CONCURRENCY must be at most UPSTREAM_CONNECTIONS');
  }
  const s3Vars = (['S3_ENDPOINT', 'S3_ACCESS_KEY_ID', 'S3_SECRET_ACCESS_KEY'] as const).filter((k) => c[k] !== undefined);
  if (c.OUTPUTS_STORE?.kind !== 's3' && (s3Vars.length > 0 || c.S3_FORCE_PATH_STYLE)) {
    throw new ConfigError(`invalid configuration: ${s3Vars[0] ?? 'S3_FORCE_PATH_STYLE'} is set but OUTPUTS_STORE is not an s3:// URL`);
  }
  if ((c.S3_ACCESS_KEY_ID === undefined) !== (c.S3_SECRET_ACCESS_KEY === undefined)) {
    throw new ConfigError(`invalid configuration: ${c.S3_ACCESS_KEY_ID === undefined ? 'S3_SECRET_ACCESS_KEY is set without S3_ACCESS_KEY_ID' : 'S3_ACCESS_KEY_ID is set without S3_SECRET_ACCESS_KEY'}`);
  }
  return Object.freeze({
    ...c,
    UPSTREAM_TENANT_MAX_CONCURRENCY: c.UPSTREAM_TENANT_MAX_CONCURRENCY ?? Math.max(1, Math.floor(c.UPSTREAM_CONNECTIONS / 2)),
    PREDICTION_MAX_OPEN_SECONDS: c.PREDICTION_MAX_OPEN_SECONDS ?? Math.min(86_400, c.PREDICTION_TTL_SECONDS),
    // A prediction echoes its input, and with data: URI delivery that input carries the inlined files (base64: 4/3).
    UPSTREAM_MAX_BODY_BYTES:
      c.UPSTREAM_MAX_BODY_BYTES ??
      Math.max(16 * 1024 * 1024, c.BODY_LIMIT_BYTES + 1024 * 1024 + (c.FILES_DELIVERY === 'data-uri' ? Math.ceil((c.FILES_MAX_BYTES * 4) / 3) : 0)),
  });
}

/** Which Redis the gateway uses, if any: one server, a Sentinel-watched primary, or a Cluster. */
export function redisMode(config: Config): 'single' | 'sentinel' | 'cluster' | undefined {
  if (config.REDIS_URL) return 'single';
  if (config.REDIS_SENTINELS) return 'sentinel';
  if (config.REDIS_CLUSTER_NODES) return 'cluster';
  return undefined;
}

/**
 * A whole-number setting of the tools around the gateway (simulator, demo, bench, soak): the same checks and
 * messages as the gateway's own config. Unset or blank gives the fallback.
 */
export function intFromEnv(env: Record<string, string | undefined>, name: string, fallback: number, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  const raw = env[name]?.trim();
  if (!raw) return fallback;
  const r = int(min, max).safeParse(raw);
  if (!r.success) throw new ConfigError(`invalid configuration: ${name} ${r.error.issues[0]!.message}`);
  return r.data;
}
