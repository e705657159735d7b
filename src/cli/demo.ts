// `npm run demo`: two simulated reseller accounts (FuhuAPI simulators with balances) and the gateway in front of
// them, with a demo tenant. No key, no Redis.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import closeWithGrace from 'close-with-grace';
import { buildApp } from '../app.js';
import { intFromEnv, loadConfig } from '../config.js';
import { createSimulator } from '../simulator/simulator.js';

const env = process.env;
const DEMO_KEY = env.DEMO_KEY ?? 'fgw_demo_key_not_for_production';
const ADMIN_KEY = env.ADMIN_API_KEY ?? 'fgw_demo_admin_key_not_for_production';

const stepMs = intFromEnv(env, 'SIMULATOR_STEP_MS', 1500);
// Two accounts, as an operator with a second key or reseller has them: the second one small, so that a few dozen
// creates take it under the alert and to zero, and the dashboard shows creates moving to the first.
const accounts = [
  { name: 'reseller-a', balance: 20, weight: 1 },
  { name: 'reseller-b', balance: 0.3, weight: 1 },
].map((a) => {
  const apiKey = randomBytes(16).toString('hex');
  return { ...a, apiKey, sim: createSimulator({ apiKey, stepMs, balance: a.balance, createCost: 0.05 }) };
});
const firstPort = intFromEnv(env, 'SIMULATOR_PORT', 0, 0, 65535);
const urls = await Promise.all(accounts.map((a, i) => a.sim.listen(firstPort === 0 ? 0 : firstPort + i, '127.0.0.1')));

const dir = mkdtempSync(join(tmpdir(), 'fuhu-demo-'));
const upstreamsFile = join(dir, 'upstreams.json');
writeFileSync(upstreamsFile, JSON.stringify({ upstreams: accounts.map((a, i) => ({ name: a.name, baseUrl: urls[i], apiKey: a.apiKey, weight: a.weight })) }, null, 2));
const tenantsFile = join(dir, 'tenants.json');
writeFileSync(
  tenantsFile,
  JSON.stringify(
    {
      tenants: [
        {
          id: 'demo',
          keys: [DEMO_KEY],
          rateLimit: { max: 600, timeWindow: '1 minute' },
          createRateLimit: { max: 60, timeWindow: '1 minute' },
          allowedOrigins: ['*'],
        },
      ],
    },
    null,
    2,
  ),
);

const config = loadConfig({
  ...env,
  UPSTREAM_API_KEY: '',
  UPSTREAMS_FILE: upstreamsFile,
  UPSTREAM_BALANCE_POLL_SECONDS: env.UPSTREAM_BALANCE_POLL_SECONDS ?? '10',
  UPSTREAM_BALANCE_ALERT: env.UPSTREAM_BALANCE_ALERT ?? '0.2',
  TENANTS_FILE: tenantsFile,
  TOKEN_SIGNING_SECRET: env.TOKEN_SIGNING_SECRET ?? randomBytes(32).toString('hex'),
  ADMIN_API_KEY: ADMIN_KEY,
  PORT: env.PORT ?? '8080',
  HOST: env.HOST ?? '127.0.0.1',
  // A local receiver on this machine can get webhooks in the demo (production allows neither by default).
  WEBHOOK_ALLOW_HTTP_HOSTS: env.WEBHOOK_ALLOW_HTTP_HOSTS ?? '127.0.0.1,localhost',
  WEBHOOK_ALLOW_PRIVATE_HOSTS: env.WEBHOOK_ALLOW_PRIVATE_HOSTS ?? '127.0.0.1,localhost',
});
const app = await buildApp(config, { pretty: process.stdout.isTTY === true, watchTenants: true });
closeWithGrace({ delay: config.SHUTDOWN_GRACE_MS }, async () => {
  await app.close();
  await Promise.all(accounts.map((a) => a.sim.close()));
});
await app.listen({ port: config.PORT, host: config.HOST });
const addr = app.server.address();
const port = typeof addr === 'object' && addr ? addr.port : config.PORT;
const gw = `http://127.0.0.1:${port}`;

process.stdout.write(`
fuhu-gateway demo: gateway ${gw} → two simulated reseller accounts:
${accounts.map((a, i) => `  ${a.name}  ${urls[i]}  balance ${a.balance} USD, 0.05 a create`).join('\n')}
(state in memory; predictions finish after about ${Math.round((stepMs * 2) / 1000)} s; Ctrl-C stops)
Creates go to both by weight; reseller-b runs dry after 6, and from then on they go to reseller-a (balances are read
every ${config.UPSTREAM_BALANCE_POLL_SECONDS} s; the dashboard shows both). The accounts are in ${upstreamsFile}:
edit it (weights, remove one to drain it) and the gateway reloads it.

Create a prediction and wait for it:
  curl -s -X POST ${gw}/replicate/v1/models/black-forest-labs/flux-schnell/predictions \\
    -H 'Authorization: Bearer ${DEMO_KEY}' -H 'Content-Type: application/json' -H 'Prefer: wait' \\
    -d '{"input":{"prompt":"a lighthouse at dawn"}}'

With the official client (npm i replicate):
  import Replicate from 'replicate';
  const replicate = new Replicate({ auth: '${DEMO_KEY}', baseUrl: '${gw}/replicate/v1', useFileOutput: false });
  console.log(await replicate.run('black-forest-labs/flux-schnell', { input: { prompt: 'a lighthouse at dawn' } }));

A short-lived browser token:
  curl -s -X POST ${gw}/gateway/v1/tokens -H 'Authorization: Bearer ${DEMO_KEY}' \\
    -H 'Content-Type: application/json' -d '{"ttl_seconds":600,"max_creates":5}'

A webhook (http to this machine is allowed in the demo): add "webhook":"http://127.0.0.1:9000/hook" to the body;
  the signing secret, shown once:
  curl -s ${gw}/gateway/v1/webhooks/secret -H 'Authorization: Bearer ${DEMO_KEY}'

The operators' dashboard: open ${gw}/gateway/admin/ and sign in with ${ADMIN_KEY}

`);
