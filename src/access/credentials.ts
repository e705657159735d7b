// Reading a credential from a request, and comparing secrets without a timing side channel.
import { timingSafeEqual } from 'node:crypto';
import type { FastifyRequest } from 'fastify';

/** The credential of `Authorization: Bearer <x>` or `Token <x>` (the Python client's scheme). */
export function credentialOf(request: FastifyRequest): string | undefined {
  const h = request.headers.authorization;
  if (!h) return undefined;
  const m = /^(?:Bearer|Token)\s+(\S+)\s*$/i.exec(h);
  return m?.[1];
}

export function sameSecret(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}
