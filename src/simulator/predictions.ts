// The prediction model: ids, lazily time-driven state (computed when read, so thousands of predictions cost no
// timers), finishing, and the PredictionMap that tests read directly.
import { randomBytes } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import type { TimerSet } from './timers.js';

export type PredictionStatus = 'starting' | 'processing' | 'succeeded' | 'failed' | 'canceled' | 'aborted';

export interface Prediction {
  id: string;
  model: string;
  version: string;
  input: Record<string, unknown>;
  output: unknown;
  logs: string;
  error: string | null;
  status: PredictionStatus;
  created_at: string;
  started_at: string | null;
  completed_at: string | null;
  data_removed: boolean;
  metrics: Record<string, number>;
  urls: { get: string; cancel: string; web: string; stream: string };
  webhook?: string;
  webhook_events_filter?: string[];
}

/** What the simulator knows about a prediction beyond its JSON: the schedule its state is computed from. */
interface Meta {
  createdMs: number;
  durationMs: number;
  outcome: 'succeeded' | 'failed' | 'aborted';
  // frozen: no more time-driven transitions (terminal, canceled or forced by setStatus)
  frozen: boolean;
  completedMs: number;
}

const TERMINAL: ReadonlySet<string> = new Set(['succeeded', 'failed', 'canceled', 'aborted']);
const ID_ALPHABET = 'abcdefghijklmnopqrstuvwxyz234567';

export function isTerminalStatus(status: string): boolean {
  return TERMINAL.has(status);
}

// 26 base32 chars like Replicate ids; 256 is a multiple of 32 so `& 31` stays uniform.
export function newPredictionId(): string {
  const bytes = randomBytes(26);
  let id = '';
  for (let i = 0; i < 26; i++) id += ID_ALPHABET[bytes[i] & 31];
  return id;
}

function startProcessing(p: Prediction, atMs: number): void {
  p.status = 'processing';
  p.started_at = new Date(atMs).toISOString();
  p.logs = 'Using seed: 42\n';
}

/** What a succeeded prediction outputs: by default one image on the output CDN. */
export type OutputOf = (p: Prediction) => unknown;

function finish(p: Prediction, m: Meta, status: PredictionStatus, atMs: number, outputOf: OutputOf): void {
  m.frozen = true;
  m.completedMs = atMs;
  p.status = status;
  p.completed_at = new Date(atMs).toISOString();
  const startedMs = p.started_at === null ? undefined : Date.parse(p.started_at);
  if (status === 'succeeded') {
    if (startedMs === undefined) {
      p.started_at = new Date(m.createdMs).toISOString();
      p.logs = 'Using seed: 42\n';
    }
    p.output = outputOf(p);
    p.error = null;
    p.logs += 'Generated 1 image\n';
    p.metrics = {
      predict_time: (atMs - (startedMs ?? m.createdMs)) / 1000,
      total_time: (atMs - m.createdMs) / 1000,
    };
  } else if (status === 'failed') {
    if (startedMs === undefined) p.started_at = new Date(m.createdMs).toISOString();
    p.output = null;
    p.error = 'simulated failure';
    p.logs += 'Error: simulated failure\n';
    p.metrics = { predict_time: (atMs - (startedMs ?? m.createdMs)) / 1000, total_time: (atMs - m.createdMs) / 1000 };
  } else if (status === 'canceled') {
    p.output = null;
    p.error = null;
    p.metrics = startedMs === undefined
      ? { total_time: (atMs - m.createdMs) / 1000 }
      : { predict_time: (atMs - startedMs) / 1000, total_time: (atMs - m.createdMs) / 1000 };
  } else {
    // aborted: ended before it ever started
    p.started_at = null;
    p.output = null;
    p.error = null;
    p.metrics = {};
  }
}

/**
 * A Map whose reads refresh the lazily computed state, so a test reading `sim.predictions` sees what a GET would.
 * `raw` reads without refreshing (the stream route only needs to know the id exists).
 */
export class PredictionMap extends Map<string, Prediction> {
  constructor(private readonly refresh: (p: Prediction) => void) {
    super();
  }
  override get(key: string): Prediction | undefined {
    const p = super.get(key);
    if (p !== undefined) this.refresh(p);
    return p;
  }
  raw(key: string): Prediction | undefined {
    return super.get(key);
  }
  override *values(): MapIterator<Prediction> {
    for (const p of super.values()) {
      this.refresh(p);
      yield p;
    }
  }
  override *entries(): MapIterator<[string, Prediction]> {
    for (const [k, p] of super.entries()) {
      this.refresh(p);
      yield [k, p];
    }
  }
  override [Symbol.iterator](): MapIterator<[string, Prediction]> {
    return this.entries();
  }
  override forEach(cb: (value: Prediction, key: string, map: Map<string, Prediction>) => void, thisArg?: unknown): void {
    for (const [k, p] of this.entries()) cb.call(thisArg, p, k, this);
  }
}

export interface PredictionStoreOptions {
  /** A prediction without duration_ms takes two steps: starting for one, processing for the next. */
  stepMs: number;
  maxPredictions: number;
  retentionMs: number;
  timers: TimerSet;
  /** urls.stream for an id; a function because the simulator's own address is only known after listen(). */
  streamUrl: (id: string) => string;
  /** An output file's URL on the output CDN (or the simulator's stand-in for it). */
  outputUrl: (id: string, name: string) => string;
}

/**
 * Owns the predictions, their schedules and the `Prefer: wait` creates waiting on them. Schedules live in a
 * WeakMap beside the JSON objects so that what is sent is exactly the Replicate shape, and an evicted prediction
 * takes its schedule with it.
 */
export class PredictionStore {
  readonly map: PredictionMap;
  private readonly meta = new WeakMap<Prediction, Meta>();
  // id -> wake-up callbacks of `Prefer: wait` creates, poked on cancel/setStatus
  private readonly waiters = new Map<string, Set<() => void>>();

  constructor(private readonly opts: PredictionStoreOptions) {
    this.map = new PredictionMap(this.refresh);
  }

  /**
   * A succeeded prediction's output: one image, or the input's `output` as given with every "sim:<name>" string
   * turned into that file's URL on the output CDN (tests choose nested, several, missing or large outputs).
   */
  private readonly outputOf: OutputOf = (p) => {
    const wanted = p.input.output;
    if (wanted === undefined) return [this.opts.outputUrl(p.id, 'out-0.webp')];
    const visit = (v: unknown): unknown =>
      typeof v === 'string' && v.startsWith('sim:') ? this.opts.outputUrl(p.id, v.slice(4))
        : Array.isArray(v) ? v.map(visit)
        : v && typeof v === 'object' ? Object.fromEntries(Object.entries(v).map(([k, x]) => [k, visit(x)]))
        : v;
    return visit(wanted);
  };

  /** Brings a prediction's state up to now. An arrow so the PredictionMap can hold it without a bind per call. */
  readonly refresh = (p: Prediction): void => {
    const m = this.meta.get(p);
    if (m === undefined) return;
    const now = Date.now();
    if (!m.frozen) {
      const elapsed = now - m.createdMs;
      if (elapsed >= m.durationMs) {
        if (m.outcome !== 'aborted' && p.started_at === null) startProcessing(p, m.createdMs + Math.floor(m.durationMs / 2));
        finish(p, m, m.outcome, m.createdMs + m.durationMs, this.outputOf);
      } else if (m.outcome !== 'aborted' && p.status === 'starting' && elapsed >= m.durationMs / 2) {
        startProcessing(p, m.createdMs + Math.floor(m.durationMs / 2));
      }
    }
    if (m.frozen && !p.data_removed && isTerminalStatus(p.status) && now - m.completedMs >= this.opts.retentionMs) {
      p.output = null;
      p.data_removed = true;
    }
  };

  /** The prediction, refreshed, or undefined. */
  get(id: string): Prediction | undefined {
    return this.map.get(id);
  }

  has(id: string): boolean {
    return this.map.raw(id) !== undefined;
  }

  /** A new prediction in its starting state, not stored (the shape a create would answer). */
  draft(model: string, version: string, body: Record<string, unknown>, input: Record<string, unknown>, now = Date.now()): Prediction {
    const id = newPredictionId();
    const p: Prediction = {
      id,
      model,
      version,
      input,
      output: null,
      logs: '',
      error: null,
      status: 'starting',
      created_at: new Date(now).toISOString(),
      started_at: null,
      completed_at: null,
      data_removed: false,
      metrics: {},
      urls: {
        get: `https://api.replicate.com/v1/predictions/${id}`,
        cancel: `https://api.replicate.com/v1/predictions/${id}/cancel`,
        web: `https://replicate.com/p/${id}`,
        stream: this.opts.streamUrl(id),
      },
    };
    if (typeof body.webhook === 'string') p.webhook = body.webhook;
    if (Array.isArray(body.webhook_events_filter)) p.webhook_events_filter = body.webhook_events_filter as string[];
    return p;
  }

  /** Creates and stores a prediction whose schedule follows its input (duration_ms, fail, abort, a 'fail' prompt). */
  create(model: string, version: string, body: Record<string, unknown>, input: Record<string, unknown>): Prediction {
    const now = Date.now();
    const p = this.draft(model, version, body, input, now);
    const d = input.duration_ms;
    const durationMs = typeof d === 'number' && Number.isFinite(d) && d >= 0 ? d : 2 * this.opts.stepMs;
    const prompt = input.prompt;
    const outcome = input.abort === true
      ? 'aborted'
      : input.fail === true || (typeof prompt === 'string' && prompt.includes('fail'))
        ? 'failed'
        : 'succeeded';
    this.meta.set(p, { createdMs: now, durationMs, outcome, frozen: false, completedMs: 0 });
    const map = this.map;
    if (map.size >= this.opts.maxPredictions) {
      const oldest = map.keys().next();
      if (!oldest.done) map.delete(oldest.value);
    }
    map.set(p.id, p);
    this.refresh(p); // duration_ms: 0 is terminal right away
    return p;
  }

  /** Cancels a prediction that is not terminal yet; a terminal one is left alone, as Replicate does. */
  cancel(p: Prediction): void {
    const m = this.meta.get(p);
    if (m !== undefined && !isTerminalStatus(p.status)) {
      finish(p, m, 'canceled', Date.now(), this.outputOf);
      this.wake(p.id);
    }
  }

  /** Forces a status (for tests), freezing the schedule; throws on an unknown id. */
  setStatus(id: string, status: PredictionStatus): void {
    const p = this.map.get(id);
    if (p === undefined) throw new Error(`simulator: unknown prediction ${id}`);
    let m = this.meta.get(p);
    if (m === undefined) {
      // a prediction a test put into the map itself
      const created = Date.parse(p.created_at);
      m = { createdMs: Number.isNaN(created) ? Date.now() : created, durationMs: 0, outcome: 'succeeded', frozen: true, completedMs: 0 };
      this.meta.set(p, m);
    }
    const now = Date.now();
    m.frozen = true;
    p.data_removed = false;
    if (status === 'starting') {
      Object.assign(p, { status, started_at: null, completed_at: null, output: null, error: null, logs: '', metrics: {} });
    } else if (status === 'processing') {
      Object.assign(p, { completed_at: null, output: null, error: null, metrics: {} });
      startProcessing(p, now);
    } else {
      if (status !== 'aborted' && p.started_at === null) startProcessing(p, now);
      finish(p, m, status, now, this.outputOf);
    }
    this.wake(id);
  }

  /**
   * Holds a `Prefer: wait` create until terminal, the deadline, a cancel/setStatus poke, or the response closing
   * (client gone, or close() force-closing connections). `isClosed` ends the wait on the next wake-up.
   */
  async waitForTerminal(p: Prediction, waitSeconds: number, res: ServerResponse, isClosed: () => boolean): Promise<void> {
    const deadline = Date.now() + waitSeconds * 1000;
    let gone = false;
    const onClose = () => {
      gone = true;
    };
    res.once('close', onClose);
    try {
      for (;;) {
        this.refresh(p);
        const now = Date.now();
        if (isClosed() || gone || isTerminalStatus(p.status) || now >= deadline) return;
        const m = this.meta.get(p);
        const wakeAt = m === undefined || m.frozen ? deadline : Math.min(deadline, m.createdMs + m.durationMs);
        await this.sleepUntilPoked(p.id, wakeAt - now, res);
      }
    } finally {
      res.off('close', onClose);
    }
  }

  private sleepUntilPoked(id: string, ms: number, res: ServerResponse): Promise<void> {
    const timers = this.opts.timers;
    return new Promise<void>((resolve) => {
      let set = this.waiters.get(id);
      if (set === undefined) {
        set = new Set();
        this.waiters.set(id, set);
      }
      const waiting = set;
      const done = () => {
        timers.cancel(t);
        waiting.delete(done);
        // an empty set left behind would keep one entry per waited-on id for the simulator's lifetime
        if (waiting.size === 0 && this.waiters.get(id) === waiting) this.waiters.delete(id);
        res.off('close', done);
        resolve();
      };
      const t = timers.after(ms, done);
      waiting.add(done);
      res.once('close', done);
    });
  }

  private wake(id: string): void {
    const set = this.waiters.get(id);
    if (set === undefined) return;
    this.waiters.delete(id);
    for (const fn of set) fn();
  }
}
