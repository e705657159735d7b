// `app.predictions`: what every prediction use case shares in this process (the store and upstream clients, the
// owner and terminal memory, the poll coalescer, the version book, the lifecycle), built once so the routes, the
// model reads, webhooks and the watcher all coalesce through the same poller and report to the same lifecycle.
// The watcher starts when the app is ready and stops before the store closes.
import fp from 'fastify-plugin';
import { Lifecycle } from '../lifecycle/lifecycle.js';
import { Watcher } from '../lifecycle/watcher.js';
import { VersionBook } from '../models/versions.js';
import { upstreamDepth } from './create.js';
import type { PredictionDeps } from './deps.js';
import { ClientInputs } from './client-inputs.js';
import { Facts } from './facts.js';
import { Poller } from './poller.js';

declare module 'fastify' {
  interface FastifyInstance {
    predictions: PredictionDeps;
  }
}

export default fp(
  async (app) => {
    const { config, store, upstreams: upstream, metrics, budgets, pubsub, tenants } = app;
    const facts = new Facts();
    const inputs = new ClientInputs(store);
    const poller = new Poller(upstream, config.POLL_CACHE_MS, upstreamDepth(config), inputs);
    const log = app.log.child({ component: 'lifecycle' });
    const lifecycle = new Lifecycle({ config, store, budgets, facts, poller, metrics, pubsub, log });
    const deps: PredictionDeps = { config, store, upstream, metrics, facts, poller, inputs, versions: new VersionBook(store, app.log), budgets, lifecycle };
    app.decorate('predictions', deps);

    const watcher = new Watcher({ config, store, upstream, poller, tenants, lifecycle, metrics, log });
    metrics.watchOpen(() => store.openStats(Date.now()));
    app.addHook('onReady', async () => watcher.start());
    app.addHook('onClose', async () => watcher.close());
  },
  { name: 'predictions', dependencies: ['config', 'metrics', 'store', 'upstream', 'budgets', 'tenants'] },
);
