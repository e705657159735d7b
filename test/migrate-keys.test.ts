// npm run migrate-keys: state written under the names used before Cluster support moves to the tagged names, so
// that owners, cached predictions, lists, usage, idempotency records and files survive the upgrade; twice is once.
import { randomUUID } from 'node:crypto';
import { afterAll, describe, expect, inject, it } from 'vitest';
import { RedisFileStore } from '../src/store/redis-file-store.js';
import { createRedisClient } from '../src/store/redis-client.js';
import { migrateKeys } from '../src/store/migrate-keys.js';
import { RedisStore } from '../src/store/redis-store.js';
import { waitFor } from './helpers/stack.js';

const prefix = `migrate:${randomUUID()}:`;
const raw = createRedisClient(inject('redisUrl'), '');
const store = new RedisStore(createRedisClient(inject('redisUrl'), prefix), { predictionTtlSeconds: 3600, cacheTtlSeconds: 3600 });
afterAll(async () => {
  await Promise.all([raw.quit(), store.close()]);
});

describe('migrate-keys', () => {
  it('moves owners, caches, lists, usage, idempotency records, budgets and files to the new names, and a second run finds nothing', async () => {
    await waitFor(() => raw.status === 'ready' && store.isReady(), 5000, 'redis');
    const P = prefix;
    const done = JSON.stringify({ id: 'old1', status: 'succeeded' });
    const fileMeta = JSON.stringify({ id: 'f1', tenant: 'team-m', expiresAt: Date.now() + 3_600_000 });
    await raw
      .multi()
      .set(`${P}own:old1`, 'team-m', 'EX', 3600)
      .set(`${P}rec:old1`, JSON.stringify({ id: 'old1', status: 'starting' }), 'EX', 3600)
      .set(`${P}term:old1`, done, 'EX', 3600)
      .set(`${P}seen:old1`, '1', 'EX', 3600)
      .zadd(`${P}idx:team-m`, Date.now() * 1000, 'old1')
      .hset(`${P}usage:team-m:2026-12-01`, 'creates', 1, 'succeeded', 1)
      .set(`${P}idem:team-m:abc`, JSON.stringify({ state: 'done', fingerprint: 'fp', status: 201, body: done }), 'EX', 3600)
      .hset(`${P}bud:t:team-m:2026-12`, 'creates:s', 3, 'creates:r', 2)
      .hset(`${P}file:f1`, 'meta', fileMeta, 'data', 'bytes')
      .zadd(`${P}files:team-m`, 1, 'f1')
      .hset(`${P}filesizes:team-m`, 'f1', `5 ${Date.now() + 3_600_000}`)
      .exec();
    // A day the new gateway already counted into: merged, not overwritten.
    await raw.hset(`${P}usage:{t:team-m}:2026-12-01`, 'creates', 2);
    const dry = await migrateKeys(raw, P, { dryRun: true });
    expect(dry.kinds.owners).toEqual({ found: 1, moved: 1 });
    expect(await store.lookup('old1')).toEqual({ owner: null, terminal: null, upstream: null });

    const report = await migrateKeys(raw, P, { dryRun: false });
    expect(Object.values(report.kinds).reduce((n, k) => n + k.moved, 0)).toBe(12);
    expect(await store.lookup('old1')).toEqual({ owner: 'team-m', terminal: done, upstream: null });
    // One body per prediction: the cached end was written over the record, the cache is a flag, the list shows the end.
    expect(await raw.get(`${P}rec:{p:old1}`)).toBe(done);
    expect(await raw.get(`${P}term:{p:old1}`)).toBe('1');
    expect((await store.listPage('team-m', { limit: 10 })).entries.map((e) => e.json)).toEqual([done]);
    expect((await store.listPage('team-m', { limit: 10 })).entries.map((e) => e.id)).toEqual(['old1']);
    expect(await store.usageGet('team-m', ['2026-12-01'])).toEqual({ '2026-12-01': { creates: 3, succeeded: 1 } });
    expect((await store.idemGet('team-m:abc'))?.state).toBe('done');
    expect(await store.budgetGet([`bud:t:{t:team-m}:2026-12`])).toEqual([{ 'creates:s': 3 }]);
    // Counted once: the marker moved under the tenant, so the terminal is not counted again.
    await store.recordTerminal({ id: 'old1', tenant: 'team-m', json: done, status: 'succeeded', predictTime: 0, day: '2026-12-01' });
    expect((await store.usageGet('team-m', ['2026-12-01']))['2026-12-01']!.succeeded).toBe(1);
    const fileClient = createRedisClient(inject('redisUrl'), prefix);
    await waitFor(() => fileClient.status === 'ready', 5000, 'redis');
    const files = new RedisFileStore(fileClient);
    expect((await files.meta('f1'))?.tenant).toBe('team-m');
    expect((await files.list('team-m', { limit: 10 })).files.map((f) => f.id)).toEqual(['f1']);

    await fileClient.quit();
    const again = await migrateKeys(raw, P, { dryRun: false });
    expect(Object.values(again.kinds).every((k) => k.found === 0)).toBe(true);
    expect(await raw.keys(`${P}*`)).not.toContain(`${P}own:old1`);
  });
});
