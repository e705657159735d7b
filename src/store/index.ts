// The one place that chooses the state: Redis when REDIS_URL is set, else in-memory. The rate-limit store comes with
// it, so nothing else needs to know which kind it got (or reach into the Redis client).
import type { Config } from '../config.js';
import type { FileStore } from './file-store.js';
import { MemoryFileStore } from './memory-file-store.js';
import { MemoryStore } from './memory-store.js';
import { leasedRedisStore } from './rate-limit-store.js';
import { RedisFileStore } from './redis-file-store.js';
import { RedisStore, createRedisClient } from './redis-store.js';
import type { Store } from './store.js';

export type { Store } from './store.js';

export interface State {
  store: Store;
  /** Uploaded files, in the same Redis (or this process). */
  files: FileStore;
  /** A store class for @fastify/rate-limit's `store` option; undefined: its own in-process LocalStore. */
  rateLimitStore?: ReturnType<typeof leasedRedisStore>;
}

export function createState(config: Config, onRedisEvent?: (event: string, detail?: string) => void): State {
  const opts = { predictionTtlSeconds: config.PREDICTION_TTL_SECONDS, cacheTtlSeconds: config.CACHE_TTL_SECONDS };
  if (!config.REDIS_URL) {
    return {
      store: new MemoryStore({ ...opts, maxEntries: config.MEMORY_STORE_MAX_ENTRIES, maxBytes: config.MEMORY_STORE_MAX_BYTES }),
      files: new MemoryFileStore({ maxBytes: config.MEMORY_STORE_MAX_BYTES }),
    };
  }
  const client = createRedisClient(config.REDIS_URL, config.REDIS_KEY_PREFIX, onRedisEvent);
  return {
    store: new RedisStore(client, opts),
    files: new RedisFileStore(client),
    rateLimitStore: leasedRedisStore(client, 'rl:', config.RATE_LIMIT_LEASE_MAX),
  };
}
