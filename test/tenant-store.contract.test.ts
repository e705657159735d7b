// One contract, every store of API-managed tenants and keys (src/store/tenant-store.ts): in memory, and Redis as one
// server, behind Sentinel and as a Cluster (where every admin key shares one slot, so each change is one script).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chainEvent, verifyAudit } from '../src/admin/audit.js';
import { type AdminCommit, MemoryTenantStore, RedisTenantStore, type TenantStore } from '../src/store/tenant-store.js';
import { storeFactories } from './helpers/stack.js';

const { factories, close } = storeFactories<TenantStore>('tenant-contract', () => new MemoryTenantStore(), (client) => new RedisTenantStore(client));
afterAll(close);

const actor = { type: 'admin_key' as const };
const input = (tenant: string, action = 'tenant.create') => ({ actor, action, target: { tenant }, before: null, after: { x: 1 }, ip: '127.0.0.1', user_agent: null });

/** A commit chained to the store's current head. */
async function commit(store: TenantStore, c: Omit<AdminCommit, 'audit'>, tenant = 't', now = Date.now(), cutoffMs = 0) {
  const head = await store.auditHead();
  const { json, newHead } = chainEvent(head, input(tenant), now);
  return store.commit({ ...c, audit: { head, newHead, event: json, cutoffMs } });
}

describe.each(factories)('%s tenant store', (_kind, make) => {
  let store: TenantStore;
  beforeAll(async () => {
    store = await make();
  });

  it('writes a change, its event and a new version at once, and refuses one whose expectations no longer hold', async () => {
    const v0 = await store.version();
    expect(await commit(store, { expect: [{ kind: 't', id: 'a', rev: null }], put: [{ kind: 't', id: 'a', rev: 1, json: '{"id":"a"}' }], del: [] })).toBe('ok');
    expect(await store.version()).toBe(v0 + 1);
    // Created twice: the second expected it absent.
    expect(await commit(store, { expect: [{ kind: 't', id: 'a', rev: null }], put: [{ kind: 't', id: 'a', rev: 1, json: '{"id":"a","again":true}' }], del: [] })).toBe('conflict');
    expect(await commit(store, { expect: [{ kind: 't', id: 'a', rev: 2 }], put: [], del: [{ kind: 't', id: 'a' }] })).toBe('conflict');
    expect(await commit(store, { expect: [{ kind: 't', id: 'a', rev: 1 }], put: [{ kind: 'k', id: 'k1', rev: 1, json: '{"id":"k1"}' }], del: [] })).toBe('ok');
    const snap = await store.load();
    expect(snap).toMatchObject({ version: v0 + 2, tenants: ['{"id":"a"}'], keys: ['{"id":"k1"}'] });
    expect(await commit(store, { expect: [{ kind: 't', id: 'a', rev: 1 }, { kind: 'k', id: 'k1', rev: 1 }], put: [], del: [{ kind: 't', id: 'a' }, { kind: 'k', id: 'k1' }] })).toBe('ok');
    expect(await store.load()).toMatchObject({ tenants: [], keys: [] });
    expect((await verifyAudit(store)).ok).toBe(true);
  });

  it('lets exactly one of racing changes chained to the same head land', async () => {
    const head = await store.auditHead();
    const results = await Promise.all(
      Array.from({ length: 10 }, (_, i) => {
        const { json, newHead } = chainEvent(head, input(`race-${i}`));
        return store.commit({ expect: [], put: [{ kind: 't', id: `race-${i}`, rev: 1, json: '{}' }], del: [], audit: { head, newHead, event: json, cutoffMs: 0 } });
      }),
    );
    expect(results.filter((r) => r === 'ok')).toHaveLength(1);
    expect(results.filter((r) => r === 'audit')).toHaveLength(9);
  });

  it('keeps a stored answer once, pages the log by seq, and drops events past the retention cutoff', async () => {
    const idem = { key: 'rot-1', value: 'sealed', ttlMs: 60_000 };
    expect(await commit(store, { expect: [], put: [], del: [], idem })).toBe('ok');
    expect(await commit(store, { expect: [], put: [], del: [], idem })).toBe('idem');
    expect(await store.idem('rot-1')).toBe('sealed');
    const last = Number((await store.auditHead()).split(' ')[0]);
    const page = (await store.auditRange(last - 3, 2)).map((j) => JSON.parse(j).seq);
    expect(page).toEqual([last - 2, last - 1]);
    // Everything before now + 1 s is past the cutoff: the old events go, the chain still verifies from the first kept.
    const later = Date.now() + 1000;
    expect(await commit(store, { expect: [], put: [], del: [] }, 't', later + 1, later)).toBe('ok');
    const kept = await store.auditRange(0, 1000);
    expect(kept).toHaveLength(1);
    expect(JSON.parse(kept[0]!).seq).toBe(last + 1);
    expect(await verifyAudit(store)).toMatchObject({ ok: true, events: 1, first: last + 1 });
  });

  it('adds per-key usage per day', async () => {
    await store.addKeyUsage('2030-01-01', { 'k1:requests': 2, 'k1:creates': 1 }, 60_000);
    await store.addKeyUsage('2030-01-01', { 'k1:requests': 3 }, 60_000);
    expect(await store.keyUsage(['2030-01-01', '2030-01-02'])).toEqual([{ 'k1:requests': 5, 'k1:creates': 1 }, {}]);
  });
});
