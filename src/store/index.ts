// The one place that chooses the state: Redis (one server, Sentinel or Cluster: src/store/redis-client.ts) when
// the config names one, else in-memory. The rate-limit store comes with
// it, so nothing else needs to know which kind it got (or reach into the Redis client).
import type { Config } from '../config.js';
import type { FileStore } from './file-store.js';
import { type KvStore, MemoryKvStore, RedisKvStore } from './kv-store.js';
import { MemoryFileStore } from './memory-file-store.js';
import { MemoryStore } from './memory-store.js';
import { MemoryOutputsStore, type OutputsStore, RedisOutputsStore } from './outputs-store.js';
import { MemoryPubSub, type PubSub, RedisPubSub } from './pubsub.js';
import { leasedRedisStore } from './rate-limit-store.js';
import { RedisFileStore } from './redis-file-store.js';
import { createRedisClient, redisTarget } from './redis-client.js';
import { RedisStore } from './redis-store.js';
import type { Store } from './store.js';
import { MemoryTenantStore, RedisTenantStore, type TenantStore } from './tenant-store.js';

export type { Store } from './store.js';

export interface State {
  store: Store;
  /** Uploaded files, in the same Redis (or this process). */
  files: FileStore;
  /** Small shared facts (webhook secrets and receivers, delivery failures). */
  kv: KvStore;
  /** Messages to every replica: invalidations, a prediction's changes. */
  pubsub: PubSub;
  /** API-managed tenants and keys, and the audit log (src/admin/). */
  tenantStore: TenantStore;
  /** What is known of kept outputs (manifests, copy claims, bytes per tenant); the objects live elsewhere. */
  outputs: OutputsStore;
  /** A store class for @fastify/rate-limit's `store` option; undefined: its own in-process LocalStore. */
  rateLimitStore?: ReturnType<typeof leasedRedisStore>;
}

export function createState(config: Config, onRedisEvent?: (event: string, detail?: string) => void): State {
  const opts = { predictionTtlSeconds: config.PREDICTION_TTL_SECONDS, cacheTtlSeconds: config.CACHE_TTL_SECONDS };
  const target = redisTarget(config);
  if (!target) {
    return {
      store: new MemoryStore({ ...opts, maxEntries: config.MEMORY_STORE_MAX_ENTRIES, maxBytes: config.MEMORY_STORE_MAX_BYTES }),
      files: new MemoryFileStore({ maxBytes: config.MEMORY_STORE_MAX_BYTES }),
      kv: new MemoryKvStore(),
      pubsub: new MemoryPubSub(),
      tenantStore: new MemoryTenantStore(),
      outputs: new MemoryOutputsStore(),
    };
  }
  const client = createRedisClient(target, config.REDIS_KEY_PREFIX, onRedisEvent);
  // WAIT is per connection and node: on a Cluster there is no one primary to ask.
  const waitReplicas = target.mode === 'cluster' ? 0 : config.REDIS_WAIT_REPLICAS;
  return {
    store: new RedisStore(client, opts, true, waitReplicas),
    files: new RedisFileStore(client),
    kv: new RedisKvStore(client),
    pubsub: new RedisPubSub(client, config.REDIS_KEY_PREFIX),
    tenantStore: new RedisTenantStore(client),
    outputs: new RedisOutputsStore(client),
    rateLimitStore: leasedRedisStore(client, config.RATE_LIMIT_LEASE_MAX),
  };
}
