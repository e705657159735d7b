// `app.webhooks`: the watcher and deliverer, started with the app (its BullMQ worker joins the other replicas')
// and stopped before the store closes.
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
    app.addHook('onClose', async () => webhooks.close());
  },
  { name: 'webhooks', dependencies: ['predictions', 'store', 'tenants'] },
);
