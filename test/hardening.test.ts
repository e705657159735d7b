// Findings of a security and correctness review, each pinned by the behaviour a user would see.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { TenantRegistry, readTenantsFile } from '../src/access/tenants.js';
import { KEY_A, MODEL_PATH, type Gateway, type SimHandle, call, createPrediction, startGateway, startSimulator, upstreamCalls, waitFor } from './helpers/stack.js';

const SECRET = 'hardening-test-signing-secret-0123456789';
let s: SimHandle;
let gw: Gateway;

beforeAll(async () => {
  s = await startSimulator(100);
  gw = await startGateway({
    sim: s,
    tenants: [
      { id: 'team-a', keys: [KEY_A], rateLimit: { max: 1000, timeWindow: 1000.5 }, allowedOrigins: ['https://app.example.com'], versions: ['acme/img:v1'] },
    ],
    env: { TOKEN_SIGNING_SECRET: SECRET },
  });
});
afterAll(async () => {
  await gw.close();
  await s.sim.close();
});

describe('durations', () => {
  it('round a fractional timeWindow to whole milliseconds, so the Redis window still expires', async () => {
    const r = await call(gw.url, 'GET', '/replicate/v1/predictions', { key: KEY_A });
    expect(r.status).toBe(200);
    expect(Number(r.headers.get('x-ratelimit-reset'))).toBeGreaterThanOrEqual(1);
  });

  it('refuse windows beyond 366 days, naming the variable', () => {
    expect(() => loadConfig({ UPSTREAM_API_KEY: 'k', TENANTS_FILE: 'f', DEFAULT_RATE_LIMIT_WINDOW: '200000000000 days' })).toThrow(/DEFAULT_RATE_LIMIT_WINDOW must be a duration from 1 ms to 366 days/);
  });
});

describe('keys', () => {
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

describe('tenants hot reload', () => {
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
});

describe('browser origins', () => {
  it('match whatever the case of the Origin header', async () => {
    const r = await call(gw.url, 'GET', '/replicate/v1/predictions', { key: KEY_A, headers: { origin: 'https://APP.example.com' } });
    expect(r.status).toBe(200);
    expect((await call(gw.url, 'GET', '/replicate/v1/predictions', { key: KEY_A, headers: { origin: 'https://evil.example.com' } })).status).toBe(403);
  });
});

describe('URLs the router cannot read', () => {
  it('get problem JSON with a request id, like every other bad request', async () => {
    for (const path of ['/replicate/v1/predictions/%zz', `/replicate/v1/predictions/${'a'.repeat(150)}`]) {
      const r = await call(gw.url, 'GET', path, { key: KEY_A });
      expect([400, 414]).toContain(r.status);
      expect(r.headers.get('content-type')).toMatch(/^application\/problem\+json/);
      expect(r.body).toMatchObject({ status: r.status, type: expect.stringMatching(/^urn:fuhu-gateway:problem:/) });
      expect(r.body.request_id).toBe(r.headers.get('x-request-id'));
    }
  });
});

describe('Prefer: wait', () => {
  it('rounds and clamps a fractional wait, and refuses one that is not a number before anything goes upstream', async () => {
    s.sim.clearRequests();
    const ok = await call(gw.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: {} }, headers: { prefer: 'wait=90.5' } });
    expect(ok.status).toBe(201);
    expect(upstreamCalls(s.sim)[0]!.headers.prefer).toBe('wait=60');
    s.sim.clearRequests();
    const bad = await call(gw.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: {} }, headers: { prefer: 'wait=abc' } });
    expect(bad.status).toBe(400);
    expect(bad.body.detail).toMatch(/Prefer: wait takes a number/);
    expect(upstreamCalls(s.sim)).toHaveLength(0);
  });
});

describe('tokens narrowed to models', () => {
  it('cannot run an arbitrary version under an allowed model name', async () => {
    const minted = await call(gw.url, 'POST', '/gateway/v1/tokens', { key: KEY_A, body: { models: ['acme/img'] } });
    const token = minted.body.token as string;
    s.sim.clearRequests();
    const sneaky = await call(gw.url, 'POST', '/replicate/v1/predictions', { key: token, body: { version: 'acme/img:some-other-hash', input: {} } });
    expect(sneaky.status).toBe(403);
    expect(upstreamCalls(s.sim)).toHaveLength(0);
    const listed = await call(gw.url, 'POST', '/replicate/v1/predictions', { key: token, body: { version: 'acme/img:v1', input: {} } });
    expect(listed.status).toBe(201);
  });
});

describe('memory', () => {
  it('does not hold huge running predictions in the poll micro-cache: each poll goes upstream', async () => {
    const id = await createPrediction(gw.url, KEY_A, { image: `data:image/png;base64,${'A'.repeat(300 * 1024)}`, duration_ms: 60_000 });
    s.sim.clearRequests();
    for (let i = 0; i < 3; i++) expect((await call(gw.url, 'GET', `/replicate/v1/predictions/${id}`, { key: KEY_A })).status).toBe(200);
    expect(upstreamCalls(s.sim, new RegExp(id))).toHaveLength(3);
    // A small one is micro-cached as before.
    const small = await createPrediction(gw.url, KEY_A, { duration_ms: 60_000 });
    s.sim.clearRequests();
    for (let i = 0; i < 3; i++) await call(gw.url, 'GET', `/replicate/v1/predictions/${small}`, { key: KEY_A });
    expect(upstreamCalls(s.sim, new RegExp(small)).length).toBeLessThan(3);
  });
});
