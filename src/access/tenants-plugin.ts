// `app.tenants`: the live tenant set, read from TENANTS_FILE unless injected, and reloaded when the file changes.
import fp from 'fastify-plugin';
import { TenantRegistry } from './tenants.js';

export default fp<{ tenants?: TenantRegistry; watch?: boolean }>(
  async (app, opts) => {
    const tenants = opts.tenants ?? new TenantRegistry(app.config.TENANTS_FILE);
    app.decorate('tenants', tenants);
    if (opts.watch) {
      tenants.watch((r) => (r.ok ? app.log.info({ tenants: r.tenants }, 'tenants file reloaded') : app.log.error({ reason: r.error }, 'tenants file rejected; keeping the previous tenants')));
      app.addHook('onClose', async () => tenants.unwatch());
    }
  },
  { name: 'tenants', dependencies: ['config'] },
);
