// The one place that chooses a store: Redis when REDIS_URL is set, else in-memory.
import type { Config } from '../config.js';
import { MemoryStore } from './memory-store.js';
import { RedisStore, createRedisClient } from './redis-store.js';
import type { Store } from './store.js';

export type { Store } from './store.js';

export function createStore(config: Config, onRedisEvent?: (event: string, detail?: string) => void): Store {
  const opts = { predictionTtlSeconds: config.PREDICTION_TTL_SECONDS, cacheTtlSeconds: config.CACHE_TTL_SECONDS };
  if (config.REDIS_URL) return new RedisStore(createRedisClient(config.REDIS_URL, config.REDIS_KEY_PREFIX, onRedisEvent), opts);
  return new MemoryStore({ ...opts, maxEntries: config.MEMORY_STORE_MAX_ENTRIES });
}
