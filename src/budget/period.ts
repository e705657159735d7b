// Budget periods: the calendar day or month that holds an instant, in UTC or BUDGET_TIMEZONE, and when it ends.

export type Period = 'day' | 'month';

export interface PeriodWindow {
  /** YYYY-MM-DD or YYYY-MM, in the budget's time zone: part of the store key, so each period counts afresh. */
  key: string;
  startsAt: number;
  endsAt: number;
}

const formatters = new Map<string, Intl.DateTimeFormat>();

/** The wall-clock time at `t` in `timeZone`, as if that wall time were UTC (ms). */
function wallOf(t: number, timeZone: string): number {
  let f = formatters.get(timeZone);
  if (!f) {
    f = new Intl.DateTimeFormat('en-US', { timeZone, hourCycle: 'h23', year: 'numeric', month: 'numeric', day: 'numeric', hour: 'numeric', minute: 'numeric', second: 'numeric' });
    formatters.set(timeZone, f);
  }
  const p = Object.fromEntries(f.formatToParts(t).map((x) => [x.type, Number(x.value)]));
  return Date.UTC(p.year!, p.month! - 1, p.day!, p.hour!, p.minute!, p.second!) + (t % 1000 + 1000) % 1000;
}

/** The instant at which `timeZone`'s clocks show `wall` (two passes settle a DST change between guess and answer). */
function instantOf(wall: number, timeZone: string): number {
  let t = wall - (wallOf(wall, timeZone) - wall);
  t = wall - (wallOf(t, timeZone) - t);
  return t;
}

export function periodOf(period: Period, now: number, timeZone = 'UTC'): PeriodWindow {
  const utc = timeZone === 'UTC';
  const d = new Date(utc ? now : wallOf(now, timeZone));
  const y = d.getUTCFullYear();
  const m = d.getUTCMonth();
  const startWall = period === 'day' ? Date.UTC(y, m, d.getUTCDate()) : Date.UTC(y, m, 1);
  const endWall = period === 'day' ? Date.UTC(y, m, d.getUTCDate() + 1) : Date.UTC(y, m + 1, 1);
  const key = new Date(startWall).toISOString().slice(0, period === 'day' ? 10 : 7);
  return utc
    ? { key, startsAt: startWall, endsAt: endWall }
    : { key, startsAt: instantOf(startWall, timeZone), endsAt: instantOf(endWall, timeZone) };
}
