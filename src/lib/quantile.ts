// The q-quantile of an ascending list, by rank (no interpolation): the dashboard's latencies, the lifecycle's lags,
// the benchmarks' figures. null for an empty list.
export function quantile(sorted: readonly number[], q: number): number | null {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]! : null;
}
