// Browser streams of a prediction (server-sent events), fanned out across replicas. A stream never reads the upstream:
// the lifecycle publishes every change on the prediction's channel (src/lifecycle/lifecycle.ts), and each replica
// with streams open for it reads the prediction once from the store and passes that to all of them. So a thousand
// browsers watching one prediction cost one store read per change per replica and no upstream read. While a
// prediction is streamed, the watcher looks at it every WATCH_MIN_MS instead of backing off (the read budget still
// holds). A slow reader never grows memory: a stream holds at most the latest state it has not sent yet.
import type { FastifyBaseLogger } from 'fastify';
import type { Config } from '../config.js';
import { PredictionBody } from '../predictions/prediction.js';
import type { PubSub } from '../store/pubsub.js';
import type { Store } from '../store/store.js';
import { predictionChannel } from './lifecycle.js';

/** A prediction as a stream sends it: its state and the version the store gave it (the event id). */
export interface StreamState {
  body: PredictionBody;
  version: number;
  /** The gateway follows it no more: it ended, or the gateway gave up on it (then `body` is its last state). */
  final: boolean;
}

export type StreamListener = (state: StreamState) => void;

/** How often a streamed prediction is read from the store even without a message (a lost message only delays). */
const RECHECK_MS = 5000;

interface Watched {
  listeners: Set<StreamListener>;
  unsubscribe?: () => Promise<void>;
  last?: StreamState;
  reading?: Promise<void>;
  again: boolean;
  timer: NodeJS.Timeout;
  checkedAt: number;
}

export class PredictionStreams {
  readonly #store: Store;
  readonly #pubsub: PubSub;
  readonly #config: Config;
  readonly #log: FastifyBaseLogger;
  readonly #watched = new Map<string, Watched>();

  constructor(opts: { store: Store; pubsub: PubSub; config: Config; log: FastifyBaseLogger }) {
    this.#store = opts.store;
    this.#pubsub = opts.pubsub;
    this.#config = opts.config;
    this.#log = opts.log;
  }

  /** The prediction as the store has it now; undefined when its record is gone. */
  async read(id: string): Promise<StreamState | undefined> {
    const [{ terminal }, { record, open, version }] = await Promise.all([this.#store.lookup(id), this.#store.current(id)]);
    const raw = record ?? terminal;
    if (!raw) return undefined;
    const body = new PredictionBody(raw);
    return { body, version, final: body.terminal || !open };
  }

  /** Calls `listener` with every newer state of the prediction from now on; the returned function stops it. */
  async subscribe(id: string, listener: StreamListener): Promise<() => void> {
    let w = this.#watched.get(id);
    if (!w) {
      const timer = setInterval(() => this.#tick(id), Math.min(RECHECK_MS, this.#config.WATCH_MIN_MS));
      timer.unref();
      w = { listeners: new Set(), again: false, timer, checkedAt: Date.now() };
      this.#watched.set(id, w);
      const watched = w;
      watched.unsubscribe = await this.#pubsub.subscribe(predictionChannel(id), () => this.#refresh(id, watched));
    }
    w.listeners.add(listener);
    this.#bringForward(id);
    const watched = w;
    return () => {
      watched.listeners.delete(listener);
      if (watched.listeners.size > 0 || this.#watched.get(id) !== watched) return;
      this.#watched.delete(id);
      clearInterval(watched.timer);
      void watched.unsubscribe?.();
    };
  }

  /** Every WATCH_MIN_MS: the watcher should look at it soon; every RECHECK_MS: read it even without a message. */
  #tick(id: string): void {
    const w = this.#watched.get(id);
    if (!w) return;
    this.#bringForward(id);
    const now = Date.now();
    if (now - w.checkedAt >= RECHECK_MS) {
      w.checkedAt = now;
      this.#refresh(id, w);
    }
  }

  #bringForward(id: string): void {
    this.#store.openSchedule(id, Date.now() + this.#config.WATCH_MIN_MS, 'earlier').catch(() => {
      // The store is away: the watcher keeps its own schedule.
    });
  }

  /** One store read at a time per prediction and process, shared by all its streams; a message during it reads again. */
  #refresh(id: string, w: Watched): void {
    if (w.reading) {
      w.again = true;
      return;
    }
    w.again = false;
    w.reading = this.read(id)
      .then((state) => {
        if (!state || (w.last && state.version <= w.last.version && !(state.final && !w.last.final))) return;
        w.last = state;
        for (const l of w.listeners) l(state);
      })
      .catch((err: unknown) => this.#log.debug({ err, prediction: id }, 'streams: could not read a prediction; the next change or recheck tries again'))
      .finally(() => {
        w.reading = undefined;
        if (w.again && this.#watched.get(id) === w) this.#refresh(id, w);
      });
  }

  close(): void {
    for (const [id, w] of this.#watched) {
      clearInterval(w.timer);
      void w.unsubscribe?.();
      this.#watched.delete(id);
    }
  }
}
