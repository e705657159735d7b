// What the dashboard shows that no store figure holds: per tenant and day the 429s and 5xx, creates per hour, the
// upstream latency and the cache over the last minutes, the last failures and the breakers. Each process counts its
// own answers in memory (no store trip per request) and publishes a report to the shared kv every few seconds; the
// overview merges every replica's report, so the page shows all replicas' traffic whichever one serves it.
import { randomUUID } from 'node:crypto';
import type { KvStore } from '../store/kv-store.js';
import { today } from '../usage/day.js';
import { quantile } from '../lib/quantile.js';

export interface Counts {
  rateLimited: number;
  errors: number;
}

export interface Failure {
  at: string;
  requestId: string;
  tenant: string;
  method: string;
  route: string;
  status: number;
  code?: string;
  detail?: string;
  replica?: string;
}

/** Ten seconds of traffic: upstream time samples (a bounded reservoir), terminal-cache hits and misses. */
interface Bucket {
  t: number;
  calls: number;
  samples: number[];
  hits: number;
  misses: number;
}

export interface Report {
  replica: string;
  at: number;
  breaker: { upstream: boolean; tenants: string[] };
  /** day → tenant → counts, for this month and the last 31 days. */
  days: Record<string, Record<string, Counts>>;
  /** hour start (ms) → tenant → creates, for the last 25 hours. */
  hours: Record<string, Record<string, number>>;
  buckets: Bucket[];
  failures: Failure[];
}

export interface Answered {
  tenant: string;
  route: string;
  method: string;
  status: number;
  create: boolean;
  requestId: string;
  upstreamMs?: number;
  cache?: 'HIT' | 'MISS' | 'COALESCED';
  code?: string;
  detail?: string;
}

export const BUCKET_MS = 10_000;
const BUCKETS = 90; // 15 minutes
const SAMPLES = 64;
const FAILURES = 50;
const HOUR_MS = 3_600_000;
const DAY_MS = 86_400_000;
/** A replica whose report is older than this is shown as gone (its counts still add up). */
export const LIVE_MS = 30_000;
/** Reports and the replica list outlive a month, so this month's figures survive restarts. */
const REPORT_TTL_MS = 40 * DAY_MS;
const REPLICAS_KEY = 'dash:replicas';
const MAX_REPLICAS = 64;
const reportKey = (id: string) => `dash:replica:${id}`;

export const zero = (): Counts => ({ rateLimited: 0, errors: 0 });

export class OpsStats {
  readonly replica = randomUUID();
  #days: Report['days'] = {};
  #hours: Report['hours'] = {};
  #buckets: Bucket[] = [];
  #failures: Failure[] = [];
  #dirty = true;
  #registered = false;

  constructor(
    private readonly kv: KvStore,
    private readonly breaker: () => Report['breaker'],
  ) {}

  record(a: Answered, now = Date.now()): void {
    this.#dirty = true;
    if (a.tenant) {
      const day = (this.#days[today(now)] ??= {});
      const c = (day[a.tenant] ??= zero());
      if (a.status === 429) c.rateLimited++;
      if (a.status >= 500) c.errors++;
      if (a.create && a.status === 201) {
        const hour = (this.#hours[String(now - (now % HOUR_MS))] ??= {});
        hour[a.tenant] = (hour[a.tenant] ?? 0) + 1;
      }
    }
    if (a.upstreamMs !== undefined || a.cache) {
      const b = this.#bucket(now);
      if (a.upstreamMs !== undefined) {
        // Reservoir sampling: every call has the same chance of being kept, however busy the ten seconds.
        const i = b.calls++;
        if (i < SAMPLES) b.samples.push(a.upstreamMs);
        else {
          const j = Math.floor(Math.random() * (i + 1));
          if (j < SAMPLES) b.samples[j] = a.upstreamMs;
        }
      }
      if (a.cache === 'HIT') b.hits++;
      else if (a.cache) b.misses++;
    }
    if (a.status >= 500) {
      const f: Failure = { at: new Date(now).toISOString(), requestId: a.requestId, tenant: a.tenant, method: a.method, route: a.route, status: a.status };
      if (a.code) f.code = a.code;
      if (a.detail) f.detail = a.detail.slice(0, 300);
      this.#failures.unshift(f);
      if (this.#failures.length > FAILURES) this.#failures.length = FAILURES;
    }
  }

  #bucket(now: number): Bucket {
    const t = now - (now % BUCKET_MS);
    let b = this.#buckets.at(-1);
    if (!b || b.t !== t) {
      b = { t, calls: 0, samples: [], hits: 0, misses: 0 };
      this.#buckets.push(b);
      if (this.#buckets.length > BUCKETS) this.#buckets.shift();
    }
    return b;
  }

  /** This process's report now (what it publishes; the overview uses it directly for its own replica). */
  report(now = Date.now()): Report {
    const month = today(now).slice(0, 7);
    const oldest = today(now - 31 * DAY_MS);
    for (const day of Object.keys(this.#days)) if (!day.startsWith(month) && day < oldest) delete this.#days[day];
    for (const h of Object.keys(this.#hours)) if (Number(h) < now - 25 * HOUR_MS) delete this.#hours[h];
    while (this.#buckets.length && this.#buckets[0]!.t < now - BUCKETS * BUCKET_MS) this.#buckets.shift();
    return { replica: this.replica, at: now, breaker: this.breaker(), days: this.#days, hours: this.#hours, buckets: this.#buckets, failures: this.#failures };
  }

  /** Writes the report to the shared kv when something changed (and at least every LIVE_MS / 3, to stay live). */
  async publish(now = Date.now(), force = false): Promise<void> {
    if (!this.#registered) {
      await this.kv.pushCapped(REPLICAS_KEY, this.replica, MAX_REPLICAS, REPORT_TTL_MS);
      this.#registered = true;
    }
    if (!this.#dirty && !force) return;
    this.#dirty = false;
    await this.kv.set(reportKey(this.replica), JSON.stringify(this.report(now)), REPORT_TTL_MS);
  }

  /** Every replica's last report: this one's live, the others' as last published. */
  async reports(now = Date.now()): Promise<Report[]> {
    const ids = [...new Set(await this.kv.list(REPLICAS_KEY))].filter((id) => id !== this.replica);
    const others = await Promise.all(ids.map((id) => this.kv.get(reportKey(id))));
    const out = [this.report(now)];
    for (const text of others) {
      if (!text) continue;
      try {
        out.push(JSON.parse(text) as Report);
      } catch {
        // A report cut short by a crash is skipped, not fatal.
      }
    }
    return out;
  }
}

const round = (n: number | null) => (n === null ? null : Math.round(n * 10) / 10);

/** The replicas' reports summed: counts per tenant, the time series, the newest failures. */
export function mergeReports(reports: Report[], now = Date.now()) {
  const day = today(now);
  const month = day.slice(0, 7);
  const counts: Record<string, { today: Counts; month: Counts }> = {};
  const add = (into: Counts, c: Counts) => {
    into.rateLimited += c.rateLimited;
    into.errors += c.errors;
  };
  const hours = new Map<number, Record<string, number>>();
  const buckets = new Map<number, { samples: number[]; calls: number; hits: number; misses: number }>();
  const failures: Failure[] = [];
  for (const r of reports) {
    for (const [d, tenants] of Object.entries(r.days)) {
      if (!d.startsWith(month)) continue;
      for (const [t, c] of Object.entries(tenants)) {
        const entry = (counts[t] ??= { today: zero(), month: zero() });
        add(entry.month, c);
        if (d === day) add(entry.today, c);
      }
    }
    for (const [h, tenants] of Object.entries(r.hours)) {
      const into = hours.get(Number(h)) ?? {};
      for (const [t, n] of Object.entries(tenants)) into[t] = (into[t] ?? 0) + n;
      hours.set(Number(h), into);
    }
    for (const b of r.buckets) {
      const into = buckets.get(b.t) ?? { samples: [], calls: 0, hits: 0, misses: 0 };
      into.samples.push(...b.samples);
      into.calls += b.calls;
      into.hits += b.hits;
      into.misses += b.misses;
      buckets.set(b.t, into);
    }
    for (const f of r.failures) failures.push({ ...f, replica: r.replica });
  }
  failures.sort((a, b) => (a.at < b.at ? 1 : a.at > b.at ? -1 : 0));

  // Series on a fixed grid (uPlot wants aligned x values): 24 hours of creates, 15 minutes of 10-second buckets.
  const hourNow = now - (now % HOUR_MS);
  const hourGrid = Array.from({ length: 24 }, (_, i) => hourNow - (23 - i) * HOUR_MS);
  const tenantsWithCreates = [...new Set([...hours.values()].flatMap((h) => Object.keys(h)))].sort();
  const bucketNow = now - (now % BUCKET_MS);
  const bucketGrid = Array.from({ length: BUCKETS }, (_, i) => bucketNow - (BUCKETS - 1 - i) * BUCKET_MS);
  const latency = { t: bucketGrid.map((t) => t / 1000), p50: [] as (number | null)[], p95: [] as (number | null)[], calls: [] as number[] };
  const cache = { t: latency.t, hitRate: [] as (number | null)[] };
  let hits = 0;
  let misses = 0;
  const recent: number[] = [];
  for (const t of bucketGrid) {
    const b = buckets.get(t);
    const sorted = (b?.samples ?? []).sort((x, y) => x - y);
    latency.p50.push(round(quantile(sorted, 0.5)));
    latency.p95.push(round(quantile(sorted, 0.95)));
    latency.calls.push(b?.calls ?? 0);
    const looked = (b?.hits ?? 0) + (b?.misses ?? 0);
    cache.hitRate.push(looked ? Math.round(((b!.hits / looked) * 1000)) / 10 : null);
    hits += b?.hits ?? 0;
    misses += b?.misses ?? 0;
    // The headline latency is over the last five minutes.
    if (t > now - 5 * 60_000) recent.push(...sorted);
  }
  recent.sort((x, y) => x - y);
  return {
    counts,
    series: {
      creates: { t: hourGrid.map((h) => h / 1000), tenants: Object.fromEntries(tenantsWithCreates.map((t) => [t, hourGrid.map((h) => hours.get(h)?.[t] ?? 0)])) },
      latency,
      cache,
    },
    latency: { p50: round(quantile(recent, 0.5)), p95: round(quantile(recent, 0.95)), max: round(recent.at(-1) ?? null), samples: recent.length },
    cache: { hits, misses, hitRate: hits + misses ? Math.round((hits / (hits + misses)) * 1000) / 10 : null },
    failures: failures.slice(0, FAILURES),
    replicas: reports.map((r) => ({ id: r.replica, lastReport: new Date(r.at).toISOString(), live: now - r.at < LIVE_MS, upstreamBreaker: r.breaker.upstream ? 'open' : 'closed', tenantBreakersOpen: r.breaker.tenants })),
  };
}
