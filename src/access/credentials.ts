// Reading a credential from a request, and comparing secrets without a timing side channel.
import { hash, timingSafeEqual } from 'node:crypto';
import type { FastifyRequest } from 'fastify';

/** The credential of `Authorization: Bearer <x>` or `Token <x>` (the Python client's scheme). */
export function credentialOf(request: FastifyRequest): string | undefined {
  const h = request.headers.authorization;
  if (!h) return undefined;
  const m = /^(?:Bearer|Token)\s+(\S+)\s*$/i.exec(h);
  return m?.[1];
}

/** `?token=<x>`, on the routes that take it (a browser's EventSource cannot send an Authorization header). */
export function queryToken(request: FastifyRequest): string | undefined {
  const t = (request.query as { token?: unknown } | undefined)?.token;
  return typeof t === 'string' && t.length > 0 ? t : undefined;
}

/** Compares fixed-length digests, so not even the secret's length shows in the time taken. */
export function sameSecret(a: string, b: string): boolean {
  return timingSafeEqual(hash('sha256', a, 'buffer'), hash('sha256', b, 'buffer'));
}
