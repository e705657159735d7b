// URLs in predictions point back at the gateway: the official client follows urls.get and list `next` verbatim,
// with the tenant's key, so any other host would receive that key.
import type { FastifyRequest } from 'fastify';

export type Prediction = Record<string, unknown> & { id?: unknown; status?: unknown; urls?: Record<string, unknown> };

/** The gateway's external base: PUBLIC_BASE_URL, else the request's own scheme and host. */
export function publicBase(request: FastifyRequest, configured: string | undefined): string {
  return configured ?? `${request.protocol}://${request.host}`;
}

/** Rewrites urls.get and urls.cancel in place; urls.stream and urls.web are capability URLs and stay. */
export function rewriteUrls(p: Prediction, base: string): Prediction {
  if (typeof p.id !== 'string') return p;
  const self = `${base}/replicate/v1/predictions/${encodeURIComponent(p.id)}`;
  const urls = p.urls && typeof p.urls === 'object' ? p.urls : {};
  urls.get = self;
  urls.cancel = `${self}/cancel`;
  p.urls = urls;
  return p;
}
