// `npm run migrate-keys [-- --dry-run]`: moves the state written before Cluster support to its new key names
// (src/store/migrate-keys.ts), on the Redis the environment names (REDIS_URL, REDIS_SENTINELS or
// REDIS_CLUSTER_NODES, and REDIS_KEY_PREFIX, read as the gateway reads them; `.env` too, via npm's script).
import { loadConfig } from '../config.js';
import { migrateKeys } from '../store/migrate-keys.js';
import { createRedisClient, redisTarget } from '../store/redis-client.js';

async function main(): Promise<void> {
  const dryRun = process.argv.includes('--dry-run');
  // The gateway's own parsing; only the Redis settings matter here, so the gateway's required ones may be absent.
  const config = loadConfig({ UPSTREAM_API_KEY: 'unused', TENANTS_FILE: 'unused', ...process.env });
  const target = redisTarget(config);
  if (!target) {
    process.stderr.write('migrate-keys: set REDIS_URL, REDIS_SENTINELS or REDIS_CLUSTER_NODES (and REDIS_KEY_PREFIX) as for the gateway\n');
    process.exit(2);
  }
  const client = createRedisClient(target, '');
  await new Promise<void>((resolve, reject) => {
    client.once('ready', () => resolve());
    setTimeout(() => reject(new Error('Redis did not answer within 10 s')), 10_000).unref();
  });
  process.stdout.write(`migrate-keys: ${dryRun ? 'dry run (nothing is written): keys' : 'moving keys'} under "${config.REDIS_KEY_PREFIX}"\n`);
  await migrateKeys(client, config.REDIS_KEY_PREFIX, { dryRun, log: (l) => process.stdout.write(`  ${l}\n`) });
  process.stdout.write('Not carried over (see README "Scaling"): rate-limit windows, fair-share windows, reservations and running counts, token budgets.\n');
  await client.quit();
}

main().catch((err: Error) => {
  process.stderr.write(`migrate-keys: ${err.message}\n`);
  process.exit(1);
});
