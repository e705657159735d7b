// `app.opsStats`: with ADMIN_API_KEY set, every answer is counted for the dashboard (in memory, src/dashboard/stats.ts,
// handed on by the request count of src/metrics.ts, which the access-log hook feeds) and this process's report is published to the shared kv every
// few seconds. Without it, nothing is counted.
import fp from 'fastify-plugin';
import { OpsStats } from './stats.js';

const PUBLISH_MS = 5000;

export default fp(
  async (app) => {
    if (!app.config.ADMIN_API_KEY) {
      app.decorate('opsStats', undefined);
      return;
    }
    const { upstream } = app;
    const stats = new OpsStats(app.kv, () => ({ upstream: upstream.breakerOpen, tenants: upstream.openTenantBreakers() }));
    app.decorate('opsStats', stats);
    app.metrics.onAnswered((a) => stats.record(a));
    // Published when something changed, and every other tick regardless, so the replica shows as live.
    let tick = 0;
    const publish = (force: boolean) =>
      stats.publish(Date.now(), force).catch((err: unknown) => app.log.debug({ err }, 'dashboard report not published (store unavailable)'));
    const timer = setInterval(() => void publish(++tick % 2 === 0), PUBLISH_MS);
    timer.unref();
    app.addHook('onReady', async () => void publish(true));
    app.addHook('onClose', async () => {
      clearInterval(timer);
      await publish(true);
    });
  },
  { name: 'dashboard-stats', dependencies: ['config', 'store', 'upstream', 'metrics'] },
);
