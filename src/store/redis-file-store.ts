// Files in Redis, shared by every replica: `file:{f:<id>}` is a hash (meta JSON, data bytes) that expires with the
// file; per tenant, `files:{t:<tenant>}` orders its ids by upload time and `filesizes:{t:<tenant>}` holds
// "size expiresAt" per id, so the quota check and the claim of the bytes are one script. A file is read by its id
// alone (the signed-link route knows no tenant), so it has its own hash tag, and an upload is two steps: the
// tenant's quota (claims the size), then the file. A write that fails after the claim releases it; only a process
// that dies between the two leaves a size counted for a file that is not there, until that file's expiry (stricter,
// never looser).
import type { Redis } from 'ioredis';
import { rethrowUnavailable } from '../errors.js';
import type { FileMeta, FilePage, FileStore } from './file-store.js';
import { keys } from './keys.js';

// {t:} KEYS: index, sizes. ARGV: id, createdAt, size, quota, now, expiresAt, ttl ms.
// Forgets the tenant's expired files first, then refuses (returning the bytes in use) or claims the size.
const QUOTA = `
local used = 0
local sizes = redis.call('HGETALL', KEYS[2])
for i = 1, #sizes, 2 do
  local size, exp = string.match(sizes[i + 1], '^(%d+) (%d+)$')
  if not size or tonumber(exp) <= tonumber(ARGV[5]) then
    redis.call('HDEL', KEYS[2], sizes[i])
    redis.call('ZREM', KEYS[1], sizes[i])
  elseif sizes[i] ~= ARGV[1] then
    used = used + tonumber(size)
  end
end
if used + tonumber(ARGV[3]) > tonumber(ARGV[4]) then return used end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3] .. ' ' .. ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[7], 'GT')
redis.call('PEXPIRE', KEYS[2], ARGV[7], 'GT')
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[7]) end
if redis.call('PTTL', KEYS[2]) < 0 then redis.call('PEXPIRE', KEYS[2], ARGV[7]) end
return -1`;

// {f:} KEYS: file. ARGV: tenant. Deletes only the tenant's own file (the tenant's index entries follow).
const DELETE = `
local meta = redis.call('HGET', KEYS[1], 'meta')
if not meta then return 0 end
local ok, m = pcall(cjson.decode, meta)
if not ok or m.tenant ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1`;

type ScriptedRedis = Redis & {
  fgwFileQuota(...args: (string | number)[]): Promise<number>;
  fgwFileDelete(...args: string[]): Promise<number>;
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
    if (!('fgwFileQuota' in client)) client.defineCommand('fgwFileQuota', { numberOfKeys: 2, lua: QUOTA });
    if (!('fgwFileDelete' in client)) client.defineCommand('fgwFileDelete', { numberOfKeys: 1, lua: DELETE });
  }

  async put(meta: FileMeta, bytes: Buffer, quotaBytes: number) {
    // Serialised before the claim: a meta that cannot be written must not cost quota.
    const json = JSON.stringify(meta);
    const now = Date.now();
    const ttl = Math.max(1, meta.expiresAt - now);
    const used = await this.#client
      .fgwFileQuota(keys.files(meta.tenant), keys.fileSizes(meta.tenant), meta.id, meta.createdAt, meta.size, quotaBytes, now, meta.expiresAt, ttl)
      .catch(rethrowUnavailable);
    if (used >= 0) return { stored: false as const, usedBytes: used };
    try {
      // One key: a MULTI is slot-safe. EXEC resolves even when a command in it failed: look at each reply.
      const replies = await this.#client.multi().hset(keys.file(meta.id), 'meta', json, 'data', bytes).pexpire(keys.file(meta.id), ttl).exec();
      const failed = replies?.find(([err]) => err)?.[0];
      if (!replies || failed) throw failed ?? new Error('the file write was discarded');
    } catch (err) {
      // The claim is for a file that is not there: give it back (best effort; lost, it counts until its expiry).
      await this.#unindex(meta.tenant, meta.id).catch(() => {});
      rethrowUnavailable(err);
    }
    return { stored: true as const };
  }

  /** Forgets a file in its tenant's index and sizes: both keys are the tenant's (one slot). */
  #unindex(tenant: string, id: string) {
    return this.#client.multi().zrem(keys.files(tenant), id).hdel(keys.fileSizes(tenant), id).exec();
  }

  async meta(id: string) {
    return parseMeta(await this.#client.hget(keys.file(id), 'meta').catch(rethrowUnavailable));
  }

  async content(id: string) {
    const [meta, data] = await this.#client.hmgetBuffer(keys.file(id), 'meta', 'data').catch(rethrowUnavailable);
    const m = parseMeta(meta);
    return m && data ? { meta: m, bytes: data } : null;
  }

  async delete(id: string, tenant: string) {
    if ((await this.#client.fgwFileDelete(keys.file(id), tenant).catch(rethrowUnavailable)) !== 1) return false;
    // Lost in a failure, the entries only count until the file's expiry.
    await this.#unindex(tenant, id).catch(rethrowUnavailable);
    return true;
  }

  async list(tenant: string, q: { limit: number; before?: number }): Promise<FilePage> {
    const files: FileMeta[] = [];
    let before = q.before === undefined ? '+inf' : `(${q.before}`;
    // Ids whose file expired stay in the index until the next upload prunes it: skip them and read on.
    for (let round = 0; round < 5; round++) {
      const ids = await this.#client.zrevrangebyscore(keys.files(tenant), before, '-inf', 'WITHSCORES', 'LIMIT', 0, q.limit + 1).catch(rethrowUnavailable);
      if (ids.length === 0) return { files, hasMore: false };
      // One HGET each (every file is its own slot); auto-pipelining sends them together.
      const reads: Promise<string | null>[] = [];
      for (let i = 0; i < ids.length; i += 2) reads.push(this.#client.hget(keys.file(ids[i]!), 'meta'));
      const metas = await Promise.all(reads).catch(rethrowUnavailable);
      for (const json of metas) {
        const m = parseMeta(json);
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
