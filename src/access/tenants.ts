// The tenants file: its schema, key hashing, lookup by hash, and hot reload (file change or SIGHUP).
import { hash, randomBytes } from 'node:crypto';
import { readFileSync, watch, type FSWatcher } from 'node:fs';
import { basename, dirname } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { parseDuration } from '../config.js';

const SHA256_PREFIX = 'sha256:';

const WindowSchema = z.union([z.string(), z.number()]).transform((v, ctx) => {
  const ms = parseDuration(v);
  if (ms === undefined) {
    ctx.addIssue({ code: 'custom', message: 'must be a duration from 1 ms to 366 days, such as "1 minute" or milliseconds' });
    return z.NEVER;
  }
  return ms;
});

// Strict objects: a misspelt setting ("ratelimit") must be an error, not a tenant silently on the defaults.
const LimitSchema = z.strictObject({
  max: z.number().int().positive(),
  timeWindow: WindowSchema.default(60_000),
});

// A key travels in an Authorization header, so it can hold no spaces.
const KeySchema = z.string().refine(
  (k) => (k.startsWith(SHA256_PREFIX) ? /^[0-9a-f]{64}$/i.test(k.slice(SHA256_PREFIX.length)) : /^\S{16,}$/.test(k)),
  'a key must be at least 16 characters without spaces, or sha256:<64 hex digits>',
);

// Model patterns: "owner/name" or "owner/*".
export const ModelPatternSchema = z.string().regex(/^[a-z0-9][a-z0-9._-]*\/(\*|[a-z0-9][a-z0-9._-]*)$/i, 'must be "owner/name" or "owner/*"');

// Browsers send origins in lower case, so `https://App.example.com` in the file must still match.
const OriginSchema = z
  .string()
  .refine((o) => o === '*' || /^https?:\/\/[^/\s]+$/.test(o), 'must be an origin such as https://app.example.com (no path), or "*"')
  .transform((o) => o.toLowerCase());

// A budget is a ceiling per UTC (or BUDGET_TIMEZONE) day or calendar month; see src/budget/.
const BudgetLimitSchema = z.strictObject({
  max: z.number({ error: 'must be a number' }).positive('must be above 0'),
  period: z.enum(['day', 'month'], { error: 'must be "day" or "month"' }),
});
export const BudgetSchema = z.strictObject({
  creates: BudgetLimitSchema.extend({ max: z.number().int('must be a whole number').positive('must be above 0') }).optional(),
  predictTimeSeconds: BudgetLimitSchema.optional(),
  cost: BudgetLimitSchema.optional(),
});

export const TenantSchema = z.strictObject({
  id: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, 'must be 1-64 letters, digits, ".", "_" or "-"'),
  keys: z.array(KeySchema).min(1, 'needs at least one key'),
  rateLimit: LimitSchema.extend({ perIp: LimitSchema.optional() }).optional(),
  createRateLimit: LimitSchema.optional(),
  models: z.array(ModelPatternSchema).optional(),
  versions: z.array(z.string().min(1)).optional(),
  allowedOrigins: z.array(OriginSchema).default([]),
  // Signs the webhooks the gateway delivers to this tenant (Standard Webhooks); unset: generated and shown once.
  webhookSecret: z.string().regex(/^whsec_[A-Za-z0-9+/=]{32,}$/, 'must be a Standard Webhooks secret: whsec_ and at least 24 random bytes in base64').optional(),
  budget: BudgetSchema.optional(),
  /** Predictions starting or processing at once; past it a create gets 429. */
  maxRunning: z.number().int('must be a whole number').positive('must be above 0').optional(),
  /** A prediction still running this many seconds after its create is canceled by the gateway, upstream included. */
  maxRunSeconds: z.number().int('must be a whole number').positive('must be above 0').optional(),
  /** What every token this tenant mints may spend over its lifetime at most, and gets when it asks for no budget. */
  tokenBudget: z
    .strictObject({
      creates: z.number().int('must be a whole number').positive('must be above 0').optional(),
      predictTimeSeconds: z.number().positive('must be above 0').optional(),
      cost: z.number().positive('must be above 0').optional(),
    })
    .optional(),
  /** Keep copies of this tenant's outputs when OUTPUTS_STORE is set (false: the upstream's URLs stay, and lapse). */
  keepOutputs: z.boolean().default(true),
  /** How long this tenant's outputs are kept, in days (decimals allowed); default OUTPUTS_RETENTION_DAYS. */
  outputRetentionDays: z.number({ error: 'must be a number' }).positive('must be above 0').max(3650, 'must be at most 3650').optional(),
  /** Bytes of kept outputs this tenant may hold at once; a copy past it keeps the upstream URL. */
  outputsMaxBytes: z.number().int('must be a whole number').positive('must be above 0').optional(),
  /** Weight in the split of UPSTREAM_CREATE_LIMIT between tenants (default 1). */
  share: z.number().positive('must be above 0').max(1_000_000).default(1),
});

export const TenantsFileSchema = z.object({ tenants: z.array(TenantSchema).min(1, 'needs at least one tenant') });

export type TenantInput = z.input<typeof TenantSchema>;
export type Tenant = Readonly<Omit<z.output<typeof TenantSchema>, 'keys'>>;

export function hashKey(key: string): string {
  // The one-shot hash: a Hash object per request (createHash/update/digest) was about 4 % of a cached GET.
  return hash('sha256', key, 'hex');
}

/** A new random key and the form to put in the tenants file instead of the key itself. */
export function generateKey(): { key: string; hashed: string } {
  const key = `fgw_${randomBytes(32).toString('base64url')}`;
  return { key, hashed: `${SHA256_PREFIX}${hashKey(key)}` };
}

export class TenantsError extends Error {
  override name = 'TenantsError';
}

interface Snapshot {
  byHash: Map<string, Tenant>;
  byId: Map<string, Tenant>;
  /** Every origin some tenant allows (lower case), derived once per load for the CORS preflight. */
  origins: Set<string>;
}

/** Parses and checks a tenants document; throws a TenantsError naming the first problem. */
export function buildSnapshot(doc: unknown): Snapshot {
  const parsed = TenantsFileSchema.safeParse(doc);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new TenantsError(`${issue.path.join('.') || 'the file'}: ${issue.message}`);
  }
  const byHash = new Map<string, Tenant>();
  const byId = new Map<string, Tenant>();
  const origins = new Set<string>();
  for (const [i, t] of parsed.data.tenants.entries()) {
    if (byId.has(t.id)) throw new TenantsError(`tenants.${i}.id: duplicate tenant id "${t.id}"`);
    const { keys, ...tenant } = t;
    const frozen = Object.freeze(tenant);
    byId.set(t.id, frozen);
    for (const o of t.allowedOrigins) origins.add(o);
    for (const [j, k] of keys.entries()) {
      const h = k.startsWith(SHA256_PREFIX) ? k.slice(SHA256_PREFIX.length).toLowerCase() : hashKey(k);
      // Never print the key itself, not even in a boot error.
      if (byHash.has(h)) throw new TenantsError(`tenants.${i}.keys.${j}: duplicate key (already used by tenant "${byHash.get(h)!.id}")`);
      byHash.set(h, frozen);
    }
  }
  return { byHash, byId, origins };
}

/** "line L, column C" of a parse error, from YAML's linePos or the position in V8's JSON message. */
function where(err: unknown, text: string): string {
  const linePos = (err as { linePos?: { line: number; col: number }[] }).linePos?.[0];
  if (linePos) return `line ${linePos.line}, column ${linePos.col}`;
  const m = /line (\d+) column (\d+)/.exec((err as Error).message) ?? /position (\d+)/.exec((err as Error).message);
  if (m && m[2]) return `line ${m[1]}, column ${m[2]}`;
  if (m) {
    const before = text.slice(0, Number(m[1])).split('\n');
    return `line ${before.length}, column ${before.at(-1)!.length + 1}`;
  }
  return 'the parser\'s own message is not shown: it quotes the file, which holds keys';
}

export function readTenantsFile(path: string): Snapshot {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new TenantsError(`TENANTS_FILE ${path} cannot be read: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  if (text.trim() === '') throw new TenantsError(`TENANTS_FILE ${path} is empty`);
  let doc: unknown;
  const yaml = /\.ya?ml$/i.test(path);
  try {
    doc = yaml ? parseYaml(text) : JSON.parse(text);
  } catch (err) {
    // Only where, never the parser's own message: it quotes the text around the error, which may be a key.
    throw new TenantsError(`TENANTS_FILE ${path} is not valid ${yaml ? 'YAML' : 'JSON'} (${where(err, text)})`);
  }
  return buildSnapshot(doc);
}

/** Who a credential is: its tenant and, for an API-issued key, the key's id and role. */
export interface Identity {
  tenant: Tenant;
  keyId?: string;
  role?: 'member' | 'admin';
}

/** The tenants managed through the admin API, as this process last saw them (src/admin/directory.ts). */
export interface ManagedTenants {
  identify(credential: string): Identity | undefined;
  get(id: string): Tenant | undefined;
  all(): Tenant[];
  allowsOrigin(origin: string): boolean;
  /** Which creation of this id it is: a token carries it, so a deleted and recreated tenant's old tokens stay dead. */
  generation(id: string): string | undefined;
}

/**
 * The live tenant set: the file's, and the API-managed ones when attached. An id in both is the file's: its
 * settings and keys apply, the store's record and its keys are inactive until the file drops the id.
 * Reads swap one snapshot reference, so a reload never shows a half-built set.
 */
export class TenantRegistry {
  #snap: Snapshot;
  #managed: ManagedTenants | undefined;
  #watcher: FSWatcher | undefined;
  #debounce: NodeJS.Timeout | undefined;
  /** Checks of other parts (budgets against the price table) that a reloaded file must pass too. */
  readonly #checks: ((tenants: readonly Tenant[]) => void)[] = [];

  constructor(readonly path: string, snapshot?: Snapshot) {
    this.#snap = snapshot ?? readTenantsFile(path);
  }

  attachManaged(managed: ManagedTenants): void {
    this.#managed = managed;
  }

  /** Whether the tenants file defines this id (then the API may read it but not change it). */
  inFile(id: string): boolean {
    return this.#snap.byId.has(id);
  }

  /** The tenant a presented key belongs to, if any. */
  lookup(key: string): Tenant | undefined {
    return this.identify(key)?.tenant;
  }

  identify(key: string): Identity | undefined {
    // Keys are looked up by their SHA-256, so neither the map nor a timing side channel ever sees the key itself.
    const fromFile = this.#snap.byHash.get(hashKey(key));
    if (fromFile) return { tenant: fromFile };
    const managed = this.#managed?.identify(key);
    return managed && !this.#snap.byId.has(managed.tenant.id) ? managed : undefined;
  }

  get(id: string): Tenant | undefined {
    return this.#snap.byId.get(id) ?? this.#managed?.get(id);
  }

  /** Whether some tenant allows this browser origin (the CORS preflight answers for any such origin). */
  someAllowOrigin(origin: string): boolean {
    const o = this.#snap.origins;
    return o.has('*') || o.has(origin.toLowerCase()) || this.#managed?.allowsOrigin(origin.toLowerCase()) === true;
  }

  all(): Tenant[] {
    const file = [...this.#snap.byId.values()];
    return this.#managed ? [...file, ...this.#managed.all().filter((t) => !this.#snap.byId.has(t.id))] : file;
  }

  generation(id: string): string | undefined {
    return this.#snap.byId.has(id) ? undefined : this.#managed?.generation(id);
  }

  /** Runs the other parts' checks (budgets against the price table) on tenants about to be added; throws on a failure. */
  check(tenants: readonly Tenant[]): void {
    for (const c of this.#checks) c(tenants);
  }

  addCheck(check: (tenants: readonly Tenant[]) => void): void {
    this.#checks.push(check);
  }

  /** Re-reads the file. On error the old tenants stay and the error is returned for the caller to log. */
  reload(): { ok: true; tenants: number } | { ok: false; error: string } {
    try {
      const snap = readTenantsFile(this.path);
      for (const check of this.#checks) check([...snap.byId.values()]);
      this.#snap = snap;
      return { ok: true, tenants: this.#snap.byId.size };
    } catch (err) {
      return { ok: false, error: (err as Error).message };
    }
  }

  /**
   * Reloads when the file changes. The folder is watched, not the file: editors save by replacing the file, and an
   * operator may delete and recreate it; a watch on the file itself would be left on the old one.
   */
  watch(onReload: (result: ReturnType<TenantRegistry['reload']>) => void): void {
    if (this.#watcher) return;
    const name = basename(this.path);
    try {
      this.#watcher = watch(dirname(this.path), { persistent: false }, (_event, changed) => {
        if (changed !== null && changed !== name) return;
        clearTimeout(this.#debounce);
        this.#debounce = setTimeout(() => onReload(this.reload()), 100);
      });
    } catch {
      // A folder that cannot be watched still reloads on SIGHUP.
    }
  }

  unwatch(): void {
    clearTimeout(this.#debounce);
    this.#watcher?.close();
    this.#watcher = undefined;
  }
}
