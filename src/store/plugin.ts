// `app.store`: the shared state, built from the config unless injected, closed by whoever built it.
import fp from 'fastify-plugin';
import { type State, createState } from './index.js';

export default fp<{ state?: State }>(
  async (app, opts) => {
    const { config } = app;
    let lastEvent = '';
    let closing = false;
    const state =
      opts.state ??
      createState(config, (event, detail) => {
        // ioredis reports every failed reconnect; log state changes only, and not our own disconnect at shutdown.
        if (event === lastEvent || closing) return;
        lastEvent = event;
        if (event === 'ready') app.log.info('redis connected');
        else if (event === 'error') app.log.warn({ reason: detail }, 'redis unavailable: requests that need state get 503 until it is back; reconnecting with backoff');
      });
    if (state.store.kind === 'memory') app.log.warn('no Redis is configured (REDIS_URL, REDIS_SENTINELS or REDIS_CLUSTER_NODES): state (ownership, cache, limits, idempotency) lives in this process only and is lost on restart');
    app.decorate('store', state.store);
    app.decorate('files', state.files);
    app.decorate('kv', state.kv);
    app.decorate('pubsub', state.pubsub);
    app.decorate('tenantStore', state.tenantStore);
    app.decorate('outputsState', state.outputs);
    app.decorate('rateLimitStore', state.rateLimitStore);
    if (!opts.state) {
      app.addHook('onClose', async () => {
        closing = true;
        await state.pubsub.close();
        await state.store.close();
      });
    }
  },
  { name: 'store', dependencies: ['config'] },
);
