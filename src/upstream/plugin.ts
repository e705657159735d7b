// `app.upstream`: the FuhuAPI client, built from the config unless injected, closed by whoever built it.
import fp from 'fastify-plugin';
import { UpstreamClient } from './client.js';

export default fp<{ upstream?: UpstreamClient }>(
  async (app, opts) => {
    const { config } = app;
    const upstream =
      opts.upstream ??
      new UpstreamClient({
        baseUrl: config.UPSTREAM_BASE_URL,
        apiKey: config.UPSTREAM_API_KEY,
        timeoutMs: config.UPSTREAM_TIMEOUT_MS,
        retries: config.UPSTREAM_RETRIES,
        connections: config.UPSTREAM_CONNECTIONS,
        tenantMaxConcurrency: config.UPSTREAM_TENANT_MAX_CONCURRENCY,
        maxBodyBytes: config.UPSTREAM_MAX_BODY_BYTES,
        tracing: app.tracing,
      });
    app.decorate('upstream', upstream);
    if (!opts.upstream) app.addHook('onClose', async () => upstream.close());
  },
  { name: 'upstream', dependencies: ['config', 'tracing'] },
);
