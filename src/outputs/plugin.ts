// `app.outputs`: kept outputs, when OUTPUTS_STORE names a store (undefined otherwise). Told by the lifecycle when a
// prediction ends; every replica sweeps the ends of retention and hears of bodies rewritten elsewhere.
import fp from 'fastify-plugin';
import { openOutputObjects } from './objects.js';
import { OUTPUTS_CHANNEL, Outputs } from './outputs.js';
import { Sources } from './source.js';

declare module 'fastify' {
  interface FastifyInstance {
    outputs: Outputs | undefined;
  }
}

/** How often each replica looks for outputs whose retention ended: well within the minute promised. */
const SWEEP_EVERY_MS = 5000;

export default fp(
  async (app) => {
    const { config } = app;
    const target = config.OUTPUTS_STORE;
    if (!target) {
      app.decorate('outputs', undefined);
      return;
    }
    const log = app.log.child({ component: 'outputs' });
    const objects = await openOutputObjects(target, config);
    // The webhook rules and allow-lists: an internal CDN allowed for webhooks is allowed here too.
    const sources = new Sources({ allowHttpHosts: config.WEBHOOK_ALLOW_HTTP_HOSTS, allowPrivateHosts: config.WEBHOOK_ALLOW_PRIVATE_HOSTS }, config.OUTPUTS_MAX_BYTES, config.UPSTREAM_TIMEOUT_MS);
    const outputs = new Outputs({
      config,
      store: app.store,
      state: app.outputsState,
      objects,
      sources,
      tenants: app.tenants,
      metrics: app.metrics,
      pubsub: app.pubsub,
      facts: app.predictions.facts,
      log,
    });
    app.decorate('outputs', outputs);
    app.predictions.lifecycle.onChange((change) => outputs.changed(change));

    let unsubscribe: (() => Promise<void>) | undefined;
    let sweeping: NodeJS.Timeout | undefined;
    app.addHook('onReady', async () => {
      unsubscribe = await app.pubsub.subscribe(OUTPUTS_CHANNEL, (id) => outputs.forget(id));
      let busy = false;
      sweeping = setInterval(() => {
        if (busy) return;
        busy = true;
        outputs
          .sweep()
          .catch((err: unknown) => log.warn({ err }, 'outputs: the retention sweep failed; the next one tries again'))
          .finally(() => (busy = false));
      }, SWEEP_EVERY_MS);
      sweeping.unref();
    });
    app.addHook('onClose', async () => {
      clearInterval(sweeping);
      await unsubscribe?.().catch(() => {});
      await outputs.close();
      await sources.close();
      await objects.close();
    });
    log.info({ store: target.kind, retentionDays: config.OUTPUTS_RETENTION_DAYS, maxBytes: config.OUTPUTS_MAX_BYTES }, 'outputs are kept');
  },
  { name: 'outputs', dependencies: ['config', 'metrics', 'store', 'tenants', 'predictions'] },
);
