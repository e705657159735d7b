// Messages to every replica (this one included): cache invalidation, a prediction's changes for browser streams.
// Redis pub/sub on one server, Sentinel or a Cluster (ioredis broadcasts PUBLISH across a Cluster), or in-process.
// Delivery is at most once and only to live subscribers: what must not be lost lives in the store, and a message
// only says "look again".
import type { Redis } from 'ioredis';
import { rethrowUnavailable } from '../errors.js';

export type Handler = (message: string) => void;

export interface PubSub {
  publish(channel: string, message: string): Promise<void>;
  /** Calls `handler` with every message on `channel` from now on; the returned function unsubscribes. */
  subscribe(channel: string, handler: Handler): Promise<() => Promise<void>>;
  close(): Promise<void>;
}

/** Handlers per channel, shared by both kinds: a channel is subscribed once however many listen to it. */
class Fanout {
  readonly #handlers = new Map<string, Set<Handler>>();

  /** Adds a handler; true if it is the channel's first. */
  add(channel: string, handler: Handler): boolean {
    let set = this.#handlers.get(channel);
    const first = !set;
    if (!set) this.#handlers.set(channel, (set = new Set()));
    set.add(handler);
    return first;
  }

  /** Removes a handler; true if it was the channel's last. */
  remove(channel: string, handler: Handler): boolean {
    const set = this.#handlers.get(channel);
    if (!set?.delete(handler)) return false;
    if (set.size > 0) return false;
    this.#handlers.delete(channel);
    return true;
  }

  deliver(channel: string, message: string): void {
    for (const h of this.#handlers.get(channel) ?? []) {
      try {
        h(message);
      } catch {
        // One listener's bug must not stop the others from hearing the message.
      }
    }
  }

  clear(): void {
    this.#handlers.clear();
  }
}

export class MemoryPubSub implements PubSub {
  readonly #fanout = new Fanout();

  async publish(channel: string, message: string) {
    // Asynchronous like Redis: a publisher never runs its listeners inside its own call.
    queueMicrotask(() => this.#fanout.deliver(channel, message));
  }

  async subscribe(channel: string, handler: Handler) {
    this.#fanout.add(channel, handler);
    return async () => void this.#fanout.remove(channel, handler);
  }

  async close() {
    this.#fanout.clear();
  }
}

export class RedisPubSub implements PubSub {
  readonly #client: Redis;
  readonly #prefix: string;
  readonly #fanout = new Fanout();
  /** A connection in subscriber mode can do nothing else: its own, made at the first subscribe. */
  #subscriber: Redis | undefined;

  /** Publishes through the state client; channel names carry the key prefix, so two gateways on one Redis stay apart. */
  constructor(client: Redis, prefix: string) {
    this.#client = client;
    this.#prefix = prefix;
  }

  async publish(channel: string, message: string) {
    await this.#client.publish(this.#prefix + channel, message).catch(rethrowUnavailable);
  }

  #connection(): Redis {
    if (this.#subscriber) return this.#subscriber;
    // Subscriptions are replayed on reconnect (ioredis autoResubscribe), so an outage only loses its own messages.
    // It may queue its SUBSCRIBE until connected (the state client fails fast instead).
    const cluster = (this.#client as { isCluster?: boolean }).isCluster === true;
    const sub = cluster
      ? ((this.#client as unknown as { duplicate(nodes?: unknown, o?: object): Redis }).duplicate(undefined, { enableOfflineQueue: true }))
      : this.#client.duplicate({ enableOfflineQueue: true });
    sub.on('message', (ch: string, message: string) => this.#fanout.deliver(ch.slice(this.#prefix.length), message));
    sub.on('error', () => {
      // The state client already reports Redis outages.
    });
    this.#subscriber = sub;
    return sub;
  }

  async subscribe(channel: string, handler: Handler) {
    if (this.#fanout.add(channel, handler)) {
      try {
        await this.#connection().subscribe(this.#prefix + channel);
      } catch (err) {
        // Not subscribed after all: the next call must try again, not find a handler already there.
        this.#fanout.remove(channel, handler);
        rethrowUnavailable(err);
      }
    }
    return async () => {
      if (this.#fanout.remove(channel, handler)) await this.#subscriber?.unsubscribe(this.#prefix + channel).catch(() => {});
    };
  }

  async close() {
    this.#fanout.clear();
    const sub = this.#subscriber;
    this.#subscriber = undefined;
    await sub?.quit().catch(() => sub.disconnect());
  }
}
