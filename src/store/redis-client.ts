// The one place that builds Redis clients: the state client (with the key prefix) and BullMQ's connections, for
// one server (REDIS_URL), a Sentinel-watched primary (REDIS_SENTINELS) or a Cluster (REDIS_CLUSTER_NODES).
import { Cluster, Redis, type RedisOptions } from 'ioredis';
import { type Config, redisMode } from '../config.js';

/** Longest a single Redis command may take; every script the gateway runs is a few keys and microseconds. */
export const COMMAND_TIMEOUT_MS = 2000;

export type HostPort = { host: string; port: number };

export type RedisTarget =
  | { mode: 'single'; url: string }
  | { mode: 'sentinel'; sentinels: HostPort[]; name: string; username?: string; password?: string; sentinelPassword?: string; tls?: boolean }
  | { mode: 'cluster'; nodes: HostPort[]; username?: string; password?: string; tls?: boolean };

/** The Redis the config names, or undefined for the in-memory store. */
export function redisTarget(config: Config): RedisTarget | undefined {
  const auth = { username: config.REDIS_USERNAME, password: config.REDIS_PASSWORD, tls: config.REDIS_TLS };
  switch (redisMode(config)) {
    case 'single':
      return { mode: 'single', url: config.REDIS_URL! };
    case 'sentinel':
      return { mode: 'sentinel', sentinels: config.REDIS_SENTINELS!, name: config.REDIS_SENTINEL_NAME!, sentinelPassword: config.REDIS_SENTINEL_PASSWORD, ...auth };
    case 'cluster':
      return { mode: 'cluster', nodes: config.REDIS_CLUSTER_NODES!, ...auth };
    default:
      return undefined;
  }
}

// Reconnect forever with backoff capped at 5 s: recovery after an outage (or a failover) needs no restart.
const backoff = (times: number) => Math.min(100 * 2 ** Math.min(times, 6), 5000);

const asTarget = (t: RedisTarget | string): RedisTarget => (typeof t === 'string' ? { mode: 'single', url: t } : t);

function build(target: RedisTarget, opts: RedisOptions): Redis {
  if (target.mode === 'single') return new Redis(target.url, opts);
  const tls = target.tls ? {} : undefined;
  const auth = { username: target.username, password: target.password };
  if (target.mode === 'sentinel') {
    return new Redis({
      ...opts,
      ...auth,
      sentinels: target.sentinels,
      name: target.name,
      sentinelPassword: target.sentinelPassword,
      tls,
      ...(tls ? { enableTLSForSentinelMode: true, sentinelTLS: tls } : {}),
      sentinelRetryStrategy: backoff,
      // Drop the connection as soon as the sentinels announce a new primary, rather than at the next failure.
      failoverDetector: true,
    });
  }
  const { keyPrefix, enableOfflineQueue, enableAutoPipelining, retryStrategy: _r, ...nodeOpts } = opts;
  // The gateway's code is written against the Redis class; Cluster offers the same commands and defineCommand.
  // Multi-key commands must stay within one hash slot: src/store/keys.ts gives every key its tag.
  return new Cluster(target.nodes, {
    keyPrefix,
    enableOfflineQueue,
    enableAutoPipelining,
    clusterRetryStrategy: backoff,
    slotsRefreshTimeout: 2000,
    redisOptions: { ...nodeOpts, ...auth, tls },
  }) as unknown as Redis;
}

/** The state client: prefixed keys, no offline queue (503 at once while Redis is away), bounded commands. */
export function createRedisClient(target: RedisTarget | string, keyPrefix: string, onEvent?: (event: string, detail?: string) => void): Redis {
  const client = build(asTarget(target), {
    keyPrefix,
    // Fail fast while disconnected (503 + Retry-After) instead of queueing requests behind an outage.
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    // A Redis that holds the connection open but stops answering (paused, swapping, a network black hole) would
    // otherwise hold every request forever: each command fails after this long instead, and the request gets 503.
    commandTimeout: COMMAND_TIMEOUT_MS,
    enableAutoPipelining: true,
    connectTimeout: 5000,
    retryStrategy: backoff,
    lazyConnect: false,
  });
  client.on('ready', () => onEvent?.('ready'));
  client.on('error', (err: Error) => onEvent?.('error', err.message));
  client.on('close', () => onEvent?.('error', 'connection closed'));
  return client;
}

/**
 * A connection for BullMQ: no ioredis keyPrefix (BullMQ has `prefix`), no per-command retry limit. The same connect
 * timeout as the state client, and, except on the worker's blocking connection (whose commands wait by design), the
 * same command timeout: a stalled Redis fails a queue call rather than holds it.
 */
export function createBullConnection(target: RedisTarget | string, onError: (err: Error) => void, blocking = false): Redis | Cluster {
  const c = build(asTarget(target), { maxRetriesPerRequest: null, retryStrategy: backoff, connectTimeout: 5000, commandTimeout: blocking ? undefined : COMMAND_TIMEOUT_MS });
  c.on('error', onError);
  return c;
}

/** BullMQ's key prefix: on a Cluster it must be a hash tag, so that each queue's keys share one slot. */
export function bullPrefix(target: RedisTarget | string, keyPrefix: string): string {
  return asTarget(target).mode === 'cluster' ? `{${keyPrefix}bull}` : `${keyPrefix}bull`;
}
