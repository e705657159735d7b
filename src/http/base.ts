// The gateway's external address, which every URL it hands out starts with.
import type { FastifyRequest } from 'fastify';
import type { Config } from '../config.js';

/** PUBLIC_BASE_URL, else the request's own scheme and host (as TRUST_PROXY lets Fastify read them). */
export const publicBase = (config: Pick<Config, 'PUBLIC_BASE_URL'>, request: FastifyRequest): string =>
  config.PUBLIC_BASE_URL ?? `${request.protocol}://${request.host}`;
