// Teams and keys at runtime (issue 25), over real HTTP on a real Redis: tenants created, changed (merge patch,
// If-Match) and deleted through the admin API; keys issued, rotated with a grace period (and an Idempotency-Key),
// revoked; team admins limited to their own tenant; the audit trail, its chain and `npm run audit:verify`.
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import { describe, expect, inject, it } from 'vitest';
import type { TenantInput } from '../src/access/tenants.js';
import { KEY_A, call, createPrediction, expectProblem, upstreamCalls, useGateway, useSimulator, waitFor } from './helpers/stack.js';
import { ROOT } from './support/processes.js';

const ADMIN = 'admin-key-for-the-admin-api-0123456789';
const SECRET = 'admin-test-signing-secret-0123456789abcdef';
const PREFIX = `admin:${randomUUID()}:`;
const lots = { max: 100_000, timeWindow: '1 minute' };
const TENANTS: TenantInput[] = [{ id: 'team-a', keys: [KEY_A], rateLimit: lots }];
const KEY_FORMAT = /^fgw_([a-z0-9]{12})_[A-Za-z0-9]{38}$/;

const s = useSimulator(50);
const gw = useGateway(() => ({
  sim: s,
  tenants: TENANTS,
  prefix: PREFIX,
  env: { ADMIN_API_KEY: ADMIN, TOKEN_SIGNING_SECRET: SECRET, LOG_LEVEL: 'info', AUTH_FAILURE_LIMIT: '100000', DEFAULT_RATE_LIMIT_MAX: '100000' },
}));

const admin = (method: string, path: string, body?: unknown, headers: Record<string, string> = {}) =>
  call(gw.url, method, `/gateway/v1/admin${path}`, { key: ADMIN, body, headers: { 'user-agent': 'admin-test/1.0', ...headers } });
const as = (key: string, method: string, path: string, body?: unknown) => call(gw.url, method, `/gateway/v1/admin${path}`, { key, body });
const account = (key: string) => call(gw.url, 'GET', '/replicate/v1/account', { key });

async function newTenant(id: string, extra: Record<string, unknown> = {}) {
  const r = await admin('POST', '/tenants', { id, rateLimit: lots, ...extra });
  expect(r.status, r.text).toBe(201);
  return r;
}

async function newKey(tenant: string, body: Record<string, unknown> = {}, key = ADMIN) {
  const r = await call(gw.url, 'POST', `/gateway/v1/admin/tenants/${tenant}/keys`, { key, body });
  expect(r.status, r.text).toBe(201);
  return r.body as { id: string; key: string; role: string; name: string | null; created_at: string; expires_at: string | null };
}

describe('tenants through the admin API', () => {
  it('creates a tenant that serves requests at once, lists it beside the file\'s, and names a bad field with 422', async () => {
    const created = await newTenant('api-one', { maxRunning: 3, models: ['black-forest-labs/*'], budget: { creates: { max: 50, period: 'day' } } });
    expect(created.headers.get('etag')).toMatch(/^"\d+"$/);
    expect(created.body).toMatchObject({ id: 'api-one', source: 'api', maxRunning: 3, models: ['black-forest-labs/*'], share: 1 });
    const k = await newKey('api-one');
    expect((await account(k.key)).status).toBe(200);

    const list = await admin('GET', '/tenants');
    expect(list.body.tenants).toEqual(expect.arrayContaining([expect.objectContaining({ id: 'team-a', source: 'file' }), expect.objectContaining({ id: 'api-one', source: 'api' })]));

    expectProblem(await admin('POST', '/tenants', { id: 'bad-one', maxRunning: -1 }), 422, /^maxRunning /);
    expectProblem(await admin('POST', '/tenants', { id: 'bad-two', ratelimit: { max: 1 } }), 422, /ratelimit/);
    expectProblem(await admin('POST', '/tenants', { id: 'bad three' }), 422, /^id /);
    expectProblem(await admin('POST', '/tenants', { id: 'bad-four', keys: ['x'.repeat(20)] }), 422, /keys .*POST \/gateway\/v1\/admin\/tenants\/bad-four\/keys/);
    expectProblem(await admin('POST', '/tenants', { id: 'api-one' }), 409, /already exists/);
    // The checks the tenants file gets apply too: a cost budget needs a price table.
    expectProblem(await admin('POST', '/tenants', { id: 'bad-five', budget: { cost: { max: 5, period: 'month' } } }), 422, /^budget\.cost needs PRICES_FILE/);
    expect((await admin('GET', '/tenants/bad-one')).status).toBe(404);
  });

  it("applies an API tenant's allowedOrigins to browsers: the CORS preflight and the request's origin check", async () => {
    await newTenant('api-web', { allowedOrigins: ['https://App.Example.com'] });
    const k = await newKey('api-web');
    const pre = await fetch(`${gw.url}/replicate/v1/account`, { method: 'OPTIONS', headers: { origin: 'https://app.example.com', 'access-control-request-method': 'GET', 'access-control-request-headers': 'authorization' } });
    expect(pre.status).toBe(204);
    expect(pre.headers.get('access-control-allow-origin')).toBe('https://app.example.com');
    expect((await call(gw.url, 'GET', '/replicate/v1/account', { key: k.key, headers: { origin: 'https://app.example.com' } })).status).toBe(200);
    expectProblem(await call(gw.url, 'GET', '/replicate/v1/account', { key: k.key, headers: { origin: 'https://evil.example' } }), 403, /origin/);
  });

  it('keeps tenants-file tenants read-only: 409 naming the file', async () => {
    const r = await admin('PATCH', '/tenants/team-a', { maxRunning: 2 });
    expectProblem(r, 409, new RegExp(`tenants file \\(${gw.config.TENANTS_FILE.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}\\)`));
    expectProblem(await admin('POST', '/tenants', { id: 'team-a' }), 409, /tenants file/);
    expectProblem(await admin('DELETE', '/tenants/team-a'), 409, /tenants file/);
    expectProblem(await admin('POST', '/tenants/team-a/keys', {}), 409, /tenants file/);
    expect((await admin('GET', '/tenants/team-a')).body).toMatchObject({ id: 'team-a', source: 'file' });
  });

  it('lets the tenants file win for an id in both: its settings and keys apply, the API one and its keys are inactive until the file drops it', async () => {
    await newTenant('both', { maxRunning: 9 });
    const k = await newKey('both');
    expect((await account(k.key)).status).toBe(200);
    const file = gw.config.TENANTS_FILE;
    const original = readFileSync(file, 'utf8');
    try {
      writeFileSync(file, JSON.stringify({ tenants: [...TENANTS, { id: 'both', keys: ['both-file-key-0123456789abcdef'], rateLimit: lots }] }));
      expect(gw.app.tenants.reload()).toMatchObject({ ok: true });
      expectProblem(await account(k.key), 401);
      expect((await account('both-file-key-0123456789abcdef')).body).toMatchObject({ username: 'both' });
      expect((await admin('GET', '/tenants/both')).body).toMatchObject({ source: 'file' });
      expect((await admin('GET', '/tenants')).body.tenants.filter((t: { id: string }) => t.id === 'both')).toEqual([
        expect.objectContaining({ source: 'file' }),
        expect.objectContaining({ source: 'api', shadowedByFile: true, maxRunning: 9 }),
      ]);
      expectProblem(await admin('PATCH', '/tenants/both', { maxRunning: 1 }), 409, /tenants file/);
    } finally {
      writeFileSync(file, original);
      expect(gw.app.tenants.reload()).toMatchObject({ ok: true });
    }
    // The file dropped it: the API tenant and its key are back.
    expect((await account(k.key)).status).toBe(200);
  });

  it('changes a tenant with a JSON merge patch, honours If-Match (412 on a stale ETag), and the change applies to requests', async () => {
    await newTenant('api-patch', { rateLimit: { max: 2, timeWindow: '1 minute' }, models: ['acme/*'] });
    const k = await newKey('api-patch');
    const got = await admin('GET', '/tenants/api-patch');
    const etag = got.headers.get('etag')!;
    const patched = await admin('PATCH', '/tenants/api-patch', { rateLimit: { max: 1000 }, models: null, share: 3 }, { 'content-type': 'application/merge-patch+json', 'if-match': etag });
    expect(patched.status, patched.text).toBe(200);
    expect(patched.body).toMatchObject({ rateLimit: { max: 1000, timeWindow: 60_000 }, share: 3 });
    expect(patched.body.models).toBeUndefined();
    expect(patched.headers.get('etag')).not.toBe(etag);
    // The old ETag is stale now.
    expectProblem(await admin('PATCH', '/tenants/api-patch', { share: 4 }, { 'if-match': etag }), 412, /ETag/);
    expectProblem(await admin('PATCH', '/tenants/api-patch', { maxRunning: 'many' }), 422, /^maxRunning /);
    // 5 requests pass where the old limit of 2 would have refused the third.
    for (let i = 0; i < 5; i++) expect((await account(k.key)).status).toBe(200);
  });

  it('deletes a tenant: its keys and tokens stop working at once, its running prediction is left to finish', async () => {
    await newTenant('api-gone');
    const k = await newKey('api-gone');
    const running = await createPrediction(gw.url, k.key, { prompt: 'still running', duration_ms: 300 });
    const tok = await call(gw.url, 'POST', '/gateway/v1/tokens', { key: k.key, body: {} });
    expect(tok.status).toBe(201);
    expect((await account(tok.body.token)).status).toBe(200);
    expect((await admin('DELETE', '/tenants/api-gone')).status).toBe(204);
    expectProblem(await account(k.key), 401);
    await waitFor(() => s.sim.predictions.get(running)?.status === 'succeeded', 5000, 'the prediction to finish upstream');
    expect(upstreamCalls(s.sim, /\/cancel$/)).toEqual([]);
    expectProblem(await account(tok.body.token), 401);
    // The same id created again: the old key and token stay dead.
    await newTenant('api-gone');
    expectProblem(await account(k.key), 401);
    expectProblem(await account(tok.body.token), 401, /issued before/);
  });
});

describe('keys with a stable id', () => {
  it('issues a key shown once (id in clear, checksum), lists keys without secrets, and never logs a secret', async () => {
    await newTenant('api-keys');
    const k = await newKey('api-keys', { name: 'ci', expires_at: '2099-01-01T00:00:00Z' });
    expect(k.key).toMatch(KEY_FORMAT);
    expect(KEY_FORMAT.exec(k.key)![1]).toBe(k.id);
    expect(k).toMatchObject({ name: 'ci', role: 'member', expires_at: '2099-01-01T00:00:00.000Z' });
    // One changed character breaks the checksum: not even looked up.
    const typo = k.key.slice(0, -1) + (k.key.endsWith('a') ? 'b' : 'a');
    expectProblem(await account(typo), 401);
    const list = await admin('GET', '/tenants/api-keys/keys');
    expect(list.body.keys).toEqual([expect.objectContaining({ id: k.id, name: 'ci', role: 'member' })]);
    expect(list.text).not.toContain(k.key.slice(18));
    expect(list.text).not.toMatch(/hash/);
    const used = await account(k.key);
    expect(used.status).toBe(200);
    await new Promise((r) => setTimeout(r, 50));
    const lines = gw.logs.join('\n');
    expect(lines).not.toContain(k.key);
    // The key's id names it in the access log.
    expect(gw.logs.some((l) => l.includes(`"keyId":"${k.id}"`))).toBe(true);
    expectProblem(await admin('POST', '/tenants/api-keys/keys', { expires_at: '2001-01-01T00:00:00Z' }), 422, /expires_at/);
    // A key past its expires_at is refused (checked at each request, on every replica).
    const soon = await newKey('api-keys', { expires_at: new Date(Date.now() + 1000).toISOString() });
    expect((await account(soon.key)).status).toBe(200);
    await waitFor(async () => (await account(soon.key)).status === 401, 5000, 'the key to expire');
    expect(Date.now()).toBeGreaterThanOrEqual(Date.parse(soon.expires_at!));
    expectProblem(await admin('POST', '/tenants/api-keys/keys', { role: 'owner' }), 422, /^role /);
  });

  it('rotates under the same id: the old secret works until the grace ends, a grace of 0 ends it at once', async () => {
    await newTenant('api-rotate');
    const k = await newKey('api-rotate');
    const r1 = await admin('POST', `/tenants/api-rotate/keys/${k.id}/rotate`, { grace_seconds: 3600 });
    expect(r1.status, r1.text).toBe(200);
    expect(r1.body.id).toBe(k.id);
    expect(r1.body.key).not.toBe(k.key);
    expect(KEY_FORMAT.exec(r1.body.key)![1]).toBe(k.id);
    expect(Date.parse(r1.body.previous_valid_until)).toBeGreaterThan(Date.now() + 3500_000);
    expect((await account(k.key)).status).toBe(200);
    expect((await account(r1.body.key)).status).toBe(200);
    const r2 = await admin('POST', `/tenants/api-rotate/keys/${k.id}/rotate`, { grace_seconds: 0 });
    expect(r2.body.previous_valid_until).toBeNull();
    expectProblem(await account(r1.body.key), 401);
    expectProblem(await account(k.key), 401);
    expect((await account(r2.body.key)).status).toBe(200);
    expectProblem(await admin('POST', `/tenants/api-rotate/keys/${k.id}/rotate`, { grace_seconds: 7 * 86400 + 1 }), 422, /^grace_seconds /);
  });

  it('gives a lost rotation answer again for the same Idempotency-Key, the same secret, and refuses the key for another rotation', async () => {
    await newTenant('api-idem');
    const k = await newKey('api-idem');
    const idem = randomUUID();
    const [a, b] = await Promise.all([
      admin('POST', `/tenants/api-idem/keys/${k.id}/rotate`, { grace_seconds: 60 }, { 'idempotency-key': idem }),
      admin('POST', `/tenants/api-idem/keys/${k.id}/rotate`, { grace_seconds: 60 }, { 'idempotency-key': idem }),
    ]);
    expect([a.status, b.status]).toEqual([200, 200]);
    expect(a.body.key).toBe(b.body.key);
    const again = await admin('POST', `/tenants/api-idem/keys/${k.id}/rotate`, { grace_seconds: 60 }, { 'idempotency-key': idem });
    expect(again.body.key).toBe(a.body.key);
    expect(again.headers.get('idempotent-replayed')).toBe('true');
    expect((await account(again.body.key)).status).toBe(200);
    // One rotation happened: the first secret is the previous one, still in its grace.
    expect((await account(k.key)).status).toBe(200);
    expectProblem(await admin('POST', `/tenants/api-idem/keys/${k.id}/rotate`, { grace_seconds: 5 }, { 'idempotency-key': idem }), 422, /Idempotency-Key/);
    // The stored answer is sealed: the secret is nowhere in Redis in clear.
    const redis = new Redis(inject('redisUrl'));
    try {
      const found: string[] = [];
      for (const key of await redis.keys(`${PREFIX}*`)) {
        const type = await redis.type(key);
        const text = type === 'string' ? await redis.get(key) : type === 'hash' ? JSON.stringify(await redis.hgetall(key)) : type === 'list' ? JSON.stringify(await redis.lrange(key, 0, -1)) : '';
        if (text?.includes(a.body.key.slice(18, 50))) found.push(key);
      }
      expect(found).toEqual([]);
    } finally {
      redis.disconnect();
    }
  });

  it('revokes a key at once and counts usage per key id', async () => {
    await newTenant('api-revoke');
    const k1 = await newKey('api-revoke');
    const k2 = await newKey('api-revoke');
    for (let i = 0; i < 3; i++) expect((await account(k1.key)).status).toBe(200);
    expect((await account(k2.key)).status).toBe(200);
    const usage = await admin('GET', `/tenants/api-revoke/keys/${k1.id}/usage`);
    expect(usage.status, usage.text).toBe(200);
    expect(usage.body.totals).toEqual({ requests: 3, creates: 0 });
    const metrics = await call(gw.url, 'GET', '/metrics');
    expect(metrics.text).toContain(`fgw_key_requests_total{tenant="api-revoke",key_id="${k1.id}"} 3`);
    expect((await admin('DELETE', `/tenants/api-revoke/keys/${k1.id}`)).status).toBe(204);
    expectProblem(await account(k1.key), 401);
    expect((await account(k2.key)).status).toBe(200);
    expectProblem(await admin('DELETE', `/tenants/api-revoke/keys/${k1.id}`), 404);
  });
});

describe('team admins', () => {
  it("manage their own tenant's keys and read its audit events, and get 403 for anything else", async () => {
    await newTenant('team-x');
    await newTenant('team-y');
    const boss = await newKey('team-x', { role: 'admin', name: 'x-admin' });
    const yKey = await newKey('team-y');
    const member = await newKey('team-x');
    // Its own tenant's keys: issue, list, rotate, revoke.
    const issued = await newKey('team-x', { name: 'by-team-admin' }, boss.key);
    expect((await as(boss.key, 'GET', '/tenants/team-x/keys')).body.keys).toHaveLength(3);
    expect((await as(boss.key, 'POST', `/tenants/team-x/keys/${issued.id}/rotate`, { grace_seconds: 0 })).status).toBe(200);
    expect((await as(boss.key, 'DELETE', `/tenants/team-x/keys/${issued.id}`)).status).toBe(204);
    // Anything else: 403.
    expectProblem(await as(boss.key, 'GET', '/tenants/team-y/keys'), 403);
    expectProblem(await as(boss.key, 'DELETE', `/tenants/team-y/keys/${yKey.id}`), 403);
    expectProblem(await as(boss.key, 'GET', '/tenants'), 403);
    expectProblem(await as(boss.key, 'PATCH', '/tenants/team-x', { maxRunning: 100 }), 403);
    expectProblem(await as(boss.key, 'GET', '/usage'), 403);
    expectProblem(await as(member.key, 'GET', '/tenants/team-x/keys'), 403);
    // Its audit events only, naming it as the actor.
    const events = (await as(boss.key, 'GET', '/audit?limit=1000')).body.events as { target: { tenant: string }; actor: unknown; action: string }[];
    expect(events.length).toBeGreaterThan(3);
    expect(events.every((e) => e.target.tenant === 'team-x')).toBe(true);
    expect(events).toContainEqual(expect.objectContaining({ action: 'key.revoke', actor: { type: 'team_admin', tenant: 'team-x', key_id: boss.id } }));
    // And it is still a tenant key for the API.
    expect((await account(boss.key)).status).toBe(200);
  });
});

describe('the audit trail', () => {
  it('records who, what (before/after, no secret), when and from where, chained by hashes; audit:verify finds a changed event', async () => {
    await newTenant('api-audit', { webhookSecret: `whsec_${Buffer.from('a'.repeat(32)).toString('base64')}` });
    const k = await newKey('api-audit');
    await admin('PATCH', '/tenants/api-audit', { maxRunning: 7 });
    const rotated = await admin('POST', `/tenants/api-audit/keys/${k.id}/rotate`, { grace_seconds: 10 });
    const all = await admin('GET', '/audit?limit=1000');
    expect(all.status).toBe(200);
    const events = all.body.events as Record<string, any>[];
    const mine = events.filter((e) => e.target.tenant === 'api-audit');
    expect(mine.map((e) => e.action)).toEqual(['tenant.create', 'key.create', 'tenant.update', 'key.rotate']);
    expect(mine[2]).toMatchObject({ actor: { type: 'admin_key' }, before: { maxRunning: null }, after: { maxRunning: 7 }, user_agent: 'admin-test/1.0', ip: '127.0.0.1' });
    expect(mine[0]!.after.webhookSecret).toBe('[secret]');
    const shown = await admin('GET', '/tenants/api-audit');
    expect(shown.body.webhookSecretSet).toBe(true);
    expect(shown.text).not.toContain('a'.repeat(20));
    for (let i = 1; i < events.length; i++) expect(events[i]!.prev).toBe(events[i - 1]!.hash);
    expect(all.text).not.toContain(k.key);
    expect(all.text).not.toContain(rotated.body.key);
    expect(all.text).not.toContain('a'.repeat(20));
    // Paging: after= the last seq seen.
    const page = await admin('GET', `/audit?after=${events[1]!.seq}&limit=2`);
    expect(page.body.events.map((e: { seq: number }) => e.seq)).toEqual([events[2]!.seq, events[3]!.seq]);
    expectProblem(await admin('GET', '/audit?limit=0'), 422, /limit/);

    const env = { ...process.env, REDIS_URL: inject('redisUrl'), REDIS_KEY_PREFIX: PREFIX, UPSTREAM_API_KEY: 'x', TENANTS_FILE: 'x' };
    const run = promisify(execFile);
    const ok = await run('npm', ['run', '--silent', 'audit:verify'], { cwd: ROOT, env });
    expect(ok.stdout).toMatch(/audit trail intact: \d+ events/);
    // Someone edits an event in Redis: the chain shows it.
    const redis = new Redis(inject('redisUrl'));
    try {
      const logKey = `${PREFIX}adm:{a}:audit`;
      const third = (await redis.lindex(logKey, 2))!;
      await redis.lset(logKey, 2, third.replace('"admin_key"', '"dashboard_session"'));
      const bad = await run('npm', ['run', '--silent', 'audit:verify'], { cwd: ROOT, env }).then(
        () => ({ code: 0, stderr: '' }),
        (e: { code: number; stderr: string }) => e,
      );
      expect(bad.code).toBe(1);
      expect(bad.stderr).toMatch(/event 3: its content does not match its hash/);
      await redis.lset(logKey, 2, third);
    } finally {
      redis.disconnect();
    }
  });
});

describe('without Redis', () => {
  const mem = useGateway(() => ({ sim: s, tenants: TENANTS, redis: 'memory', env: { ADMIN_API_KEY: ADMIN, LOG_LEVEL: 'warn' } }));
  it('manages tenants and keys in the process, with the same answers', async () => {
    const made = await call(mem.url, 'POST', '/gateway/v1/admin/tenants', { key: ADMIN, body: { id: 'mem-team' } });
    expect(made.status).toBe(201);
    const k = await call(mem.url, 'POST', '/gateway/v1/admin/tenants/mem-team/keys', { key: ADMIN, body: {} });
    expect((await call(mem.url, 'GET', '/replicate/v1/account', { key: k.body.key })).body).toMatchObject({ username: 'mem-team' });
    expect((await call(mem.url, 'DELETE', `/gateway/v1/admin/tenants/mem-team/keys/${k.body.id}`, { key: ADMIN })).status).toBe(204);
    expectProblem(await call(mem.url, 'GET', '/replicate/v1/account', { key: k.body.key }), 401);
    expect((await call(mem.url, 'GET', '/gateway/v1/admin/audit', { key: ADMIN })).body.events.map((e: { action: string }) => e.action)).toEqual(['tenant.create', 'key.create', 'key.revoke']);
  });
});

describe('the dashboard session on the admin API', () => {
  it('works with the session cookie and its CSRF token, and refuses a change without the token', async () => {
    const login = await fetch(`${gw.url}/gateway/admin/login`, { method: 'POST', redirect: 'manual', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: `key=${ADMIN}` });
    const cookie = login.headers.get('set-cookie')!.split(';')[0]!;
    const { csrf } = (await call(gw.url, 'GET', '/gateway/admin/api/overview', { headers: { cookie } })).body;
    expect((await call(gw.url, 'GET', '/gateway/v1/admin/tenants', { headers: { cookie } })).status).toBe(200);
    expectProblem(await call(gw.url, 'POST', '/gateway/v1/admin/tenants', { headers: { cookie }, body: { id: 'by-session' } }), 403, /CSRF/);
    const made = await call(gw.url, 'POST', '/gateway/v1/admin/tenants', { headers: { cookie, 'x-csrf-token': csrf }, body: { id: 'by-session' } });
    expect(made.status, made.text).toBe(201);
    const events = (await admin('GET', '/audit?limit=1000')).body.events as Record<string, any>[];
    expect(events.find((e) => e.target.tenant === 'by-session')!.actor).toMatchObject({ type: 'dashboard_session', session: expect.stringMatching(/^[0-9a-f]{12}$/) });
    expectProblem(await call(gw.url, 'GET', '/gateway/v1/admin/tenants'), 401);
  });
});
