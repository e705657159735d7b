// Bad configuration fails at boot with one line naming the variable; the tenants file is checked the same way, is
// reloaded when it changes or on SIGHUP, and a bad new file leaves the tenants in force.
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { ConfigError, intFromEnv, loadConfig } from '../src/config.js';
import { TenantRegistry, TenantsError, generateKey, hashKey, readTenantsFile } from '../src/access/tenants.js';
import { redisTarget } from '../src/store/redis-client.js';
import { KEY_A, call, startGateway, startGatewayProcess, useSimulator, waitFor, writeTenants } from './helpers/stack.js';

const run = promisify(execFile);
const base = { UPSTREAM_API_KEY: 'sk-test-secret-value-123', TENANTS_FILE: '/tmp/t.json' };

describe('loadConfig', () => {
  it('applies the documented defaults', () => {
    const c = loadConfig(base);
    expect(c).toMatchObject({
      PORT: 8080, HOST: '0.0.0.0', UPSTREAM_BASE_URL: 'https://api.fuhuapi.com/replicate/v1', UPSTREAM_TIMEOUT_MS: 30000,
      BODY_LIMIT_BYTES: 10485760, LOG_LEVEL: 'info', TRUST_PROXY: false, REDIS_KEY_PREFIX: 'fgw:', PREDICTION_TTL_SECONDS: 2592000,
      CACHE_TTL_SECONDS: 86400, DEFAULT_RATE_LIMIT_MAX: 600, DEFAULT_RATE_LIMIT_WINDOW: 60000, UPSTREAM_RETRIES: 2, POLL_CACHE_MS: 500,
      SHUTDOWN_GRACE_MS: 10000,
    });
    expect(Object.isFrozen(c)).toBe(true);
  });

  it.each([
    [{ PORT: 'eighty' }, /^invalid configuration: PORT /],
    [{ UPSTREAM_BASE_URL: 'ftp://x' }, /UPSTREAM_BASE_URL must be an http\(s\) URL/],
    [{ UPSTREAM_API_KEY: '' }, /UPSTREAM_API_KEY is required/],
    [{ TRUST_PROXY: 'maybe' }, /TRUST_PROXY must be true or false/],
    [{ LOG_LEVEL: 'loud' }, /LOG_LEVEL must be one of/],
    [{ REDIS_URL: 'http://localhost' }, /REDIS_URL must be a redis/],
    [{ DEFAULT_RATE_LIMIT_WINDOW: 'soon' }, /DEFAULT_RATE_LIMIT_WINDOW must be a duration/],
    [{ TOKEN_SIGNING_SECRET: 'short' }, /TOKEN_SIGNING_SECRET must be at least 32/],
    [{ PORT: '70000' }, /PORT must be at most 65535/],
    [{ RATE_LIMIT_LEASE_MAX: '0' }, /RATE_LIMIT_LEASE_MAX must be at least 1/],
    [{ POLL_CACHE_MS: '1.5' }, /POLL_CACHE_MS must be a whole number/],
    [{ ACCESS_LOG: 'sometimes' }, /ACCESS_LOG must be true or false/],
    [{ REDIS_URL: 'redis://r:6379', REDIS_SENTINELS: 's1:26379', REDIS_SENTINEL_NAME: 'm' }, /REDIS_URL and REDIS_SENTINELS are both set/],
    [{ REDIS_SENTINELS: 's1:26379', REDIS_CLUSTER_NODES: 'c1:6379' }, /REDIS_SENTINELS and REDIS_CLUSTER_NODES are both set/],
    [{ REDIS_SENTINELS: 's1:26379' }, /REDIS_SENTINELS needs REDIS_SENTINEL_NAME/],
    [{ REDIS_URL: 'redis://r:6379', REDIS_PASSWORD: 'pw' }, /REDIS_PASSWORD applies to REDIS_SENTINELS and REDIS_CLUSTER_NODES only; with REDIS_URL put it in the URL/],
    [{ REDIS_TLS: 'true' }, /REDIS_TLS is set but no Redis is/],
    [{ REDIS_CLUSTER_NODES: 'c1:7000', REDIS_SENTINEL_PASSWORD: 'spw' }, /REDIS_SENTINEL_PASSWORD is set without REDIS_SENTINELS/],
    [{ REDIS_CLUSTER_NODES: 'c1:6379,c2' }, /REDIS_CLUSTER_NODES must be a comma-separated list of host:port/],
    [{ REDIS_KEY_PREFIX: '{fgw}:' }, /REDIS_KEY_PREFIX must not contain \{ or \}/],
    [{ OUTPUTS_STORE: '/var/outputs' }, /OUTPUTS_STORE must be file:\/absolute\/folder or s3:\/\/bucket\/prefix/],
    [{ OUTPUTS_STORE: 's3://Bad_Bucket' }, /OUTPUTS_STORE must be file:/],
    [{ OUTPUTS_RETENTION_DAYS: '0' }, /OUTPUTS_RETENTION_DAYS must be above 0/],
    [{ OUTPUTS_MAX_BYTES: 'lots' }, /OUTPUTS_MAX_BYTES must be a number/],
    [{ OUTPUTS_STORE: 'file:/var/outputs', S3_ENDPOINT: 'http://minio:9000' }, /S3_ENDPOINT is set but OUTPUTS_STORE is not an s3:\/\/ URL/],
    [{ OUTPUTS_STORE: 's3://outputs', S3_ACCESS_KEY_ID: 'AKIA0000' }, /S3_ACCESS_KEY_ID is set without S3_SECRET_ACCESS_KEY/],
    [{ OUTPUTS_STORE: 's3://outputs', S3_FORCE_PATH_STYLE: 'perhaps' }, /S3_FORCE_PATH_STYLE must be true or false/],
  ])('names the variable for %o', (env, message) => {
    expect(() => loadConfig({ ...base, ...env })).toThrow(message);
    try {
      loadConfig({ ...base, ...env });
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
    }
  });

  it('reads where outputs are kept: off by default, a folder, or a bucket and prefix; retention in decimal days', () => {
    expect(loadConfig(base).OUTPUTS_STORE).toBeUndefined();
    expect(loadConfig(base)).toMatchObject({ OUTPUTS_RETENTION_DAYS: 30, OUTPUTS_MAX_BYTES: 200 * 1024 * 1024 });
    expect(loadConfig({ ...base, OUTPUTS_STORE: 'file:/var/lib/fuhu-outputs/' }).OUTPUTS_STORE).toEqual({ kind: 'file', dir: '/var/lib/fuhu-outputs' });
    const s3 = loadConfig({ ...base, OUTPUTS_STORE: 's3://team-outputs/gateway/kept', S3_ENDPOINT: 'http://minio:9000/', S3_FORCE_PATH_STYLE: 'true', OUTPUTS_RETENTION_DAYS: '0.0002' });
    expect(s3).toMatchObject({ OUTPUTS_STORE: { kind: 's3', bucket: 'team-outputs', prefix: 'gateway/kept/' }, S3_ENDPOINT: 'http://minio:9000', S3_FORCE_PATH_STYLE: true, OUTPUTS_RETENTION_DAYS: 0.0002 });
    expect(loadConfig({ ...base, OUTPUTS_STORE: 's3://team-outputs' }).OUTPUTS_STORE).toEqual({ kind: 's3', bucket: 'team-outputs', prefix: '' });
  });

  it('reads the Redis modes: one server, Sentinel (hosts, name, passwords, TLS) or Cluster', () => {
    expect(redisTarget(loadConfig(base))).toBeUndefined();
    expect(redisTarget(loadConfig({ ...base, REDIS_URL: 'rediss://:pw@r:6380' }))).toEqual({ mode: 'single', url: 'rediss://:pw@r:6380' });
    const sentinel = { REDIS_SENTINELS: 's1:26379, [::1]:26380', REDIS_SENTINEL_NAME: 'mymaster', REDIS_PASSWORD: 'pw', REDIS_SENTINEL_PASSWORD: 'spw', REDIS_TLS: 'true' };
    expect(redisTarget(loadConfig({ ...base, ...sentinel }))).toEqual({
      mode: 'sentinel', name: 'mymaster', sentinels: [{ host: 's1', port: 26379 }, { host: '::1', port: 26380 }], password: 'pw', sentinelPassword: 'spw', tls: true, username: undefined,
    });
    expect(redisTarget(loadConfig({ ...base, REDIS_CLUSTER_NODES: 'c1:7000,c2:7001' }))).toMatchObject({ mode: 'cluster', nodes: [{ host: 'c1', port: 7000 }, { host: 'c2', port: 7001 }], tls: false });
  });

  it('reads true/false settings in the usual spellings', () => {
    expect(loadConfig({ ...base, ACCESS_LOG: 'FALSE' }).ACCESS_LOG).toBe(false);
    expect(loadConfig({ ...base, TRUST_PROXY: 'yes' }).TRUST_PROXY).toBe(true);
    expect(loadConfig({ ...base, TRUST_PROXY: 'off' }).TRUST_PROXY).toBe(false);
  });

  it('checks the tools\' numeric settings by the same rules (simulator, demo, bench, soak)', () => {
    expect(intFromEnv({}, 'SIMULATOR_PORT', 8090, 0, 65535)).toBe(8090);
    expect(intFromEnv({ SIMULATOR_PORT: ' 9000 ' }, 'SIMULATOR_PORT', 8090, 0, 65535)).toBe(9000);
    expect(() => intFromEnv({ SIMULATOR_PORT: '70000' }, 'SIMULATOR_PORT', 8090, 0, 65535)).toThrow(/SIMULATOR_PORT must be at most 65535/);
    expect(() => intFromEnv({ SOAK_SECONDS: 'abc' }, 'SOAK_SECONDS', 60, 1)).toThrow(/SOAK_SECONDS must be a number/);
  });

  it('parses durations in words', () => {
    expect(loadConfig({ ...base, DEFAULT_RATE_LIMIT_WINDOW: '30 seconds' }).DEFAULT_RATE_LIMIT_WINDOW).toBe(30_000);
    expect(loadConfig({ ...base, DEFAULT_RATE_LIMIT_WINDOW: '2h' }).DEFAULT_RATE_LIMIT_WINDOW).toBe(7_200_000);
  });

  it('check the admin settings, naming the variable', () => {
    const base = { UPSTREAM_API_KEY: 'k', TENANTS_FILE: 'f' };
    expect(loadConfig(base)).toMatchObject({ ADMIN_SYNC_INTERVAL_MS: 500, AUDIT_RETENTION_DAYS: 365 });
    expect(() => loadConfig({ ...base, ADMIN_SYNC_INTERVAL_MS: '10' })).toThrow(/ADMIN_SYNC_INTERVAL_MS must be at least 50/);
    expect(() => loadConfig({ ...base, AUDIT_RETENTION_DAYS: 'forever' })).toThrow(/AUDIT_RETENTION_DAYS must be a number/);
  });

  it('refuse windows beyond 366 days, naming the variable', () => {
    expect(() => loadConfig({ UPSTREAM_API_KEY: 'k', TENANTS_FILE: 'f', DEFAULT_RATE_LIMIT_WINDOW: '200000000000 days' })).toThrow(/DEFAULT_RATE_LIMIT_WINDOW must be a duration from 1 ms to 366 days/);
  });

  it('makes the server exit non-zero with one line naming the variable, without echoing the secret', async () => {
    const err = await run(process.execPath, ['--import', 'tsx', 'src/server.ts'], {
      env: { PATH: process.env.PATH, UPSTREAM_API_KEY: 'sk-do-not-print-me-0000', TENANTS_FILE: '/tmp/x.json', PORT: '99999' },
    }).catch((e: { code: number; stderr: string }) => e);
    expect((err as { code: number }).code).toBe(1);
    const stderr = (err as { stderr: string }).stderr.trim();
    expect(stderr.split('\n')).toHaveLength(1);
    expect(stderr).toMatch(/PORT/);
    expect(stderr).not.toContain('sk-do-not-print-me');
  });
});

describe('tenants file', () => {
  const dir = mkdtempSync(join(tmpdir(), 'fgw-tenants-test-'));
  const file = (name: string, body: string) => {
    const f = join(dir, name);
    writeFileSync(f, body);
    return f;
  };

  it('accepts plain and sha256 keys and looks both up by hash', () => {
    const { key, hashed } = generateKey();
    expect(hashed).toBe(`sha256:${hashKey(key)}`);
    const reg = new TenantRegistry(writeTenants([{ id: 'a', keys: ['plain-key-0123456789', hashed] }]));
    expect(reg.lookup('plain-key-0123456789')?.id).toBe('a');
    expect(reg.lookup(key)?.id).toBe('a');
    expect(reg.lookup('nope-nope-nope-nope')).toBeUndefined();
  });

  it('reads YAML too', () => {
    const f = file('t.yaml', 'tenants:\n  - id: y\n    keys: ["yaml-key-0123456789"]\n    rateLimit: { max: 5, timeWindow: 1 minute }\n');
    const reg = new TenantRegistry(f);
    expect(reg.lookup('yaml-key-0123456789')?.rateLimit).toEqual({ max: 5, timeWindow: 60_000 });
  });

  it.each([
    ['duplicate ids', { tenants: [{ id: 'a', keys: ['k-0123456789abcdef'] }, { id: 'a', keys: ['k-0123456789abcdeg'] }] }, /duplicate tenant id "a"/],
    ['duplicate keys', { tenants: [{ id: 'a', keys: ['k-0123456789abcdef'] }, { id: 'b', keys: ['k-0123456789abcdef'] }] }, /^tenants\.1\.keys\.0: duplicate key/],
    ['a short key', { tenants: [{ id: 'a', keys: ['short'] }] }, /^tenants\.0\.keys\.0: .*16 characters/],
    ['a bad model pattern', { tenants: [{ id: 'a', keys: ['k-0123456789abcdef'], models: ['*'] }] }, /models\.0/],
    ['no tenants', { tenants: [] }, /at least one tenant/],
    ['a misspelt setting', { tenants: [{ id: 'a', keys: ['k-0123456789abcdef'], ratelimit: { max: 5 } }] }, /^tenants\.0: .*"ratelimit"/],
    ['a misspelt limit field', { tenants: [{ id: 'a', keys: ['k-0123456789abcdef'], rateLimit: { max: 5, window: '1 s' } }] }, /^tenants\.0\.rateLimit: .*"window"/],
    ['a file that is not an object', [1, 2], /^the file: /],
  ])('rejects %s, naming the place and never the key', (_name, doc, message) => {
    const f = file(`bad-${Math.random()}.json`, JSON.stringify(doc));
    expect(() => readTenantsFile(f)).toThrow(TenantsError);
    expect(() => readTenantsFile(f)).toThrow(message);
    try {
      readTenantsFile(f);
    } catch (err) {
      expect((err as Error).message).not.toContain('k-0123456789abcdef');
    }
  });

  it('names a missing or unparsable file', () => {
    expect(() => readTenantsFile(join(dir, 'missing.json'))).toThrow(/TENANTS_FILE .* cannot be read: ENOENT/);
    expect(() => readTenantsFile(file('broken.json', '{'))).toThrow(/is not valid JSON/);
    expect(() => readTenantsFile(file('empty.json', '  \n'))).toThrow(/TENANTS_FILE .*empty\.json is empty/);
  });

  it('with spaces are refused at boot: they could never be sent in an Authorization header', () => {
    const dir = mkdtempSync(join(tmpdir(), 'fgw-hard-'));
    const f = join(dir, 't.json');
    writeFileSync(f, JSON.stringify({ tenants: [{ id: 'a', keys: ['my team key with spaces'] }] }));
    expect(() => readTenantsFile(f)).toThrow(/keys\.0: .*without spaces/);
    expect(() => loadConfig({ UPSTREAM_API_KEY: 'k', TENANTS_FILE: 'f', ADMIN_API_KEY: 'admin key with spaces 123' })).toThrow(/ADMIN_API_KEY must not contain spaces/);
  });

  it('never appear in a tenants-file parse error, JSON or YAML', () => {
    const dir = mkdtempSync(join(tmpdir(), 'fgw-hard-'));
    const json = join(dir, 't.json');
    writeFileSync(json, '{"tenants":[{"id":"a","keys":[team-a-SECRET-raw-key-0123456789"]}]}');
    const yaml = join(dir, 't.yaml');
    writeFileSync(yaml, 'tenants:\n  - id: a\n    keys: ["team-a-SECRET-raw-key-0123456789"\n');
    for (const f of [json, yaml]) {
      let message = '';
      try {
        readTenantsFile(f);
      } catch (err) {
        message = (err as Error).message;
      }
      expect(message).toMatch(/is not valid (JSON|YAML) \((line \d+, column \d+|the parser's own message is not shown.*)\)/);
      expect(message).not.toContain('SECRET');
    }
  });
});

describe('keygen', () => {
  it('prints a key and its sha256 form that the tenants file accepts', async () => {
    const { stdout } = await run(process.execPath, ['--import', 'tsx', 'src/cli/keygen.ts', 'team-z']);
    const key = /key:\s+(\S+)/.exec(stdout)![1]!;
    const hashed = /hashed:\s+(\S+)/.exec(stdout)![1]!;
    expect(hashed).toBe(`sha256:${hashKey(key)}`);
    const reg = new TenantRegistry(writeTenants([{ id: 'team-z', keys: [hashed] }]));
    expect(reg.lookup(key)?.id).toBe('team-z');
  });
});

describe('tenant origins', () => {
  it('are matched in lower case, as browsers send them', () => {
    const reg = new TenantRegistry(writeTenants([{ id: 'o', keys: ['origin-key-0123456789'], allowedOrigins: ['https://App.Example.com'] }]));
    expect(reg.get('o')?.allowedOrigins).toEqual(['https://app.example.com']);
  });
});

describe('configuration of the bounds', () => {
  it.each([
    [{ METRICS_TOKEN: 'short' }, /METRICS_TOKEN must be at least 16 characters/],
    [{ UPSTREAM_MAX_BODY_BYTES: '1048576', BODY_LIMIT_BYTES: '2097152' }, /UPSTREAM_MAX_BODY_BYTES must be larger than BODY_LIMIT_BYTES/],
    [{ UPSTREAM_CONNECTIONS: '8', UPSTREAM_TENANT_MAX_CONCURRENCY: '9' }, /UPSTREAM_TENANT_MAX_CONCURRENCY must be at most UPSTREAM_CONNECTIONS/],
    [{ JSON_MAX_DEPTH: '1' }, /JSON_MAX_DEPTH must be at least 2/],
  ])('refuses %o at boot, naming the variable', (env, message) => {
    expect(() => loadConfig({ ...base, ...env })).toThrow(message);
  });

  it('defaults each tenant to half the upstream pool and the answer cap above the body limit', () => {
    // The answer cap leaves room for the body, 1 MiB, and a FILES_MAX_BYTES file inlined as base64 (issue 13).
    const inlined = Math.ceil((10 * 1024 * 1024 * 4) / 3);
    expect(loadConfig(base)).toMatchObject({ UPSTREAM_CONNECTIONS: 128, UPSTREAM_TENANT_MAX_CONCURRENCY: 64, UPSTREAM_MAX_BODY_BYTES: 11 * 1024 * 1024 + inlined, JSON_MAX_DEPTH: 64 });
    expect(loadConfig({ ...base, BODY_LIMIT_BYTES: String(32 * 1024 * 1024) }).UPSTREAM_MAX_BODY_BYTES).toBe(33 * 1024 * 1024 + inlined);
  });
});

describe('tenants hot reload', () => {
  const s = useSimulator(100);
  const NEW_KEY = 'team-c-new-key-0123456789';

  it('keeps working after the file is deleted and created again', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'fgw-hard-'));
    const file = join(dir, 'tenants.json');
    const write = (ids: string[]) => writeFileSync(file, JSON.stringify({ tenants: ids.map((id) => ({ id, keys: [`${id}-key-0123456789abcdef`] })) }));
    write(['one']);
    const reg = new TenantRegistry(file);
    const results: string[] = [];
    reg.watch((r) => results.push(r.ok ? `ok:${r.tenants}` : 'error'));
    try {
      rmSync(file);
      await waitFor(() => results.includes('error'), 3000, 'the deletion to be noticed');
      write(['two', 'three']);
      await waitFor(() => reg.get('three') !== undefined, 3000, 'the recreated file to load');
      write(['four']);
      await waitFor(() => reg.get('four') !== undefined, 3000, 'a later edit to load');
      expect(reg.get('one')).toBeUndefined();
    } finally {
      reg.unwatch();
    }
  });

  it('takes a changed file without a restart, and keeps the old tenants when the new file is bad', async () => {
    const file = writeTenants([{ id: 'team-a', keys: [KEY_A] }]);
    const gw = await startGateway({ sim: s, redis: 'memory', tenantsFile: file, deps: { watchTenants: true } });
    try {
      expect((await call(gw.url, 'GET', '/replicate/v1/predictions', { key: NEW_KEY })).status).toBe(401);
      writeFileSync(file, JSON.stringify({ tenants: [{ id: 'team-a', keys: [KEY_A] }, { id: 'team-c', keys: [NEW_KEY] }] }));
      await waitFor(async () => (await call(gw.url, 'GET', '/replicate/v1/predictions', { key: NEW_KEY })).status === 200, 5000, 'the reload');
      writeFileSync(file, '{"tenants": [ {"id": "team-a", "keys": ["short"]} ]}');
      await waitFor(() => gw.logs.some((l) => l.includes('tenants file rejected')), 5000, 'the rejection to be logged');
      expect((await call(gw.url, 'GET', '/replicate/v1/predictions', { key: NEW_KEY })).status).toBe(200);
      expect(gw.logs.join('\n')).toMatch(/keys\.0/);
    } finally {
      await gw.close();
    }
  });

  it('reloads on SIGHUP in the real server process', async () => {
    const file = writeTenants([{ id: 'team-a', keys: [KEY_A] }]);
    // The reload is logged at info.
    const server = await startGatewayProcess({ sim: s, tenantsFile: file, prefix: `sighup:${randomUUID()}:`, env: { LOG_LEVEL: 'info' } });
    const { url, child } = server;
    try {
      expect((await call(url, 'GET', '/replicate/v1/predictions', { key: NEW_KEY })).status).toBe(401);
      // Write in place without a watcher-visible rename race: SIGHUP is the operator's explicit reload.
      writeFileSync(file, JSON.stringify({ tenants: [{ id: 'team-c', keys: [NEW_KEY] }] }));
      child.kill('SIGHUP');
      await waitFor(async () => (await call(url, 'GET', '/replicate/v1/predictions', { key: NEW_KEY })).status === 200, 5000, 'the SIGHUP reload');
      // The log is asynchronous: the line may follow the reload by a moment on a loaded machine.
      await waitFor(() => /tenants file reloaded/.test(server.output()), 5000, 'the reload log line');
      expect((await call(url, 'GET', '/replicate/v1/predictions', { key: KEY_A })).status).toBe(401);
    } finally {
      await server.stop();
    }
  });
});
