// The Prefer header of a create: sync mode and how long the upstream may hold the request.
import { GatewayError } from '../errors.js';

const MAX_WAIT_SECONDS = 60;

/**
 * `Prefer: wait` / `wait=n` with n clamped to 1..60 (the official client sends it unclamped, e.g. wait=90).
 * Returns the header to forward and how long the upstream may hold the request.
 */
export function normalizePrefer(value: string | undefined): { header?: string; waitSeconds: number } {
  if (!value) return { waitSeconds: 0 };
  const m = /(?:^|[,;\s])wait(?:\s*=\s*([^,;\s]*))?(?=$|[,;\s])/i.exec(value);
  if (!m) return { header: value, waitSeconds: 0 };
  if (m[1] === undefined) return { header: 'wait', waitSeconds: MAX_WAIT_SECONDS };
  const asked = Number(m[1]);
  if (m[1] === '' || !Number.isFinite(asked)) {
    throw new GatewayError('BAD_REQUEST', 'Prefer: wait takes a number of seconds (wait or wait=1..60)');
  }
  const n = Math.min(Math.max(Math.round(asked), 1), MAX_WAIT_SECONDS);
  return { header: `wait=${n}`, waitSeconds: n };
}
