// `npm run demo`: the FuhuAPI simulator plus the gateway in front of it, with a demo tenant. No key, no Redis.
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
const upstreamKey = randomBytes(16).toString('hex');

const stepMs = intFromEnv(env, 'SIMULATOR_STEP_MS', 1500);
const sim = createSimulator({ apiKey: upstreamKey, stepMs });
const upstreamUrl = await sim.listen(intFromEnv(env, 'SIMULATOR_PORT', 0, 0, 65535), '127.0.0.1');

const dir = mkdtempSync(join(tmpdir(), 'fuhu-demo-'));
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
  UPSTREAM_BASE_URL: upstreamUrl,
  UPSTREAM_API_KEY: upstreamKey,
  TENANTS_FILE: tenantsFile,
  TOKEN_SIGNING_SECRET: env.TOKEN_SIGNING_SECRET ?? randomBytes(32).toString('hex'),
  ADMIN_API_KEY: ADMIN_KEY,
  PORT: env.PORT ?? '8080',
  HOST: env.HOST ?? '127.0.0.1',
  // A local receiver on this machine can get webhooks in the demo (production allows neither by default).
  WEBHOOK_ALLOW_HTTP_HOSTS: env.WEBHOOK_ALLOW_HTTP_HOSTS ?? '127.0.0.1,localhost',
  WEBHOOK_ALLOW_PRIVATE_HOSTS: env.WEBHOOK_ALLOW_PRIVATE_HOSTS ?? '127.0.0.1,localhost',
});
const app = await buildApp(config, { pretty: process.stdout.isTTY === true });
closeWithGrace({ delay: config.SHUTDOWN_GRACE_MS }, async () => {
  await app.close();
  await sim.close();
});
await app.listen({ port: config.PORT, host: config.HOST });
const addr = app.server.address();
const port = typeof addr === 'object' && addr ? addr.port : config.PORT;
const gw = `http://127.0.0.1:${port}`;

process.stdout.write(`
fuhu-gateway demo: gateway ${gw} → simulated FuhuAPI ${upstreamUrl}
(state in memory; predictions finish after about ${Math.round((stepMs * 2) / 1000)} s; Ctrl-C stops)

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
