// `app.upstreams`: the upstream accounts (UPSTREAMS_FILE, hot-reloaded, or the one UPSTREAM_BASE_URL account), one
// client each, built here and closed by whoever built them; their balances read every UPSTREAM_BALANCE_POLL_SECONDS.
// `app.upstream` is the same object: catalogue reads, readiness and the dashboard need no account of their own.
import { watch, type FSWatcher } from 'node:fs';
import { basename, dirname } from 'node:path';
import fp from 'fastify-plugin';
import { UpstreamClient } from './client.js';
import { type UpstreamSpec, readUpstreamsFile, singleUpstream } from './upstreams-file.js';
import { Upstreams } from './upstreams.js';

/** setTimeout's longest delay; a longer drain is re-armed in steps. */
const MAX_TIMER_MS = 2 ** 31 - 1;

export default fp<{ upstream?: UpstreamClient; env?: Record<string, string | undefined>; watch?: boolean }>(
  async (app, opts) => {
    const { config, metrics } = app;
    const env = opts.env ?? {};
    const log = app.log.child({ component: 'upstreams' });
    const read = (): UpstreamSpec[] =>
      config.UPSTREAMS_FILE
        ? readUpstreamsFile(config.UPSTREAMS_FILE, env)
        : [singleUpstream(config.UPSTREAM_BASE_URL, config.UPSTREAM_API_KEY ?? '', config.UPSTREAM_WEBHOOK_SECRET)];
    // An injected client (tests) is the one account, whatever the config says, and stays its creator's to close.
    const specs = opts.upstream ? [singleUpstream(config.UPSTREAM_BASE_URL, config.UPSTREAM_API_KEY ?? 'injected', config.UPSTREAM_WEBHOOK_SECRET)] : read();
    const upstreams = new Upstreams(specs, {
      owned: !opts.upstream,
      build: (spec) =>
        opts.upstream ??
        new UpstreamClient({
          name: spec.name,
          baseUrl: spec.baseUrl,
          apiKey: spec.apiKey,
          timeoutMs: config.UPSTREAM_TIMEOUT_MS,
          retries: config.UPSTREAM_RETRIES,
          connections: config.UPSTREAM_CONNECTIONS,
          tenantMaxConcurrency: config.UPSTREAM_TENANT_MAX_CONCURRENCY,
          maxBodyBytes: config.UPSTREAM_MAX_BODY_BYTES,
          tracing: app.tracing,
        }),
      // Every prediction an account could hold has been given up on by then (the watcher cancels at max-open).
      drainMs: Math.min(MAX_TIMER_MS, (config.PREDICTION_MAX_OPEN_SECONDS + 300) * 1000),
      log,
      onFailover: (from, reason) => metrics.upstreamFailovers.inc({ upstream: from, reason }),
      onBalance: (name, remaining) => {
        metrics.upstreamBalance.set({ upstream: name }, remaining);
        const alert = config.UPSTREAM_BALANCE_ALERT;
        if (alert !== undefined && remaining <= alert) {
          metrics.upstreamBalanceAlerts.inc({ upstream: name });
          log.warn({ upstream: name, balance: remaining, alert }, 'an upstream\'s balance is at or below UPSTREAM_BALANCE_ALERT');
        }
      },
    });
    app.decorate('upstreams', upstreams);
    app.decorate('upstream', upstreams);

    const reload = () => {
      if (!config.UPSTREAMS_FILE || opts.upstream) return;
      try {
        const r = upstreams.apply(read());
        log.info({ upstreams: upstreams.names(), ...r }, 'upstreams file reloaded');
        // A new account's balance is worth knowing before it takes many creates.
        if (r.added.length || r.changed.length) void upstreams.refreshBalances();
      } catch (err) {
        log.error({ reason: (err as Error).message }, 'upstreams file rejected; keeping the previous upstreams');
      }
    };
    app.decorate('reloadUpstreams', reload);

    let watcher: FSWatcher | undefined;
    let debounce: NodeJS.Timeout | undefined;
    if (opts.watch && config.UPSTREAMS_FILE && !opts.upstream) {
      // The folder, not the file: editors save by replacing it (as the tenants file watcher explains).
      const name = basename(config.UPSTREAMS_FILE);
      try {
        watcher = watch(dirname(config.UPSTREAMS_FILE), { persistent: false }, (_event, changed) => {
          if (changed !== null && changed !== name) return;
          clearTimeout(debounce);
          debounce = setTimeout(reload, 100);
        });
      } catch {
        // A folder that cannot be watched still reloads on SIGHUP.
      }
    }

    const poll = () => upstreams.refreshBalances().catch((err: unknown) => log.debug({ err }, 'balance poll failed'));
    const timer = setInterval(poll, config.UPSTREAM_BALANCE_POLL_SECONDS * 1000);
    timer.unref();
    app.addHook('onReady', async () => void poll());
    app.addHook('onClose', async () => {
      clearInterval(timer);
      clearTimeout(debounce);
      watcher?.close();
      await upstreams.close();
    });
  },
  { name: 'upstream', dependencies: ['config', 'tracing', 'metrics'] },
);
