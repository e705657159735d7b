// Serving kept outputs: to the owner's key or token (GET /gateway/v1/outputs/{prediction}/{n}), and through a signed,
// expiring link for <img> and <video> tags, which send no Authorization header. Answers carry the stored type,
// Range/206 (a browser seeks a video that way), ETag/304, and cannot run as a page of the gateway's origin.
import { Readable } from 'node:stream';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { z } from 'zod';
import { GatewayError } from '../errors.js';
import { publicBase } from '../http/base.js';
import { parse } from '../http/validate.js';
import { PREDICTION_ID } from '../predictions/schemas.js';
import type { KeptObject, OutputManifest } from '../store/outputs-store.js';
import type { OutputLinkSigner } from './links.js';
import type { Outputs } from './outputs.js';

const OutputParams = z.object({
  id: z.string().regex(PREDICTION_ID, 'is not a prediction id'),
  n: z.coerce.number({ error: 'must be a number' }).int('must be a whole number').min(0, 'must be at least 0').max(100_000, 'must be at most 100000'),
});
const SignedQuery = z.object({ expires: z.string().max(20).optional(), signature: z.string().max(100).optional() });

const notFound = (id: string, n: number) => new GatewayError('NOT_FOUND', `output ${n} of prediction ${id} was not found`);

/**
 * The one range a `Range` header asks for, clipped to the size; undefined for the whole (no header, several ranges,
 * or a unit other than bytes: RFC 9110 lets a server answer those whole); null when nothing of it exists (416).
 */
export function parseRange(header: string | undefined, size: number): { start: number; end: number } | null | undefined {
  if (!header) return undefined;
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m || (m[1] === '' && m[2] === '')) return undefined;
  if (m[1] === '') {
    // The last n bytes.
    const n = Number(m[2]);
    if (n === 0 || size === 0) return null;
    return { start: Math.max(0, size - n), end: size - 1 };
  }
  const start = Number(m[1]);
  const end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
  if (start >= size || end < start) return null;
  return { start, end };
}

async function send(outputs: Outputs, request: FastifyRequest, reply: FastifyReply, m: OutputManifest, o: KeptObject): Promise<FastifyReply> {
  const maxAge = Math.max(0, Math.floor((m.expiresAt - Date.now()) / 1000));
  reply
    .header('content-type', o.contentType)
    .header('etag', o.etag)
    .header('accept-ranges', 'bytes')
    .header('last-modified', new Date(m.keptAt).toUTCString())
    // Only the owner (or a link's holder) may see it: never in a shared cache. It never changes while it lives.
    .header('cache-control', `private, max-age=${Math.min(maxAge, 86_400)}`)
    .header('x-content-type-options', 'nosniff')
    // An HTML or SVG output opened directly must not run as a page of the gateway's origin.
    .header('content-security-policy', "default-src 'none'; sandbox")
    .header('cross-origin-resource-policy', 'cross-origin')
    .header('content-disposition', 'inline');
  const inm = request.headers['if-none-match'];
  if (inm && inm.split(',').some((t) => t.trim() === o.etag || t.trim() === '*' || t.trim() === `W/${o.etag}`)) return reply.code(304).send();
  const ifRange = request.headers['if-range'];
  const range = ifRange === undefined || ifRange === o.etag ? parseRange(request.headers.range, o.size) : undefined;
  if (range === null) {
    throw new GatewayError('VALIDATION', `the range is outside the output (${o.size} bytes)`, { status: 416, headers: { 'content-range': `bytes */${o.size}` } });
  }
  // HEAD: the headers only. Fastify would read a real stream to its end (for a video in S3, the whole object).
  const stream = request.method === 'HEAD' ? Readable.from([]) : await outputs.objects.get(o.key, range);
  if (!stream) throw notFound(m.id, o.n);
  if (range) {
    return reply
      .code(206)
      .header('content-range', `bytes ${range.start}-${range.end}/${o.size}`)
      .header('content-length', String(range.end - range.start + 1))
      .send(stream);
  }
  return reply.header('content-length', String(o.size)).send(stream);
}

/** Under the API's auth (key or token): the owner's outputs, and signed links to them. */
export async function outputRoutes(app: FastifyInstance, opts: { outputs: Outputs; signer?: OutputLinkSigner }): Promise<void> {
  const { outputs, signer } = opts;
  const { config } = app;

  /** The kept output if the caller's tenant owns it; anyone else's looks exactly like a missing one. */
  async function owned(request: FastifyRequest) {
    const { id, n } = parse(OutputParams, request.params, 'path');
    const found = await outputs.find(id, n);
    if (!found || found.manifest.tenant !== request.principal!.tenant.id) throw notFound(id, n);
    return found;
  }

  app.get('/outputs/:id/:n', async (request, reply) => {
    const { manifest, object } = await owned(request);
    return send(outputs, request, reply, manifest, object);
  });

  app.get('/outputs/:id/:n/link', async (request) => {
    const { manifest, object } = await owned(request);
    if (!signer) throw new GatewayError('NOT_IMPLEMENTED', 'signed output links need FILES_URL_SECRET or TOKEN_SIGNING_SECRET');
    // Never past the output's own end.
    const expiresAt = Math.min(Date.now() + config.FILES_URL_TTL_SECONDS * 1000, manifest.expiresAt);
    return { url: signer.url(publicBase(config, request), manifest.id, object.n, expiresAt), expires_at: new Date(Math.floor(expiresAt / 1000) * 1000).toISOString() };
  });
}

/** Outside auth: the signature is the permission. The same answer for every refusal. */
export async function signedOutputRoutes(app: FastifyInstance, opts: { outputs: Outputs; signer: OutputLinkSigner }): Promise<void> {
  app.get('/gateway/v1/outputs/:id/:n/content', async (request, reply) => {
    const { id, n } = parse(OutputParams, request.params, 'path');
    const { expires, signature } = parse(SignedQuery, request.query, 'query');
    const refused = () => new GatewayError('FORBIDDEN', 'this output link is not valid or has expired');
    if (!opts.signer.verify(id, n, expires, signature)) throw refused();
    const found = await opts.outputs.find(id, n);
    if (!found) throw refused();
    return send(opts.outputs, request, reply, found.manifest, found.object);
  });
}
