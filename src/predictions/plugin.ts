// `app.predictions`: what every prediction use case shares in this process (the store and upstream clients, the
// owner and terminal memory, the poll coalescer, the version book), built once so the routes, the model reads and
// the webhook watcher all coalesce through the same poller.
import fp from 'fastify-plugin';
import { BoundedMap } from '../lib/bounded-map.js';
import { VersionBook } from '../models/versions.js';
import { upstreamDepth } from './create.js';
import type { PredictionDeps } from './deps.js';
import { Facts } from './facts.js';
import { Poller } from './poller.js';

/** At most one running-cap refresh per tenant and process in this long. */
const RUNNING_REFRESH_MS = 5000;

declare module 'fastify' {
  interface FastifyInstance {
    predictions: PredictionDeps;
  }
}

export default fp(
  async (app) => {
    const { config, store, upstream, metrics } = app;
    const deps: PredictionDeps = {
      config,
      store,
      upstream,
      metrics,
      facts: new Facts(),
      poller: new Poller(upstream, config.POLL_CACHE_MS, upstreamDepth(config)),
      versions: new VersionBook(store, app.log),
      budgets: app.budgets,
      runningRefreshes: new BoundedMap({ maxEntries: 10_000, ttlMs: RUNNING_REFRESH_MS }),
    };
    app.decorate('predictions', deps);
  },
  { name: 'predictions', dependencies: ['config', 'metrics', 'store', 'upstream', 'budgets'] },
);
