// Every Redis key name (after REDIS_KEY_PREFIX), in one place. Redis Cluster hashes the first {...} of a key, so
// each key carries a hash tag, and each script touches the keys of one tag only:
//   {p:<id>}      a prediction: owner, its upstream, its record (the one stored body), the terminal-cache flag (looked
//                 up by id, tenant unknown)
//   {t:<tenant>}  a tenant: index, usage, "counted once" markers, idempotency, budgets (its tokens' too),
//                 reservations, running count, files index and sizes
//   {f:<id>}      an uploaded file (looked up by id)
//   {g}           gateway-wide: the fair-share windows of UPSTREAM_CREATE_LIMIT (one slot, a few small hashes)
//   {x}           gateway-wide: kept outputs by when their retention ends (one sorted set)
//   {o}           gateway-wide: the open set (predictions not yet seen ending), their metadata, the watcher's
//                 404 counts and its upstream read budget (one slot: the watcher's claim is one script)
// Keys only ever used alone (versions, token counters, kv) are slot-safe whatever their name, and keep the names
// they had before Cluster support, so an upgrade loses none of them (webhook secrets above all). The rate-limit
// windows get a tag per window. README "Scaling" says why the create path is split across {p:} and {t:}.
const p = (id: string) => `{p:${id}}`;
const t = (tenant: string) => `{t:${tenant}}`;

export const keys = {
  owner: (id: string) => `own:${p(id)}`,
  record: (id: string) => `rec:${p(id)}`,
  /** The upstream account that created it (src/upstream/upstreams.ts): every later call goes there. */
  pin: (id: string) => `pin:${p(id)}`,
  /** '1' while the record is the end and may be served without asking the upstream (CACHE_TTL_SECONDS). */
  terminal: (id: string) => `term:${p(id)}`,
  /** What the watcher last wrote over the record (status rank, logs length, digest): observations only move forward. */
  life: (id: string) => `life:${p(id)}`,
  open: 'open:{o}',
  openMeta: 'openm:{o}',
  openStrikes: 'opens:{o}',
  openReads: 'openr:{o}',
  /** Open browser streams (src/lifecycle/streams.ts): a tenant's, and an address's. */
  streams: (tenant: string) => `streams:${t(tenant)}`,
  streamsOfIp: (ip: string) => `streams:{i:${ip}}`,
  index: (tenant: string) => `idx:${t(tenant)}`,
  seen: (tenant: string, id: string) => `seen:${t(tenant)}:${id}`,
  usage: (tenant: string, day: string) => `usage:${t(tenant)}:${day}`,
  /** `key` starts with the tenant id and `:` (src/predictions/idempotency.ts); tenant ids hold no `:`. */
  idem: (key: string) => {
    const i = key.indexOf(':');
    return i < 0 ? `idem:${t(key)}` : `idem:${t(key.slice(0, i))}:${key.slice(i + 1)}`;
  },
  budgetTenant: (tenant: string, period: string) => `bud:t:${t(tenant)}:${period}`,
  budgetToken: (tenant: string, jti: string) => `bud:k:${t(tenant)}:${jti}`,
  reservation: (tenant: string, rid: string) => `rsv:r:${t(tenant)}:${rid}`,
  reservationOf: (tenant: string, id: string) => `rsv:p:${t(tenant)}:${id}`,
  reservations: (tenant: string) => `rsvx:${t(tenant)}`,
  running: (tenant: string) => `run:${t(tenant)}`,
  shareWindow: (window: number | string) => `fs:{g}:${window}`,
  version: (version: string) => `ver:${version}`,
  counter: (key: string) => `cnt:${key}`,
  file: (id: string) => `file:{f:${id}}`,
  files: (tenant: string) => `files:${t(tenant)}`,
  fileSizes: (tenant: string) => `filesizes:${t(tenant)}`,
  /** Kept outputs (src/outputs/): a prediction's manifest and copy claims, a tenant's bytes, the retention set. */
  outputs: (id: string) => `outm:${p(id)}`,
  outputsClaim: (id: string, attempt: number) => `outc:${p(id)}:${attempt}`,
  outputsBytes: (tenant: string) => `outb:${t(tenant)}`,
  outputsExpiry: 'outx:{x}',
  /** @fastify/rate-limit's keys (`<limit>:<tenant or address>`) and the failed-auth counters. */
  rate: (key: string) => `rl:{r:${key}}`,
  kv: (key: string) => `kv:${key}`,
  /** API-managed tenants, their keys, revisions, the change counter, the audit log and rotation answers: one slot
   *  ({a}), so every admin change is one script; bounded by what operators create, the log by AUDIT_RETENTION_DAYS. */
  admin: (name: string) => `adm:{a}:${name}`,
  /** Requests and creates per API key id and UTC day (src/admin/key-usage.ts). */
  keyUsage: (day: string) => `kuse:{a}:${day}`,
};
