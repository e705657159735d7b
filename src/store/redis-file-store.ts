// Files in Redis, shared by every replica: `file:<id>` is a hash (meta JSON, data bytes) that expires with the
// file; per tenant, `files:<tenant>` orders its ids by upload time and `filesizes:<tenant>` holds "size expiresAt"
// per id, so the quota check and the write are one script.
import type { Redis } from 'ioredis';
import { storeUnavailable } from '../errors.js';
import type { FileMeta, FilePage, FileStore } from './file-store.js';

// KEYS: file, index, sizes. ARGV: meta, data, ttl ms, id, createdAt, size, quota, now, expiresAt.
// Forgets the tenant's expired files first, then refuses (returning the bytes in use) or stores.
const PUT = `
local used = 0
local sizes = redis.call('HGETALL', KEYS[3])
for i = 1, #sizes, 2 do
  local size, exp = string.match(sizes[i + 1], '^(%d+) (%d+)$')
  if not size or tonumber(exp) <= tonumber(ARGV[8]) then
    redis.call('HDEL', KEYS[3], sizes[i])
    redis.call('ZREM', KEYS[2], sizes[i])
  else
    used = used + tonumber(size)
  end
end
if used + tonumber(ARGV[6]) > tonumber(ARGV[7]) then return used end
redis.call('HSET', KEYS[1], 'meta', ARGV[1], 'data', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[4])
redis.call('HSET', KEYS[3], ARGV[4], ARGV[6] .. ' ' .. ARGV[9])
redis.call('PEXPIRE', KEYS[2], ARGV[3], 'GT')
redis.call('PEXPIRE', KEYS[3], ARGV[3], 'GT')
if redis.call('PTTL', KEYS[2]) < 0 then redis.call('PEXPIRE', KEYS[2], ARGV[3]) end
if redis.call('PTTL', KEYS[3]) < 0 then redis.call('PEXPIRE', KEYS[3], ARGV[3]) end
return -1`;

// KEYS: file, index, sizes. ARGV: tenant, id. Deletes only the tenant's own file.
const DELETE = `
local meta = redis.call('HGET', KEYS[1], 'meta')
if not meta then return 0 end
local ok, m = pcall(cjson.decode, meta)
if not ok or m.tenant ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[2])
return 1`;

type ScriptedRedis = Redis & {
  fgwFilePut(...args: (string | number | Buffer)[]): Promise<number>;
  fgwFileDelete(...args: string[]): Promise<number>;
};

const unavailable = (err: unknown): never => {
  throw storeUnavailable(err);
};

const parseMeta = (json: string | Buffer | null | undefined): FileMeta | null => {
  if (!json) return null;
  const meta = JSON.parse(String(json)) as FileMeta;
  // An expired hash may outlive its time by a moment (Redis expires lazily); never serve it.
  return meta.expiresAt > Date.now() ? meta : null;
};

export class RedisFileStore implements FileStore {
  readonly #client: ScriptedRedis;

  /** Shares the state store's client (that store closes it). */
  constructor(client: Redis) {
    this.#client = client as ScriptedRedis;
    if (!('fgwFilePut' in client)) client.defineCommand('fgwFilePut', { numberOfKeys: 3, lua: PUT });
    if (!('fgwFileDelete' in client)) client.defineCommand('fgwFileDelete', { numberOfKeys: 3, lua: DELETE });
  }

  async put(meta: FileMeta, bytes: Buffer, quotaBytes: number) {
    const now = Date.now();
    const used = await this.#client
      .fgwFilePut(`file:${meta.id}`, `files:${meta.tenant}`, `filesizes:${meta.tenant}`, JSON.stringify(meta), bytes, Math.max(1, meta.expiresAt - now), meta.id, meta.createdAt, meta.size, quotaBytes, now, meta.expiresAt)
      .catch(unavailable);
    return used < 0 ? { stored: true as const } : { stored: false as const, usedBytes: used };
  }

  async meta(id: string) {
    return parseMeta(await this.#client.hget(`file:${id}`, 'meta').catch(unavailable));
  }

  async content(id: string) {
    const [meta, data] = await this.#client.hmgetBuffer(`file:${id}`, 'meta', 'data').catch(unavailable);
    const m = parseMeta(meta);
    return m && data ? { meta: m, bytes: data } : null;
  }

  async delete(id: string, tenant: string) {
    return (await this.#client.fgwFileDelete(`file:${id}`, `files:${tenant}`, `filesizes:${tenant}`, tenant, id).catch(unavailable)) === 1;
  }

  async list(tenant: string, q: { limit: number; before?: number }): Promise<FilePage> {
    const files: FileMeta[] = [];
    let before = q.before === undefined ? '+inf' : `(${q.before}`;
    // Ids whose file expired stay in the index until the next upload prunes it: skip them and read on.
    for (let round = 0; round < 5; round++) {
      const ids = await this.#client.zrevrangebyscore(`files:${tenant}`, before, '-inf', 'WITHSCORES', 'LIMIT', 0, q.limit + 1).catch(unavailable);
      if (ids.length === 0) return { files, hasMore: false };
      const pipe = this.#client.pipeline();
      for (let i = 0; i < ids.length; i += 2) pipe.hget(`file:${ids[i]}`, 'meta');
      const metas = (await pipe.exec().catch(unavailable)) ?? [];
      for (const [err, json] of metas) {
        const m = err ? null : parseMeta(json as string | null);
        if (!m) continue;
        if (files.length === q.limit) return { files, hasMore: true };
        files.push(m);
      }
      if (ids.length < 2 * (q.limit + 1)) return { files, hasMore: false };
      before = `(${ids[ids.length - 1]}`;
    }
    return { files, hasMore: true };
  }
}
