// The FuhuAPI wire as the simulator speaks it: paths, error bodies and header parsing. No state lives here, so every
// other simulator module can import it without cycles.

export const SIM_PREFIX = '/replicate/v1';

/** Route patterns, shared by the routes and by faults that need to know which route a request hit. */
export const ROUTES = {
  createByModel: `${SIM_PREFIX}/models/:owner/:name/predictions`,
  createByVersion: `${SIM_PREFIX}/predictions`,
  get: `${SIM_PREFIX}/predictions/:id`,
  cancel: `${SIM_PREFIX}/predictions/:id/cancel`,
  list: `${SIM_PREFIX}/predictions`,
  // Stand-in for urls.stream; outside SIM_PREFIX, so neither recorded, delayed, faulted nor authenticated.
  stream: '/stream/:id',
} as const;

export interface Problem {
  title: string;
  detail: string;
  status: number;
}

/** Replicate's problem+json error body. */
export function problem(status: number, title: string, detail: string): Problem {
  return { title, detail, status };
}

export const NOT_FOUND = problem(404, 'Not found', 'The requested resource could not be found.');
export const UNAUTHENTICATED = problem(401, 'Unauthenticated', 'You did not pass an authentication token');

/** The error body of new-api, the relay FuhuAPI runs in front of Replicate. */
export function newApiError(message: string, code: string | null) {
  return { error: { message, type: 'new_api_error', code } };
}

export function pathOf(url: string): string {
  const q = url.indexOf('?');
  return q === -1 ? url : url.slice(0, q);
}

export function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

// Only `wait` matters; `wait=n` is clamped to Replicate's 1..60 s because real clients send larger values.
export function parsePreferWait(header: string | string[] | undefined): number | undefined {
  if (header === undefined) return undefined;
  const value = Array.isArray(header) ? header.join(',') : header;
  const m = /(?:^|[\s,;])wait(?:\s*=\s*(\d+))?(?=$|[\s,;])/i.exec(value);
  if (!m) return undefined;
  if (m[1] === undefined) return 60;
  const n = Number(m[1]);
  if (n <= 0) return undefined;
  return Math.min(n, 60);
}

/** `Authorization: Bearer <apiKey>` with a case-insensitive scheme, checked without building strings on a match. */
export function bearerChecker(apiKey: string): (header: string | string[] | undefined) => boolean {
  const expectedLength = 'bearer '.length + apiKey.length;
  return (auth) =>
    typeof auth === 'string' && auth.length === expectedLength && auth.slice(0, 7).toLowerCase() === 'bearer ' && auth.slice(7) === apiKey;
}
