// The one-off move of state written before Cluster support (key names without hash tags) to the names keys.ts
// gives it (npm run migrate-keys: src/cli/migrate-keys.ts). Idempotent: each old key is merged into its new name
// (never over a newer value) and then deleted, so a second run finds nothing left to do.
import type { Redis } from 'ioredis';
import { keys } from './keys.js';

/** How a kind of old key is found, what it becomes, and how it merges into a new key that already exists. */
interface Rule {
  kind: string;
  /** After the prefix; the SCAN pattern is the prefix and this. */
  match: string;
  /** The new name (after the prefix) of an old one, or undefined to leave it alone. */
  rename(rest: string, client: Redis, prefix: string): Promise<string | undefined>;
  merge: 'keep-newer' | 'zadd' | 'hash-add' | 'hash-nx' | 'hash-spent';
}

// Old names: own:<id>, rec:<id>, term:<id>, seen:<id>, idx:<tenant>, usage:<tenant>:<day>, idem:<tenant>:<...>,
// bud:t:<tenant>:<period>, file:<id>, files:<tenant>, filesizes:<tenant>. A name that holds `{` is already new.
const afterColon = (rest: string) => {
  const i = rest.indexOf(':');
  return i < 0 ? undefined : ([rest.slice(0, i), rest.slice(i + 1)] as const);
};
/** A rename of `<tenant>:<rest>` names into `make(tenant, rest)`. */
const split = (make: (tenant: string, rest: string) => string) => async (name: string) => {
  const p = afterColon(name);
  return p && make(p[0], p[1]);
};
const RULES: Rule[] = [
  { kind: 'owners', match: 'own:*', rename: async (id) => keys.owner(id), merge: 'keep-newer' },
  { kind: 'create records', match: 'rec:*', rename: async (id) => keys.record(id), merge: 'keep-newer' },
  { kind: 'cached terminals', match: 'term:*', rename: async (id) => keys.terminal(id), merge: 'keep-newer' },
  {
    kind: 'usage-counted markers',
    match: 'seen:*',
    // The marker moves under its tenant's tag: the owner says which tenant that is.
    rename: async (id, client, prefix) => {
      const owner = (await client.get(`${prefix}${keys.owner(id)}`)) ?? (await client.get(`${prefix}own:${id}`));
      return owner ? keys.seen(owner, id) : undefined;
    },
    merge: 'keep-newer',
  },
  { kind: 'tenant indexes', match: 'idx:*', rename: async (t) => keys.index(t), merge: 'zadd' },
  {
    kind: 'usage days',
    match: 'usage:*',
    rename: split(keys.usage),
    merge: 'hash-add',
  },
  { kind: 'idempotency records', match: 'idem:*', rename: async (rest) => (rest.includes(':') ? keys.idem(rest) : undefined), merge: 'keep-newer' },
  {
    kind: 'tenant budgets (spent only)',
    match: 'bud:t:*',
    rename: split(keys.budgetTenant),
    merge: 'hash-spent',
  },
  { kind: 'files', match: 'file:*', rename: async (id) => keys.file(id), merge: 'keep-newer' },
  { kind: 'file indexes', match: 'files:*', rename: async (t) => keys.files(t), merge: 'zadd' },
  { kind: 'file sizes', match: 'filesizes:*', rename: async (t) => keys.fileSizes(t), merge: 'hash-nx' },
];

export interface MigrationReport {
  /** Per kind: old keys found, and moved (or, in a dry run, that would be). */
  kinds: Record<string, { found: number; moved: number }>;
}

/** Every node that holds keys: the masters of a Cluster, else the one server. */
function scanTargets(client: Redis): Redis[] {
  const c = client as unknown as { isCluster?: boolean; nodes?: (role: string) => Redis[] };
  return c.isCluster && c.nodes ? c.nodes('master') : [client];
}

async function moveOne(client: Redis, rule: Rule, from: string, to: string): Promise<void> {
  const ttl = await client.pttl(from);
  if (ttl === -2) return; // gone meanwhile
  const keepTtl = async () => {
    if (ttl > 0) await client.pexpire(to, ttl, 'GT');
  };
  const exists = (await client.exists(to)) === 1;
  if (!exists || rule.merge === 'keep-newer') {
    if (!exists) {
      const dump = await client.dumpBuffer(from);
      if (dump) await client.restore(to, ttl > 0 ? ttl : 0, dump).catch((err: Error) => {
        if (!/BUSYKEY/.test(err.message)) throw err; // written by a gateway between our check and now: newer
      });
      if (rule.merge === 'hash-spent') {
        // Reserved amounts belonged to reservations that are not carried over: only what was spent moves.
        const fields = (await client.hkeys(to)).filter((f) => f.endsWith(':r'));
        if (fields.length) await client.hdel(to, ...fields);
      }
    }
  } else if (rule.merge === 'zadd') {
    const flat = await client.zrange(from, '0', '-1', 'WITHSCORES');
    for (let i = 0; i < flat.length; i += 2) await client.zadd(to, 'NX', flat[i + 1]!, flat[i]!);
    await keepTtl();
  } else {
    const h = await client.hgetall(from);
    for (const [f, v] of Object.entries(h)) {
      if (rule.merge === 'hash-add') await client.hincrbyfloat(to, f, v);
      else if (rule.merge === 'hash-spent') {
        if (!f.endsWith(':r')) await client.hincrbyfloat(to, f, v);
      } else await client.hsetnx(to, f, v);
    }
    await keepTtl();
  }
  await client.del(from);
}

// A cached terminal that still holds the body (before one body per prediction): the body is written over the
// record (the list reads only that), and the cache becomes the flag. One slot ({p:<id>}), so safe on a Cluster.
const FOLD_TERMINAL = `
local v = redis.call('GET', KEYS[1])
if not v or v == '1' then return 0 end
if not redis.call('SET', KEYS[2], v, 'XX', 'KEEPTTL') then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then redis.call('SET', KEYS[2], v, 'PX', ttl) end
end
redis.call('SET', KEYS[1], '1', 'KEEPTTL')
return 1`;

/** Folds every cached terminal body into its record (or with `dryRun` only counts them). */
async function foldTerminals(client: Redis, prefix: string, dryRun: boolean): Promise<{ found: number; moved: number }> {
  const tally = { found: 0, moved: 0 };
  const marker = `${prefix}term:{p:`;
  for (const node of scanTargets(client)) {
    let cursor = '0';
    do {
      const [next, found] = await node.scan(cursor, 'MATCH', `${marker}*`, 'COUNT', 1000);
      cursor = next;
      for (const full of found) {
        if ((await client.strlen(full)) <= 1) continue;
        tally.found++;
        const id = full.slice(marker.length, -1);
        if (!dryRun) tally.moved += Number(await client.eval(FOLD_TERMINAL, 2, full, `${prefix}${keys.record(id)}`));
        else tally.moved++;
      }
    } while (cursor !== '0');
  }
  return tally;
}

/** Moves (or with `dryRun` only counts) every old-style key under `prefix`. `client` must have no keyPrefix. */
export async function migrateKeys(client: Redis, prefix: string, opts: { dryRun: boolean; log?: (line: string) => void }): Promise<MigrationReport> {
  const report: MigrationReport = { kinds: {} };
  for (const rule of RULES) {
    const tally = (report.kinds[rule.kind] = { found: 0, moved: 0 });
    for (const node of scanTargets(client)) {
      let cursor = '0';
      do {
        const [next, found] = await node.scan(cursor, 'MATCH', `${prefix}${rule.match}`, 'COUNT', 1000);
        cursor = next;
        for (const full of found) {
          const rest = full.slice(prefix.length + rule.match.length - 1);
          // Already new: every new name holds a hash tag.
          if (full.includes('{')) continue;
          tally.found++;
          const to = await rule.rename(rest, client, prefix);
          if (!to) continue;
          if (!opts.dryRun) await moveOne(client, rule, full, `${prefix}${to}`);
          tally.moved++;
        }
      } while (cursor !== '0');
    }
    opts.log?.(`${rule.kind}: ${tally.found} found, ${tally.moved} ${opts.dryRun ? 'would move' : 'moved'}`);
  }
  const folded = (report.kinds['cached terminals folded into their records'] = await foldTerminals(client, prefix, opts.dryRun));
  opts.log?.(`cached terminals folded into their records: ${folded.found} found, ${folded.moved} ${opts.dryRun ? 'would fold' : 'folded'}`);
  // The old reservations' expiry index is the one old key without an expiry of its own (reservations, running
  // counts and windows expire by themselves): dropped rather than left for ever.
  const stale = (report.kinds['old reservation index (dropped)'] = { found: await client.exists(`${prefix}rsvx`), moved: 0 });
  if (stale.found && !opts.dryRun) stale.moved = await client.del(`${prefix}rsvx`);
  return report;
}

