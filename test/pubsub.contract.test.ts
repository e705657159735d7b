// One contract, every pub/sub: in memory, and Redis as one server, behind Sentinel and as a Cluster. Two instances on
// one backend (each on its own Redis client) stand for two replicas.
import { afterAll, describe, expect, it } from 'vitest';
import { MemoryPubSub, type PubSub, RedisPubSub } from '../src/store/pubsub.js';
import { storeFactories, waitFor } from './helpers/stack.js';

const shared = new MemoryPubSub();
const { factories, close } = storeFactories<PubSub>('pubsub-contract', () => shared, (client) => new RedisPubSub(client, 'pubsub-contract:'));
const opened: PubSub[] = [];
afterAll(async () => {
  await Promise.all(opened.map((p) => p.close()));
  await close();
});

describe.each(factories)('%s pub/sub', (_kind, make) => {
  it('delivers to every subscriber, of this instance and of another, and stops after unsubscribe', async () => {
    const a = await make();
    const b = await make();
    opened.push(a, b);
    const gotA: string[] = [];
    const gotB: string[] = [];
    const offA = await a.subscribe('chan', (m) => gotA.push(m));
    await b.subscribe('chan', (m) => gotB.push(m));
    await b.subscribe('other', (m) => gotB.push(`other:${m}`));
    await a.publish('chan', 'one');
    await waitFor(() => gotA.length === 1 && gotB.length === 1, 5000, 'first message');
    await offA();
    await b.publish('chan', 'two');
    await waitFor(() => gotB.length === 2, 5000, 'second message');
    expect(gotA).toEqual(['one']);
    expect(gotB).toEqual(['one', 'two']);
  });
});
