// `app.adminTenants`: this process's copy of the API-managed tenants and keys, attached to `app.tenants` so that
// auth, limits and budgets see them like the file's; `app.admin`: the admin actions; `app.keyUsage`: per-key counts.
import fp from 'fastify-plugin';
import { TenantDirectory } from './directory.js';
import { KeyUsage } from './key-usage.js';
import { AdminService } from './service.js';

declare module 'fastify' {
  interface FastifyInstance {
    adminTenants: TenantDirectory;
    /** Undefined without ADMIN_API_KEY (the admin API is off). */
    admin: AdminService | undefined;
    keyUsage: KeyUsage;
  }
}

export default fp(
  async (app) => {
    const { config, tenantStore, pubsub, tenants } = app;
    const directory = new TenantDirectory(tenantStore, pubsub, { syncMs: config.ADMIN_SYNC_INTERVAL_MS, log: app.log.child({ component: 'admin' }) });
    tenants.attachManaged(directory);
    app.decorate('adminTenants', directory);
    app.decorate(
      'admin',
      config.ADMIN_API_KEY
        ? new AdminService(tenantStore, directory, tenants, {
            tenantsFile: config.TENANTS_FILE,
            retentionDays: config.AUDIT_RETENTION_DAYS,
            idemTtlMs: config.IDEMPOTENCY_TTL_SECONDS * 1000,
            adminKey: config.ADMIN_API_KEY,
          })
        : undefined,
    );
    const usage = new KeyUsage(tenantStore, app.log.child({ component: 'key-usage' }));
    app.decorate('keyUsage', usage);
    // Started once listening is near: a store that is not connected yet is retried by the directory's own timer.
    app.addHook('onReady', async () => {
      await directory.start();
      usage.start();
    });
    // Before the store closes (its hook was added earlier, so it runs later).
    app.addHook('onClose', async () => {
      await usage.stop();
      await directory.stop();
    });
  },
  { name: 'admin', dependencies: ['config', 'store', 'tenants'] },
);
