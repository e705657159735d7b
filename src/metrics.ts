// Prometheus metrics (prom-client). One registry per app, so several apps in one process (tests) never collide.
import { Counter, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export class Metrics {
  readonly registry = new Registry();
  readonly requests = new Counter({
    name: 'fgw_requests_total',
    help: 'Requests answered, by route, status code and tenant',
    labelNames: ['route', 'status', 'tenant'] as const,
    registers: [this.registry],
  });
  readonly upstreamDuration = new Histogram({
    name: 'fgw_upstream_duration_seconds',
    help: 'Upstream call latency (all attempts), by route and outcome',
    labelNames: ['route', 'outcome'] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    registers: [this.registry],
  });
  readonly cache = new Counter({
    name: 'fgw_cache_total',
    help: 'Terminal-prediction cache lookups, by result (hit or miss)',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });
  readonly rateLimited = new Counter({
    name: 'fgw_rate_limited_total',
    help: 'Requests refused by a rate limit, by tenant and limit',
    labelNames: ['tenant', 'limit'] as const,
    registers: [this.registry],
  });
  readonly coalesced = new Counter({
    name: 'fgw_coalesced_total',
    help: 'GETs answered by sharing another request\'s upstream call or the poll micro-cache',
    registers: [this.registry],
  });
  readonly idempotentReplays = new Counter({
    name: 'fgw_idempotent_replays_total',
    help: 'Creates answered by replaying a stored Idempotency-Key response',
    registers: [this.registry],
  });
  readonly webhookDeliveries = new Counter({
    name: 'fgw_webhook_deliveries_total',
    help: 'Webhook delivery attempts to tenants, by tenant and outcome (delivered, retrying, failed)',
    labelNames: ['tenant', 'outcome'] as const,
    registers: [this.registry],
  });
  readonly storeErrors = new Counter({
    name: 'fgw_store_errors_total',
    help: 'Requests that failed because the state store was unavailable',
    registers: [this.registry],
  });

  constructor(defaults = true) {
    if (defaults) collectDefaultMetrics({ register: this.registry, prefix: 'fgw_' });
  }
}
