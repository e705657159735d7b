// Past one Redis (issue 17), on real servers: two gateway processes on a 3-master Cluster (limits exact, one
// upstream create per Idempotency-Key, owners and the cache seen from either), and a Sentinel failover under
// traffic (503 while no primary is known, then on against the promoted replica, nothing lost, no create twice).
import { randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, describe, expect, inject, it } from 'vitest';
import { type CallResult, type GatewayProcess, MODEL_PATH, call, startGatewayProcess, stopAllGatewayProcesses, upstreamCalls, useSimulator, writeTenants } from './helpers/stack.js';
import { RedisSentinelGroup } from './support/redis-topologies.js';

const s = useSimulator(100);
afterAll(async () => {
  await stopAllGatewayProcesses();
});

const CREATES = /\/predictions$/;
const key = (id: string) => `${id}-key-0123456789abcdef`;
const count = (rs: CallResult[], status: number) => rs.filter((r) => r.status === status).length;
const create = (url: string, k: string, prompt: string, idem?: string) =>
  call(url, 'POST', MODEL_PATH, { key: k, body: { input: { prompt } }, headers: idem ? { 'idempotency-key': idem } : {} });
const get = (url: string, k: string, id: string) => call(url, 'GET', `/replicate/v1/predictions/${id}`, { key: k });
const upstreamCreatesOf = (prompt: string) => upstreamCalls(s.sim, CREATES).filter((r) => (r.body as { input?: { prompt?: string } })?.input?.prompt === prompt).length;

async function untilTerminal(url: string, k: string, id: string): Promise<CallResult> {
  for (let i = 0; i < 200; i++) {
    const r = await get(url, k, id);
    if (r.status === 200 && r.body.status === 'succeeded') return r;
    await sleep(50);
  }
  throw new Error(`prediction ${id} did not finish`);
}

/** Wraps a test body so that a failure shows the processes' own output. */
async function withOutput(procs: () => (GatewayProcess | undefined)[], body: () => Promise<void>): Promise<void> {
  try {
    await body();
  } catch (err) {
    const out = procs().map((p, i) => `--- gateway ${i} ---\n${p?.output().slice(-4000) ?? ''}`).join('\n');
    throw new Error(`${(err as Error).message}\n${out}`, { cause: err });
  }
}

describe('Redis Cluster (3 masters): two gateway processes', () => {
  it('count a limit exactly (60 requests, max 20 → 20 pass), send one create for 10 duplicates, and share owners and the cache', async () => {
    const tenantsFile = writeTenants([
      { id: 'cl-limit', keys: [key('cl-limit')], rateLimit: { max: 20, timeWindow: '1 minute' } },
      { id: 'cl-idem', keys: [key('cl-idem')] },
      { id: 'cl-other', keys: [key('cl-other')] },
    ]);
    // Webhooks too: the watch queue is BullMQ on the Cluster (its prefix a hash tag).
    const env = { REDIS_CLUSTER_NODES: inject('redisCluster'), WEBHOOK_ALLOW_HTTP_HOSTS: '127.0.0.1', WEBHOOK_ALLOW_PRIVATE_HOSTS: '127.0.0.1', WEBHOOK_POLL_MIN_MS: '50', WEBHOOK_POLL_MAX_MS: '200' };
    const hooks: { id: string; status: string }[] = [];
    const receiver = createServer((req, res) => {
      let body = '';
      req.setEncoding('utf8').on('data', (d: string) => (body += d));
      req.on('end', () => {
        hooks.push(JSON.parse(body));
        res.writeHead(200).end();
      });
    });
    await new Promise<void>((r) => receiver.listen(0, '127.0.0.1', r));
    const hookUrl = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/hook`;
    const prefix = `cluster:${randomUUID()}:`;
    let a: GatewayProcess | undefined;
    let b: GatewayProcess | undefined;
    await withOutput(
      () => [a, b],
      async () => {
        [a, b] = await Promise.all([startGatewayProcess({ sim: s, tenantsFile, prefix, env, redisUrl: '' }), startGatewayProcess({ sim: s, tenantsFile, prefix, env, redisUrl: '' })]);
        const urls = [a.url, b.url];
        // Limits: one window across both processes, whichever master holds it.
        const limited = await Promise.all(Array.from({ length: 60 }, (_, i) => call(urls[i % 2]!, 'GET', '/replicate/v1/account', { key: key('cl-limit') })));
        expect(count(limited, 200)).toBe(20);
        expect(count(limited, 429)).toBe(40);
        // Idempotency: 10 duplicates over both processes while the upstream is slow → one upstream create.
        s.sim.clearRequests();
        s.sim.injectFault({ kind: 'delay', delayMs: 300 }, { match: (m, p) => m === 'POST' && CREATES.test(p) });
        const idem = randomUUID();
        const dup = await Promise.all(Array.from({ length: 10 }, (_, i) => create(urls[i % 2]!, key('cl-idem'), 'cluster idem', idem)));
        expect(dup.map((r) => r.status)).toEqual(Array(10).fill(201));
        expect(new Set(dup.map((r) => r.body.id)).size).toBe(1);
        expect(upstreamCreatesOf('cluster idem')).toBe(1);
        // The owner (one slot), the tenant's list and usage (another) and the cache, from either process.
        const id = dup[0]!.body.id as string;
        await untilTerminal(a.url, key('cl-idem'), id);
        const hit = await get(b.url, key('cl-idem'), id);
        expect(hit.status).toBe(200);
        expect(hit.headers.get('x-cache')).toBe('HIT');
        expect((await get(b.url, key('cl-other'), id)).status).toBe(404);
        const list = await call(b.url, 'GET', '/replicate/v1/predictions', { key: key('cl-idem') });
        expect(list.body.results.map((p: { id: string }) => p.id)).toEqual([id]);
        const usage = await call(a.url, 'GET', '/gateway/v1/usage', { key: key('cl-idem') });
        expect(Object.values(usage.body.days as Record<string, { creates: number; succeeded: number }>)).toEqual([expect.objectContaining({ creates: 1, succeeded: 1 })]);
        // A webhook, watched through BullMQ on the Cluster by whichever process takes the job, delivered once.
        const hooked = await call(a.url, 'POST', MODEL_PATH, { key: key('cl-other'), body: { input: { prompt: 'hooked' }, webhook: hookUrl, webhook_events_filter: ['completed'] } });
        expect(hooked.status).toBe(201);
        for (let i = 0; i < 200 && !hooks.some((h) => h.id === hooked.body.id); i++) await sleep(50);
        expect(hooks.filter((h) => h.id === hooked.body.id).map((h) => h.status)).toEqual(['succeeded']);
      },
    ).finally(() => Promise.all([a?.stop(), b?.stop(), new Promise((r) => receiver.close(r))]));
  });
});

describe('Redis Sentinel: a failover under traffic', () => {
  it('answers 503 while no primary is known, then carries on against the promoted replica; nothing written before is lost and no create is sent twice', async () => {
    const group = await RedisSentinelGroup.start();
    const tenantsFile = writeTenants([{ id: 'fo', keys: [key('fo')], rateLimit: { max: 1_000_000, timeWindow: '1 minute' } }]);
    const env = { REDIS_SENTINELS: group.sentinels, REDIS_SENTINEL_NAME: group.name, REDIS_WAIT_REPLICAS: '1' };
    const prefix = `sentinel:${randomUUID()}:`;
    const k = key('fo');
    let gw: GatewayProcess | undefined;
    let fresh: GatewayProcess | undefined;
    try {
      await withOutput(
        () => [gw, fresh],
        async () => {
          gw = await startGatewayProcess({ sim: s, tenantsFile, prefix, env, redisUrl: '' });
          // Before: predictions created with an Idempotency-Key and polled until cached.
          const before: { idem: string; prompt: string; id: string }[] = [];
          for (let i = 0; i < 8; i++) {
            const idem = randomUUID();
            const prompt = `before ${i} ${idem}`;
            const r = await create(gw.url, k, prompt, idem);
            expect(r.status).toBe(201);
            before.push({ idem, prompt, id: r.body.id });
          }
          for (const p of before) await untilTerminal(gw.url, k, p.id);

          // Traffic: 3 clients, each a create (retried with its key on 503, as the official client does) and a GET.
          const tally = { served: 0, unavailable: 0, other: [] as string[] };
          const during: { idem: string; prompt: string; id?: string }[] = [];
          let stop = false;
          let n = 0;
          const note = (r: CallResult) => {
            if (r.status < 300) tally.served++;
            else if (r.status === 503) tally.unavailable++;
            else tally.other.push(`${r.status} ${r.text.slice(0, 200)}`);
          };
          const client = async () => {
            while (!stop) {
              const p = { idem: randomUUID(), prompt: `during ${n++}`, id: undefined as string | undefined };
              during.push(p);
              for (let attempt = 0; attempt < 200 && !p.id; attempt++) {
                const r = await create(gw!.url, k, p.prompt, p.idem).catch(() => undefined);
                if (!r) break;
                note(r);
                if (r.status === 201) p.id = r.body.id;
                else if (r.status === 503) await sleep(100);
                else break;
              }
              const known = before[n % before.length]!;
              const g = await get(gw!.url, k, known.id).catch(() => undefined);
              if (g) note(g);
              // Steady, not flat out: the other test files share the two cores.
              await sleep(50);
            }
          };
          const clients = Array.from({ length: 3 }, client);
          await sleep(1000);
          await group.killPrimary();
          const killedAt = Date.now();
          // The background clients may all be inside creates that keep retrying their store write through the
          // outage (by design: the upstream job exists); a new request meanwhile must be refused with 503.
          for (let i = 0; i < 100; i++) {
            const probe = { idem: randomUUID(), prompt: `probe ${i} while no primary`, id: undefined as string | undefined };
            during.push(probe);
            const r = await create(gw.url, k, probe.prompt, probe.idem).catch(() => undefined);
            if (!r) break;
            note(r);
            if (r.status === 201) probe.id = r.body.id;
            else break;
            await sleep(50);
          }
          await group.untilPromoted();
          const promotedAfterMs = Date.now() - killedAt;
          // Until the gateway serves again, and then some more.
          const until = Date.now() + 20_000;
          let readyAgain = false;
          while (Date.now() < until && !readyAgain) {
            readyAgain = (await call(gw.url, 'GET', '/readyz').catch(() => undefined))?.status === 200;
            if (!readyAgain) await sleep(100);
          }
          expect(readyAgain).toBe(true);
          const readyAfterMs = Date.now() - killedAt;
          const servedAtRecovery = tally.served;
          await sleep(2000);
          stop = true;
          await Promise.all(clients);
          console.log(`sentinel failover: promoted after ${promotedAfterMs} ms, gateway ready after ${readyAfterMs} ms; ${tally.served} requests served, ${tally.unavailable} answered 503, ${tally.other.length} other; ${during.length} creates during the run, ${during.filter((p) => p.id).length} answered 201`);
          // The promoted replica had no script cache: each script's first EVALSHA met NOSCRIPT and ioredis sent EVAL.
          const stats = await group.replicaInfo('commandstats');
          expect(stats).toMatch(/cmdstat_eval:calls=[1-9]/);
          expect(stats).toMatch(/cmdstat_evalsha:calls=[1-9]/);
          expect(tally.other).toEqual([]);
          expect(tally.unavailable).toBeGreaterThan(0);
          expect(tally.served).toBeGreaterThan(servedAtRecovery);

          // Nothing lost: a fresh process (no memory of its own) finds every owner, cached body and idempotency record.
          fresh = await startGatewayProcess({ sim: s, tenantsFile, prefix, env, redisUrl: '' });
          for (const p of before) {
            const r = await get(fresh.url, k, p.id);
            expect(r.status).toBe(200);
            expect(r.headers.get('x-cache')).toBe('HIT');
          }
          const answered = during.filter((p) => p.id);
          expect(answered.length).toBeGreaterThan(0);
          for (const p of answered) expect((await get(fresh.url, k, p.id!)).status).toBe(200);
          for (const p of [...before, ...answered]) {
            const replay = await create(fresh.url, k, p.prompt, p.idem);
            expect(replay.status).toBe(201);
            expect(replay.body.id).toBe(p.id);
            expect(replay.headers.get('idempotent-replayed')).toBe('true');
          }
          // No create twice: each prompt reached the upstream once at most (once for every one that was answered).
          for (const p of [...before, ...during]) expect(upstreamCreatesOf(p.prompt)).toBeLessThanOrEqual(1);
          for (const p of [...before, ...answered]) expect(upstreamCreatesOf(p.prompt)).toBe(1);
        },
      );
    } finally {
      await Promise.all([gw?.stop(), fresh?.stop()]);
      await group.destroy();
    }
  }, 90_000);
});
