// What the app decorates itself with, and the request fields that its plugins add.
import type { Budgets } from './budget/budgets.js';
import type { Config } from './config.js';
import type { Metrics } from './metrics.js';
import type { State } from './store/index.js';
import type { FileStore } from './store/file-store.js';
import type { KvStore } from './store/kv-store.js';
import type { OutputsStore } from './store/outputs-store.js';
import type { PubSub } from './store/pubsub.js';
import type { Store } from './store/store.js';
import type { TenantStore } from './store/tenant-store.js';
import type { Tenant, TenantRegistry } from './access/tenants.js';
import type { OpsStats } from './dashboard/stats.js';
import type { Tracing } from './tracing.js';
import type { Upstreams } from './upstream/upstreams.js';

/** A short-lived token's narrowing, when the caller presented a token rather than a key. */
export interface TokenGrant {
  jti: string;
  exp: number;
  /** The generation of an API-managed tenant the token was minted for (its created_at). */
  gen?: string;
  models?: string[];
  maxCreates?: number;
  /** The token's own budget over its lifetime, inside its tenant's (src/budget/). */
  budget?: Partial<Record<'creates' | 'predictTimeSeconds' | 'cost', number>>;
  /** A token for these predictions only: their GET, cancel and event stream (routes marked `predictionScoped`). */
  predictions?: string[];
}

export interface Principal {
  tenant: Tenant;
  token?: TokenGrant;
  /** An API-issued key's id (src/admin/api-keys.ts): names the key in logs and usage without its secret. */
  keyId?: string;
  role?: 'member' | 'admin';
}

/** Who is using the admin API, as the audit trail records it. */
export type AdminActor =
  | { type: 'admin_key' }
  | { type: 'dashboard_session'; session: string }
  | { type: 'team_admin'; tenant: string; key_id: string };

declare module 'fastify' {
  interface FastifyInstance {
    config: Config;
    metrics: Metrics;
    store: Store;
    /** Uploaded files (POST /replicate/v1/files). */
    files: FileStore;
    /** Small shared facts: webhook secrets and receivers, delivery failures. */
    kv: KvStore;
    /** Messages to every replica (src/store/pubsub.ts). */
    pubsub: PubSub;
    /** API-managed tenants and keys, the audit log (src/store/tenant-store.ts). */
    tenantStore: TenantStore;
    /** Manifests, copy claims and bytes of kept outputs (src/outputs/). */
    outputsState: OutputsStore;
    /** The rate-limit store matching `store` (undefined: @fastify/rate-limit's in-process one). */
    rateLimitStore: State['rateLimitStore'];
    tenants: TenantRegistry;
    /** The upstream accounts (src/upstream/upstreams.ts); `upstream` is the same object, for catalogue reads and health. */
    upstreams: Upstreams;
    upstream: Upstreams;
    /** Re-reads UPSTREAMS_FILE (on a change of the file, or SIGHUP). */
    reloadUpstreams: () => void;
    budgets: Budgets;
    /** Counts a failed authentication from the request's address: throws 401 (`detail`), or 429 past AUTH_FAILURE_LIMIT. */
    authFailure(request: FastifyRequest, detail: string): Promise<never>;
    /** What the dashboard counts in this process and publishes for the others (src/dashboard/); undefined without ADMIN_API_KEY. */
    opsStats: OpsStats | undefined;
    /** OpenTelemetry (src/tracing.ts); undefined unless OTEL_EXPORTER_OTLP_ENDPOINT is set. */
    tracing: Tracing | undefined;
  }
  interface FastifyRequest {
    principal: Principal | null;
    /** On admin routes: who is calling (set by auth). */
    adminActor: AdminActor | null;
    /** The raw JSON body as received, forwarded unchanged to the upstream. */
    rawBody: string | undefined;
    /** For the access log: upstream latency and cache outcome. */
    upstreamMs: number | undefined;
    cacheResult: 'HIT' | 'MISS' | 'COALESCED' | undefined;
    /** The request span's context, the parent of its upstream attempts (opaque; set only while tracing is on). */
    traceContext: unknown;
    /** The code and detail of the error this request failed with, for the dashboard's recent failures. */
    failure: { code: string; detail?: string } | undefined;
    /** The gateway's own time as `Server-Timing` gave it (total − upstream), for the access log. */
    gatewayMs: number | undefined;
    /** The id of the prediction a create started, for the access log. */
    createdPrediction: string | undefined;
  }
  interface FastifyContextConfig {
    /**
     * On API routes: 'tenant' (default), a key or token; 'admin', ADMIN_API_KEY; 'metrics', METRICS_TOKEN when set.
     * 'session', the dashboard's own check (a session cookie or ADMIN_API_KEY). Routes outside the API need none.
     */
    auth?: 'tenant' | 'admin' | 'metrics' | 'session';
    /** Creates are counted by the create limit and token budgets. */
    create?: boolean;
    /** Tokens may not mint tokens. */
    keyOnly?: boolean;
    /** A route about one prediction (`:id`): a token for predictions may use it for its own. */
    predictionScoped?: boolean;
    /** The token may come as `?token=` (EventSource sends no headers); never logged (src/http/request-log.ts). */
    queryToken?: boolean;
    /** On 'admin' routes: a team admin's key (role admin) may call it for its own tenant. */
    teamAdmin?: boolean;
  }
}
