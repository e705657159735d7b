// The admin actions: each reads the store, decides, and writes its change and its audit event in one step that
// fails if anything it read has changed since (then it reads again, or answers 412 to an If-Match). A change is
// then announced to every replica (src/admin/directory.ts).
import { hash } from 'node:crypto';
import { z } from 'zod';
import { type Tenant, type TenantRegistry, TenantSchema } from '../access/tenants.js';
import { GatewayError } from '../errors.js';
import { parse } from '../http/validate.js';
import type { AdminCommit, TenantStore } from '../store/tenant-store.js';
import type { AdminActor } from '../types.js';
import { AnswerCipher } from './answer-cipher.js';
import { newApiKey, newKeyId } from './api-keys.js';
import { type AuditEvent, type AuditInput, chainEvent } from './audit.js';
import type { TenantDirectory } from './directory.js';
import { type KeyRecord, type KeyRole, type TenantRecord, type TenantSettings, TenantSettingsSchema } from './records.js';

const TenantIdBodySchema = z.object({ id: TenantSchema.shape.id });

export interface Ctx {
  actor: AdminActor;
  ip: string;
  userAgent: string | null;
}

interface Loaded {
  version: number;
  tenants: Map<string, TenantRecord>;
  keys: Map<string, KeyRecord>;
}

interface Plan<T> {
  expect: AdminCommit['expect'];
  put: { tenant?: TenantRecord; key?: KeyRecord }[];
  del: AdminCommit['del'];
  idem?: AdminCommit['idem'];
  audit: Omit<AuditInput, 'actor' | 'ip' | 'user_agent'>;
  result: T;
}

const MAX_ATTEMPTS = 20;
const DAY_MS = 86_400_000;
export const MAX_GRACE_SECONDS = 7 * 86_400;

/** What an audit event may show of tenant settings: the webhook secret only as whether it is set. */
function visible(settings: Partial<TenantSettings> | null): Record<string, unknown> | null {
  if (!settings) return null;
  const { webhookSecret, ...rest } = settings;
  return webhookSecret === undefined ? rest : { ...rest, webhookSecret: '[secret]' };
}

/** The top-level fields that differ, before and after (a missing field is null). */
function diff(before: Record<string, unknown>, after: Record<string, unknown>): { before: Record<string, unknown>; after: Record<string, unknown> } {
  const b: Record<string, unknown> = {};
  const a: Record<string, unknown> = {};
  for (const k of new Set([...Object.keys(before), ...Object.keys(after)])) {
    if (JSON.stringify(before[k]) === JSON.stringify(after[k])) continue;
    b[k] = before[k] ?? null;
    a[k] = after[k] ?? null;
  }
  return { before: b, after: a };
}

/** RFC 7396 JSON merge patch. */
export function mergePatch(target: unknown, patch: unknown): unknown {
  if (patch === null || typeof patch !== 'object' || Array.isArray(patch)) return patch;
  const out: Record<string, unknown> = target !== null && typeof target === 'object' && !Array.isArray(target) ? { ...(target as Record<string, unknown>) } : {};
  for (const [k, v] of Object.entries(patch as Record<string, unknown>)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}

/** A key as it is listed: never its hash or secret. */
export function keyView(k: KeyRecord, now = Date.now()) {
  return {
    id: k.id,
    tenant: k.tenant,
    name: k.name,
    role: k.role,
    created_at: k.created_at,
    expires_at: k.expires_at,
    rotated_at: k.rotated_at,
    previous_valid_until: k.previous && Date.parse(k.previous.until) > now ? k.previous.until : null,
  };
}

function keyAudit(k: KeyRecord | null): Record<string, unknown> | null {
  if (!k) return null;
  const v = keyView(k);
  return { name: v.name, role: v.role, expires_at: v.expires_at, previous_valid_until: v.previous_valid_until };
}

export interface RotationAnswer {
  id: string;
  key: string;
  tenant: string;
  name: string | null;
  role: KeyRole;
  created_at: string;
  expires_at: string | null;
  rotated_at: string;
  previous_valid_until: string | null;
}

export class AdminService {
  readonly #cipher: AnswerCipher;

  constructor(
    private readonly store: TenantStore,
    private readonly directory: TenantDirectory,
    private readonly registry: TenantRegistry,
    private readonly opts: { tenantsFile: string; retentionDays: number; idemTtlMs: number; adminKey: string; now?: () => number },
  ) {
    this.#cipher = new AnswerCipher(opts.adminKey);
  }

  #now(): number {
    return this.opts.now?.() ?? Date.now();
  }

  async load(): Promise<Loaded> {
    const snap = await this.store.load();
    const tenants = new Map<string, TenantRecord>();
    for (const j of snap.tenants) {
      const t = JSON.parse(j) as TenantRecord;
      tenants.set(t.id, t);
    }
    const keys = new Map<string, KeyRecord>();
    for (const j of snap.keys) {
      const k = JSON.parse(j) as KeyRecord;
      keys.set(k.id, k);
    }
    return { version: snap.version, tenants, keys };
  }

  /** Reads, plans and commits until the commit finds what the plan read; the plan's result, or 'idem'. */
  async #run<T>(ctx: Ctx, plan: (l: Loaded) => Plan<T>, opts: { ifMatch?: boolean } = {}): Promise<T | { idem: true }> {
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const [loaded, head] = await Promise.all([this.load(), this.store.auditHead()]);
      const p = plan(loaded);
      const { json, newHead } = chainEvent(head, { actor: ctx.actor, ip: ctx.ip, user_agent: ctx.userAgent, ...p.audit }, this.#now());
      const put: AdminCommit['put'] = p.put.map((x) =>
        x.tenant ? { kind: 't', id: x.tenant.id, rev: x.tenant.rev, json: JSON.stringify(x.tenant) } : { kind: 'k', id: x.key!.id, rev: x.key!.rev, json: JSON.stringify(x.key) },
      );
      const r = await this.store.commit({
        expect: p.expect,
        put,
        del: p.del,
        idem: p.idem,
        audit: { head, newHead, event: json, cutoffMs: this.#now() - this.opts.retentionDays * DAY_MS },
      });
      if (r === 'ok') {
        await this.directory.announce();
        return p.result;
      }
      if (r === 'idem') return { idem: true };
      if (r === 'conflict' && opts.ifMatch) throw new GatewayError('PRECONDITION_FAILED', 'the tenant changed since the ETag sent in If-Match; read it again');
      // 'conflict' or 'audit': another change landed in between; read again.
    }
    throw new GatewayError('CONFLICT', 'too many concurrent admin changes; retry');
  }

  #fileConflict(id: string): GatewayError {
    return new GatewayError('CONFLICT', `tenant ${id} is defined in the tenants file (${this.opts.tenantsFile}) and is read-only through the API; change it in that file`);
  }

  /** Settings from a body: every tenants-file field but id and keys; 422 naming a bad field. */
  #settings(body: Record<string, unknown>, id: string): TenantSettings {
    if ('keys' in body) throw new GatewayError('VALIDATION', `keys cannot be set here: issue keys with POST /gateway/v1/admin/tenants/${id}/keys`);
    const { id: _id, ...rest } = body;
    const settings = parse(TenantSettingsSchema, rest, 'body');
    try {
      this.registry.check([Object.freeze({ id, ...settings })]);
    } catch (err) {
      // The file's wording ("invalid configuration: tenants.3.budget.cost …") named for this request's body.
      throw new GatewayError('VALIDATION', (err as Error).message.replace(/^invalid configuration: tenants\.\d+\./, ''));
    }
    return settings;
  }

  tenantView(r: TenantRecord) {
    const { webhookSecret, ...settings } = r.settings;
    return {
      id: r.id,
      source: 'api' as const,
      ...settings,
      webhookSecretSet: webhookSecret !== undefined,
      created_at: r.created_at,
      updated_at: r.updated_at,
      ...(this.registry.inFile(r.id) ? { shadowedByFile: true } : {}),
    };
  }

  fileTenantView(t: Tenant) {
    const { webhookSecret, id, ...settings } = t;
    return { id, source: 'file' as const, file: this.opts.tenantsFile, ...settings, webhookSecretSet: webhookSecret !== undefined };
  }

  static etag(r: TenantRecord): string {
    return `"${r.rev}"`;
  }

  async createTenant(ctx: Ctx, body: Record<string, unknown>): Promise<TenantRecord> {
    const id = parse(TenantIdBodySchema, { id: body.id }, 'body').id;
    if (this.registry.inFile(id)) throw this.#fileConflict(id);
    const settings = this.#settings(body, id);
    const r = await this.#run(ctx, (l) => {
      if (l.tenants.has(id)) throw new GatewayError('CONFLICT', `tenant ${id} already exists`);
      const now = new Date(this.#now());
      const record: TenantRecord = { id, rev: 1, created_at: now.toISOString(), updated_at: now.toISOString(), settings };
      return {
        expect: [{ kind: 't', id, rev: null }],
        put: [{ tenant: record }],
        del: [],
        audit: { action: 'tenant.create', target: { tenant: id }, before: null, after: visible(settings) },
        result: record,
      };
    });
    return r as TenantRecord;
  }

  async patchTenant(ctx: Ctx, id: string, patch: Record<string, unknown>, ifMatch: string | undefined): Promise<TenantRecord> {
    if (this.registry.inFile(id)) throw this.#fileConflict(id);
    if ('id' in patch && patch.id !== id) throw new GatewayError('VALIDATION', 'id cannot be changed');
    const r = await this.#run(
      ctx,
      (l) => {
        const cur = l.tenants.get(id);
        if (!cur) throw new GatewayError('NOT_FOUND', `no tenant ${id}`);
        if (ifMatch !== undefined && ifMatch !== '*' && !ifMatch.split(',').map((s) => s.trim().replace(/^W\//, '')).includes(AdminService.etag(cur))) {
          throw new GatewayError('PRECONDITION_FAILED', `If-Match ${ifMatch.slice(0, 40)} is not the tenant's current ETag ${AdminService.etag(cur)}; read it again`);
        }
        const { id: _i, ...p } = patch;
        const merged = mergePatch(cur.settings, p) as Record<string, unknown>;
        const settings = this.#settings(merged, id);
        const next: TenantRecord = { ...cur, rev: cur.rev + 1, updated_at: new Date(this.#now()).toISOString(), settings };
        const d = diff(visible(cur.settings)!, visible(settings)!);
        return {
          expect: [{ kind: 't', id, rev: cur.rev }],
          put: [{ tenant: next }],
          del: [],
          audit: { action: 'tenant.update', target: { tenant: id }, ...d },
          result: next,
        };
      },
      { ifMatch: ifMatch !== undefined },
    );
    return r as TenantRecord;
  }

  async deleteTenant(ctx: Ctx, id: string): Promise<void> {
    if (this.registry.inFile(id)) throw this.#fileConflict(id);
    await this.#run(ctx, (l) => {
      const cur = l.tenants.get(id);
      if (!cur) throw new GatewayError('NOT_FOUND', `no tenant ${id}`);
      const keys = [...l.keys.values()].filter((k) => k.tenant === id);
      return {
        expect: [{ kind: 't', id, rev: cur.rev }, ...keys.map((k) => ({ kind: 'k' as const, id: k.id, rev: k.rev }))],
        put: [],
        del: [{ kind: 't', id }, ...keys.map((k) => ({ kind: 'k' as const, id: k.id }))],
        audit: { action: 'tenant.delete', target: { tenant: id }, before: { ...visible(cur.settings), keys: keys.map((k) => k.id) }, after: null },
        result: undefined,
      };
    });
  }

  /** The API tenant, for the key routes: 409 for a file tenant, 404 for none. */
  #managedTenant(l: Loaded, id: string): TenantRecord {
    if (this.registry.inFile(id)) throw this.#fileConflict(id);
    const t = l.tenants.get(id);
    if (!t) throw new GatewayError('NOT_FOUND', `no tenant ${id}`);
    return t;
  }

  async createKey(ctx: Ctx, tenantId: string, body: { name?: string; expires_at?: string; role?: KeyRole }) {
    const expires = body.expires_at === undefined ? null : Date.parse(body.expires_at);
    if (expires !== null && expires <= this.#now()) throw new GatewayError('VALIDATION', 'expires_at must be in the future');
    const r = await this.#run(ctx, (l) => {
      const t = this.#managedTenant(l, tenantId);
      const id = newKeyId();
      const { key, hash: h } = newApiKey(id);
      const now = new Date(this.#now()).toISOString();
      const record: KeyRecord = {
        id,
        tenant: tenantId,
        rev: 1,
        name: body.name ?? null,
        role: body.role ?? 'member',
        created_at: now,
        expires_at: expires === null ? null : new Date(expires).toISOString(),
        rotated_at: null,
        hash: h,
        previous: null,
      };
      return {
        expect: [{ kind: 't', id: tenantId, rev: t.rev }, { kind: 'k', id, rev: null }],
        put: [{ key: record }],
        del: [],
        audit: { action: 'key.create', target: { tenant: tenantId, key: id }, before: null, after: keyAudit(record) },
        result: { id, key, name: record.name, role: record.role, created_at: record.created_at, expires_at: record.expires_at, tenant: tenantId },
      };
    });
    return r as { id: string; key: string; name: string | null; role: KeyRole; created_at: string; expires_at: string | null; tenant: string };
  }

  async listKeys(tenantId: string) {
    const l = await this.load();
    this.#managedTenant(l, tenantId);
    const now = this.#now();
    return [...l.keys.values()].filter((k) => k.tenant === tenantId).sort((a, b) => a.created_at.localeCompare(b.created_at)).map((k) => keyView(k, now));
  }

  async getKey(tenantId: string, keyId: string): Promise<KeyRecord> {
    const l = await this.load();
    this.#managedTenant(l, tenantId);
    const k = l.keys.get(keyId);
    if (!k || k.tenant !== tenantId) throw new GatewayError('NOT_FOUND', `tenant ${tenantId} has no key ${keyId}`);
    return k;
  }

  /**
   * A new secret under the same id; the old one stays valid for `graceSeconds`. With an Idempotency-Key the answer
   * is kept (sealed) and a repeat gets it again: `replayed` then.
   */
  async rotateKey(ctx: Ctx, tenantId: string, keyId: string, graceSeconds: number, idempotencyKey: string | undefined): Promise<{ answer: RotationAnswer; replayed: boolean }> {
    const fingerprint = hash('sha256', `${tenantId}\n${keyId}\n${graceSeconds}`, 'hex');
    // Per key and request, and not the client's text itself (it may be guessable or sensitive).
    const idemId = idempotencyKey === undefined ? undefined : hash('sha256', `rotate\n${tenantId}\n${keyId}\n${idempotencyKey}`, 'hex');
    const replay = async (): Promise<{ answer: RotationAnswer; replayed: boolean } | undefined> => {
      if (!idemId) return undefined;
      const sealed = await this.store.idem(idemId);
      if (sealed === null) return undefined;
      const plain = this.#cipher.open(sealed, idemId);
      if (plain === undefined) throw new GatewayError('CONFLICT', 'the answer kept for this Idempotency-Key can no longer be read (ADMIN_API_KEY changed); rotate again with a new key');
      const kept = JSON.parse(plain) as { fingerprint: string; answer: RotationAnswer };
      if (kept.fingerprint !== fingerprint) throw new GatewayError('IDEMPOTENCY_MISMATCH', 'this Idempotency-Key was used for a different rotation (another key or grace_seconds)');
      return { answer: kept.answer, replayed: true };
    };
    const earlier = await replay();
    if (earlier) return earlier;
    const r = await this.#run(ctx, (l) => {
      this.#managedTenant(l, tenantId);
      const k = l.keys.get(keyId);
      if (!k || k.tenant !== tenantId) throw new GatewayError('NOT_FOUND', `tenant ${tenantId} has no key ${keyId}`);
      const now = this.#now();
      const { key, hash: h } = newApiKey(keyId);
      const until = new Date(now + graceSeconds * 1000).toISOString();
      const next: KeyRecord = { ...k, rev: k.rev + 1, hash: h, rotated_at: new Date(now).toISOString(), previous: graceSeconds > 0 ? { hash: k.hash, until } : null };
      const answer: RotationAnswer = {
        id: keyId,
        key,
        tenant: tenantId,
        name: k.name,
        role: k.role,
        created_at: k.created_at,
        expires_at: k.expires_at,
        rotated_at: next.rotated_at!,
        previous_valid_until: graceSeconds > 0 ? until : null,
      };
      return {
        expect: [{ kind: 'k', id: keyId, rev: k.rev }],
        put: [{ key: next }],
        del: [],
        idem: idemId ? { key: idemId, value: this.#cipher.seal(JSON.stringify({ fingerprint, answer }), idemId), ttlMs: this.opts.idemTtlMs } : undefined,
        audit: { action: 'key.rotate', target: { tenant: tenantId, key: keyId }, before: { rotated_at: k.rotated_at }, after: { rotated_at: next.rotated_at, grace_seconds: graceSeconds, previous_valid_until: answer.previous_valid_until } },
        result: { answer, replayed: false },
      };
    });
    if ('idem' in r) {
      // A concurrent request with the same Idempotency-Key rotated first: its answer is the one.
      const again = await replay();
      if (again) return again;
      throw new GatewayError('CONFLICT', 'a rotation with this Idempotency-Key is in progress; retry');
    }
    return r;
  }

  async revokeKey(ctx: Ctx, tenantId: string, keyId: string): Promise<void> {
    await this.#run(ctx, (l) => {
      this.#managedTenant(l, tenantId);
      const k = l.keys.get(keyId);
      if (!k || k.tenant !== tenantId) throw new GatewayError('NOT_FOUND', `tenant ${tenantId} has no key ${keyId}`);
      return {
        expect: [{ kind: 'k', id: keyId, rev: k.rev }],
        put: [],
        del: [{ kind: 'k', id: keyId }],
        audit: { action: 'key.revoke', target: { tenant: tenantId, key: keyId }, before: keyAudit(k), after: null },
        result: undefined,
      };
    });
  }

  /** Events after `after`, oldest first; for a team admin only its own tenant's (scanning at most `scan` events). */
  async audit(after: number, limit: number, tenant?: string): Promise<{ events: AuditEvent[]; next: number | null }> {
    if (!tenant) {
      const events = (await this.store.auditRange(after, limit)).map((j) => JSON.parse(j) as AuditEvent);
      return { events, next: events.length === limit ? events.at(-1)!.seq : null };
    }
    const out: AuditEvent[] = [];
    let cursor = after;
    for (let scanned = 0; scanned < 10_000 && out.length < limit; ) {
      const page = (await this.store.auditRange(cursor, 500)).map((j) => JSON.parse(j) as AuditEvent);
      if (!page.length) return { events: out, next: null };
      for (const e of page) {
        cursor = e.seq;
        scanned++;
        if (e.target.tenant === tenant) out.push(e);
        if (out.length === limit) break;
      }
    }
    return { events: out, next: cursor };
  }
}
