// The one rule for the day usage is counted under: the UTC calendar day.

const DAY_MS = 86_400_000;
let current = { name: '', startsAt: 0, endsAt: 0 };

/** Today's UTC day as YYYY-MM-DD; worked out again only when a day has ended (or the clock stepped back). */
export function today(now = Date.now()): string {
  if (now >= current.endsAt || now < current.startsAt) {
    const startsAt = now - (now % DAY_MS);
    current = { name: new Date(now).toISOString().slice(0, 10), startsAt, endsAt: startsAt + DAY_MS };
  }
  return current.name;
}

/** The UTC days from..to inclusive (YYYY-MM-DD), or undefined when there are more than `max`. */
export function daysBetween(from: string, to: string, max: number): string[] | undefined {
  const days: string[] = [];
  for (let d = Date.parse(`${from}T00:00:00Z`); d <= Date.parse(`${to}T00:00:00Z`); d += DAY_MS) {
    days.push(new Date(d).toISOString().slice(0, 10));
    if (days.length > max) return undefined;
  }
  return days;
}

/** The day `n` days before `day`. */
export function daysBefore(day: string, n: number): string {
  return new Date(Date.parse(`${day}T00:00:00Z`) - n * DAY_MS).toISOString().slice(0, 10);
}

/** The sum of each counter over days; predict_time rounded to the millisecond (float sums drift). */
export function totalsOf(days: Record<string, Record<string, number>>): Record<string, number> {
  const totals: Record<string, number> = {};
  for (const day of Object.values(days)) for (const [k, v] of Object.entries(day)) totals[k] = (totals[k] ?? 0) + v;
  if (totals.predict_time !== undefined) totals.predict_time = Math.round(totals.predict_time * 1000) / 1000;
  return totals;
}
