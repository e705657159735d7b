// `npm run audit:verify`: checks the admin audit trail on the Redis the environment names (as the gateway reads
// it): every event's hash, every link to the one before, and the head. Exit 0 intact, 1 with the first problem.
import { verifyAudit } from '../admin/audit.js';
import { loadConfig } from '../config.js';
import { createRedisClient, redisTarget } from '../store/redis-client.js';
import { RedisTenantStore } from '../store/tenant-store.js';

async function main(): Promise<void> {
  // Only the Redis settings matter here, so the gateway's required ones may be absent.
  const config = loadConfig({ UPSTREAM_API_KEY: 'unused', TENANTS_FILE: 'unused', ...process.env });
  const target = redisTarget(config);
  if (!target) {
    process.stderr.write('audit:verify: set REDIS_URL, REDIS_SENTINELS or REDIS_CLUSTER_NODES (and REDIS_KEY_PREFIX) as for the gateway; without Redis the trail lives in the gateway process only\n');
    process.exit(2);
  }
  const client = createRedisClient(target, config.REDIS_KEY_PREFIX);
  await new Promise<void>((resolve, reject) => {
    client.once('ready', () => resolve());
    setTimeout(() => reject(new Error('Redis did not answer within 10 s')), 10_000).unref();
  });
  const r = await verifyAudit(new RedisTenantStore(client));
  await client.quit();
  if (!r.ok) {
    process.stderr.write(`audit:verify: BROKEN after ${r.events} good events: ${r.problem}\n`);
    process.exit(1);
  }
  process.stdout.write(r.events ? `audit trail intact: ${r.events} events, seq ${r.first} to ${r.last}${r.first! > 1 ? ` (events before ${r.first} were dropped by AUDIT_RETENTION_DAYS; the first kept one anchors the chain)` : ''}\n` : 'audit trail intact: 0 events\n');
}

main().catch((err: Error) => {
  process.stderr.write(`audit:verify: ${err.message}\n`);
  process.exit(1);
});
