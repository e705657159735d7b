// One redis-server for the whole run, on a free port, unless REDIS_URL is given, and next to it a 3-master Redis
// Cluster and a Sentinel-watched primary with a replica, for the suites that run on every mode. Files isolate by
// key prefix. (The Sentinel failover test starts a group of its own: it kills the primary.)
import type { TestProject } from 'vitest/node';
import { RedisServer } from '../support/redis.js';
import { RedisCluster, RedisSentinelGroup, startAll } from '../support/redis-topologies.js';

declare module 'vitest' {
  export interface ProvidedContext {
    redisUrl: string;
    /** REDIS_CLUSTER_NODES of the run's Cluster. */
    redisCluster: string;
    /** REDIS_SENTINELS and REDIS_SENTINEL_NAME of the run's Sentinel group. */
    redisSentinels: string;
    redisSentinelName: string;
  }
}

export default async function setup(project: TestProject) {
  const [server, cluster, group] = await startAll<[RedisServer | undefined, RedisCluster, RedisSentinelGroup]>(
    [async () => (process.env.REDIS_URL ? undefined : RedisServer.start()), () => RedisCluster.start(), () => RedisSentinelGroup.start()],
    async (s) => (s as { destroy(): Promise<void> } | undefined)?.destroy(),
  );
  project.provide('redisUrl', process.env.REDIS_URL ?? server!.url);
  project.provide('redisCluster', cluster.nodes);
  project.provide('redisSentinels', group.sentinels);
  project.provide('redisSentinelName', group.name);
  return async () => {
    await Promise.all([server?.destroy(), cluster.destroy(), group.destroy()]);
  };
}
