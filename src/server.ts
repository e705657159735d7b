// Entry point: config → buildApp → listen → graceful shutdown. The only file that reads process.env.
import closeWithGrace from 'close-with-grace';
import { buildApp } from './app.js';
import { ConfigError, loadConfig } from './config.js';
import { TenantsError } from './access/tenants.js';

async function main(): Promise<void> {
  let app;
  try {
    const config = loadConfig(process.env);
    app = await buildApp(config, { pretty: process.stdout.isTTY === true, watchTenants: true, env: process.env });
    process.on('SIGHUP', () => {
      const r = app!.tenants.reload();
      if (r.ok) app!.log.info({ tenants: r.tenants }, 'tenants file reloaded (SIGHUP)');
      else app!.log.error({ reason: r.error }, 'tenants file rejected (SIGHUP); keeping the previous tenants');
      app!.reloadUpstreams();
    });
    // Stop accepting, let in-flight requests finish within the grace period, then close Redis and the pool.
    // SIGHUP is skipped: it means "reload the tenants and upstreams files" here, not "shut down".
    closeWithGrace({ delay: config.SHUTDOWN_GRACE_MS, skip: ['SIGHUP'] }, async ({ signal, err }) => {
      if (err) app!.log.error({ err }, 'shutting down after an unexpected error');
      else app!.log.info({ signal }, 'shutting down');
      await app!.close();
    });
    await app.listen({ port: config.PORT, host: config.HOST });
  } catch (err) {
    if (err instanceof ConfigError || err instanceof TenantsError) {
      // One line naming what is wrong; no stack trace for a configuration mistake.
      process.stderr.write(`fuhu-gateway: ${err.message}\n`);
      process.exit(1);
    }
    throw err;
  }
}

await main();
