// `app.webhooks`: the deliverer, started with the app (its BullMQ worker joins the other replicas') and stopped
// before the store closes; moved on by the lifecycle's changes.
import fp from 'fastify-plugin';
import { Webhooks } from './webhooks.js';

declare module 'fastify' {
  interface FastifyInstance {
    webhooks: Webhooks;
  }
}

export default fp(
  async (app) => {
    const webhooks = new Webhooks(app.predictions, { kv: app.kv, tenants: app.tenants, log: app.log.child({ component: 'webhooks' }) });
    app.decorate('webhooks', webhooks);
    // What the lifecycle sees change (a GET, the watcher, a cancel) moves the prediction's webhook job on.
    app.predictions.lifecycle.onChange((change) => {
      webhooks.changed(change).catch((err: unknown) => app.log.debug({ err, prediction: change.id }, 'webhooks: could not pass on a change; the job polls the record'));
    });
    app.addHook('onClose', async () => webhooks.close());
  },
  { name: 'webhooks', dependencies: ['predictions', 'store', 'tenants'] },
);
