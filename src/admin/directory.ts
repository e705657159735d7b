// This process's copy of the API-managed tenants and keys, so that a key lookup never waits on the store. It is
// refreshed when any replica publishes a change (pub/sub, at most once), and every ADMIN_SYNC_INTERVAL_MS the
// store's change counter is compared with the copy's, in case a message was lost: a change reaches every
// replica within the interval even then. Expiry and the end of a rotation's grace are checked at each lookup.
import type { FastifyBaseLogger } from 'fastify';
import { hashKey, type Identity, type ManagedTenants, type Tenant } from '../access/tenants.js';
import { GatewayError } from '../errors.js';
import type { PubSub } from '../store/pubsub.js';
import type { TenantStore } from '../store/tenant-store.js';
import { keyIdOf, sameHash } from './api-keys.js';
import { type KeyRecord, type TenantRecord, tenantOf } from './records.js';

export const CHANGED_CHANNEL = 'admin:changed';

interface Copy {
  version: number;
  tenants: Map<string, { record: TenantRecord; tenant: Tenant }>;
  keys: Map<string, KeyRecord>;
  origins: Set<string>;
}

const EMPTY: Copy = { version: -1, tenants: new Map(), keys: new Map(), origins: new Set() };

export class TenantDirectory implements ManagedTenants {
  #copy: Copy = EMPTY;
  #refreshing: Promise<void> | undefined;
  #again = false;
  #timer: NodeJS.Timeout | undefined;
  #unsubscribe: (() => Promise<void>) | undefined;
  #failing = false;

  constructor(
    private readonly store: TenantStore,
    private readonly pubsub: PubSub,
    private readonly opts: { syncMs: number; log: FastifyBaseLogger },
  ) {}

  get version(): number {
    return this.#copy.version;
  }

  /** Whether the copy has been loaded once. */
  get loaded(): boolean {
    return this.#copy.version >= 0;
  }

  readonly #onMessage = (message: string) => {
    if (Number(message) > this.#copy.version) void this.refresh();
  };

  /**
   * Loads the copy (so the first request already sees every tenant) and starts listening. Neither waits for a store
   * that is not there yet: the copy stays empty (API keys get 503, /readyz says so) until the timer's check loads
   * it, and the subscription is tried again every interval until it holds.
   */
  async start(): Promise<void> {
    this.#timer = setInterval(() => void this.#check(), this.opts.syncMs);
    this.#timer.unref();
    void this.#subscribe();
    await this.refresh();
  }

  async #subscribe(): Promise<void> {
    while (this.#timer) {
      try {
        this.#unsubscribe = await this.pubsub.subscribe(CHANGED_CHANNEL, this.#onMessage);
        return;
      } catch {
        // The version check carries changes meanwhile.
        await new Promise((r) => setTimeout(r, this.opts.syncMs).unref());
      }
    }
  }

  async stop(): Promise<void> {
    clearInterval(this.#timer);
    this.#timer = undefined;
    await this.#unsubscribe?.();
  }

  /** Tells every replica (this one included) that the store changed. */
  async announce(): Promise<void> {
    await this.refresh();
    await this.pubsub.publish(CHANGED_CHANNEL, String(this.#copy.version)).catch((err: unknown) => {
      // The version check will carry it within ADMIN_SYNC_INTERVAL_MS.
      this.opts.log.warn({ err }, 'admin change not published; replicas will see it at their next version check');
    });
  }

  async #check(): Promise<void> {
    try {
      const v = await this.store.version();
      if (v !== this.#copy.version) await this.refresh();
      if (this.#failing) this.opts.log.info('admin tenant sync recovered');
      this.#failing = false;
    } catch (err) {
      if (!this.#failing) this.opts.log.warn({ err }, 'admin tenant sync failed; keeping the last copy');
      this.#failing = true;
    }
  }

  /** Reloads the copy; concurrent calls share a load, and a call during one loads once more after it. */
  refresh(): Promise<void> {
    if (this.#refreshing) {
      this.#again = true;
      return this.#refreshing;
    }
    const run = async () => {
      do {
        this.#again = false;
        const snap = await this.store.load();
        if (snap.version === this.#copy.version) continue;
        const tenants = new Map<string, { record: TenantRecord; tenant: Tenant }>();
        const origins = new Set<string>();
        for (const json of snap.tenants) {
          const record = JSON.parse(json) as TenantRecord;
          const tenant = tenantOf(record);
          tenants.set(record.id, { record, tenant });
          for (const o of tenant.allowedOrigins) origins.add(o);
        }
        const keys = new Map<string, KeyRecord>();
        for (const json of snap.keys) {
          const k = JSON.parse(json) as KeyRecord;
          keys.set(k.id, k);
        }
        this.#copy = { version: snap.version, tenants, keys, origins };
      } while (this.#again);
    };
    // Never rejects: a failed load keeps the last copy, and the next check or message tries again.
    this.#refreshing = run()
      .catch((err: unknown) => {
        // A Redis outage (or a boot before Redis answers) is reported once by the store's own client.
        const outage = err instanceof GatewayError && err.code === 'STORE_UNAVAILABLE';
        this.opts.log[outage ? 'debug' : 'warn']({ err }, 'admin tenant refresh failed; keeping the last copy');
      })
      .finally(() => (this.#refreshing = undefined));
    return this.#refreshing;
  }

  identify(credential: string): Identity | undefined {
    const id = keyIdOf(credential);
    if (!id) return undefined;
    const k = this.#copy.keys.get(id);
    if (!k) return undefined;
    const now = Date.now();
    if (k.expires_at && Date.parse(k.expires_at) <= now) return undefined;
    const h = hashKey(credential);
    const current = sameHash(h, k.hash);
    const previous = !current && k.previous !== null && Date.parse(k.previous.until) > now && sameHash(h, k.previous.hash);
    if (!current && !previous) return undefined;
    const t = this.#copy.tenants.get(k.tenant);
    return t ? { tenant: t.tenant, keyId: k.id, role: k.role } : undefined;
  }

  get(id: string): Tenant | undefined {
    return this.#copy.tenants.get(id)?.tenant;
  }

  generation(id: string): string | undefined {
    return this.#copy.tenants.get(id)?.record.created_at;
  }

  all(): Tenant[] {
    return [...this.#copy.tenants.values()].map((t) => t.tenant);
  }

  allowsOrigin(origin: string): boolean {
    return this.#copy.origins.has('*') || this.#copy.origins.has(origin);
  }
}
