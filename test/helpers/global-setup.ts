// One redis-server for the whole run, on a free port, unless REDIS_URL is given. Files isolate by key prefix.
import type { TestProject } from 'vitest/node';
import { RedisServer } from '../support/redis.js';

declare module 'vitest' {
  export interface ProvidedContext {
    redisUrl: string;
  }
}

export default async function setup(project: TestProject) {
  if (process.env.REDIS_URL) {
    project.provide('redisUrl', process.env.REDIS_URL);
    return;
  }
  const server = await RedisServer.start();
  project.provide('redisUrl', server.url);
  return async () => {
    await server.destroy();
  };
}
