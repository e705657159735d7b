// `app.outputs`: kept outputs, when OUTPUTS_STORE names a store (undefined otherwise). Told by the lifecycle when a
// prediction ends; every replica sweeps the ends of retention and hears of bodies rewritten elsewhere.
import fp from 'fastify-plugin';
import { publicBase } from '../http/base.js';
import { PredictionBody } from '../predictions/prediction.js';
import { openOutputObjects } from './objects.js';
import { OUTPUTS_CHANNEL, Outputs } from './outputs.js';
import { Sources } from './source.js';

declare module 'fastify' {
  interface FastifyInstance {
    outputs: Outputs | undefined;
  }
}

/** The routes that answer one prediction (a create, a read, a cancel). */
const PREDICTION_ROUTES = new Set([
  '/replicate/v1/predictions/:id',
  '/replicate/v1/predictions/:id/cancel',
  '/replicate/v1/predictions',
  '/replicate/v1/models/:owner/:name/predictions',
]);

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

    // The answer about a prediction whose outputs this process is copying (the GET or create that saw it succeed, or
    // one right after) waits up to OUTPUTS_WAIT_MS for the copy and then carries the kept links: a client that keeps
    // the URLs of its first terminal answer would otherwise keep links that die within the hour.
    // A callback hook: it runs on every answer of the app, and all but those few pass through without a promise.
    app.addHook('onSend', (request, reply, payload, done) => {
      if (typeof payload !== 'string' || reply.statusCode >= 300 || !PREDICTION_ROUTES.has(request.routeOptions.url ?? '')) return done(null, payload);
      const id = request.createdPrediction ?? (request.params as { id?: string } | undefined)?.id;
      if (!id || !outputs.copying(id)) return done(null, payload);
      outputs.whenKept(id, config.OUTPUTS_WAIT_MS).then(
        (json) => done(null, json ? new PredictionBody(json).render(publicBase(config, request)) : payload),
        (err: Error) => done(err),
      );
    });

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
      // Not awaited: the store's own close ends the subscription anyway, and a subscriber connection that is
      // reconnecting would queue the UNSUBSCRIBE and hold up the shutdown.
      void unsubscribe?.().catch(() => {});
      await outputs.close();
      await sources.close();
      await objects.close();
    });
    log.info({ store: target.kind, retentionDays: config.OUTPUTS_RETENTION_DAYS, maxBytes: config.OUTPUTS_MAX_BYTES }, 'outputs are kept');
  },
  { name: 'outputs', dependencies: ['config', 'metrics', 'store', 'tenants', 'predictions'] },
);
