// pino options: JSON lines with credentials redacted at the logger, pretty output only on a TTY.
import type { LoggerOptions } from 'pino';

/** Paths whose values never reach a log line, whatever code logs them. */
export const REDACT_PATHS = [
  'req.headers.authorization',
  'req.headers.cookie',
  'req.headers["x-api-key"]',
  'req.headers["idempotency-key"]',
  'res.headers["set-cookie"]',
  'headers.authorization',
  'headers.cookie',
  '*.headers.authorization',
  'authorization',
  'cookie',
  'token',
  '*.token',
  'key',
  '*.key',
  'keys',
  '*.keys',
  'apiKey',
  '*.apiKey',
  'UPSTREAM_API_KEY',
  '*.UPSTREAM_API_KEY',
  'TOKEN_SIGNING_SECRET',
  '*.TOKEN_SIGNING_SECRET',
  'ADMIN_API_KEY',
  '*.ADMIN_API_KEY',
  'METRICS_TOKEN',
  '*.METRICS_TOKEN',
];

export function loggerOptions(level: string, pretty = false): LoggerOptions {
  return {
    level,
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    ...(pretty ? { transport: { target: 'pino-pretty', options: { translateTime: 'SYS:HH:MM:ss.l' } } } : {}),
  };
}
