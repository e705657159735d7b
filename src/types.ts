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
import type { Tenant, TenantRegistry } from './access/tenants.js';
import type { OpsStats } from './dashboard/stats.js';
import type { Tracing } from './tracing.js';
import type { UpstreamClient } from './upstream/client.js';

/** A short-lived token's narrowing, when the caller presented a token rather than a key. */
export interface TokenGrant {
  jti: string;
  exp: number;
  models?: string[];
  maxCreates?: number;
  /** The token's own budget over its lifetime, inside its tenant's (src/budget/). */
  budget?: Partial<Record<'creates' | 'predictTimeSeconds' | 'cost', number>>;
}

export interface Principal {
  tenant: Tenant;
  token?: TokenGrant;
}

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
    /** Manifests, copy claims and bytes of kept outputs (src/outputs/). */
    outputsState: OutputsStore;
    /** The rate-limit store matching `store` (undefined: @fastify/rate-limit's in-process one). */
    rateLimitStore: State['rateLimitStore'];
    tenants: TenantRegistry;
    upstream: UpstreamClient;
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
  }
}
