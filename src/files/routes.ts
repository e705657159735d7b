// The files API the clients upload Blob and Buffer inputs to (multipart, as Replicate takes it), kept per tenant by
// the gateway; and, for FILES_DELIVERY=url, the signed link the upstream fetches a file's bytes from.
import { createHash, randomBytes } from 'node:crypto';
import multipart from '@fastify/multipart';
import type { FastifyInstance, FastifyReply } from 'fastify';
import { z } from 'zod';
import { GatewayError } from '../errors.js';
import { publicBase } from '../http/base.js';
import { parse } from '../http/validate.js';
import { deeperThan } from '../lib/json-depth.js';
import type { FileMeta } from '../store/file-store.js';
import { FILE_ID, fileObject, mayUse, uploaderOf } from './file-object.js';
import { FormMetadata, isMetadataField } from './form-metadata.js';
import type { FileUrlSigner } from './signed-urls.js';

const PAGE_SIZE = 100;
const METADATA_MAX_BYTES = 64 * 1024;
const METADATA_MAX_FIELDS = 64;
const IdParams = z.object({ id: z.string().regex(FILE_ID, 'is not a file id this gateway issued') });
const ListQuery = z.object({ cursor: z.string().max(100).optional() });
const SignedQuery = z.object({ expires: z.string().max(20).optional(), signature: z.string().max(100).optional() });

/** A MIME type that is safe in a data: URI and a Content-Type header; anything else is plain bytes. */
function safeContentType(given: string | undefined): string {
  const type = given?.split(';')[0]!.trim().toLowerCase();
  return type && /^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}\/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$/.test(type) ? type : 'application/octet-stream';
}

/** The last path segment, without control characters, at most 255 characters. */
function safeName(given: string | undefined, fallback: string): string {
  // eslint-disable-next-line no-control-regex
  const name = (given ?? '').split(/[\\/]/).pop()!.replace(/[\u0000-\u001f\u007f]/g, '').slice(0, 255);
  return name || fallback;
}

function parseMetadata(text: string, maxDepth: number): Record<string, unknown> {
  if (text.trim() === '') return {};
  // The stored file's meta is serialised with it: metadata deep enough to overflow JSON.stringify would fail there.
  if (deeperThan(text, maxDepth)) throw new GatewayError('VALIDATION', `metadata nests deeper than JSON_MAX_DEPTH (${maxDepth}) levels`);
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new GatewayError('VALIDATION', 'metadata must be a JSON object');
  }
  if (!value || typeof value !== 'object' || Array.isArray(value)) throw new GatewayError('VALIDATION', 'metadata must be a JSON object');
  return value as Record<string, unknown>;
}

/** Sends a file's bytes so a browser never renders them as a page of the gateway's origin. */
function sendBytes(reply: FastifyReply, meta: FileMeta, bytes: Buffer): FastifyReply {
  return reply
    .header('content-type', meta.contentType)
    .header('content-disposition', `attachment; filename*=UTF-8''${encodeURIComponent(meta.name)}`)
    .header('x-content-type-options', 'nosniff')
    .header('content-security-policy', "default-src 'none'; sandbox")
    .header('cache-control', 'private, no-store')
    .send(bytes);
}

const notFound = (id: string) => new GatewayError('NOT_FOUND', `file ${id} not found`);

export async function fileRoutes(app: FastifyInstance): Promise<void> {
  const { config, files } = app;
  await app.register(multipart, {
    // One file part (content) and the small fields the clients add; anything larger is refused while it streams.
    // Replicate's new SDK sends a metadata object as one field per leaf (src/files/form-metadata.ts): room for 64.
    limits: { fileSize: config.FILES_MAX_BYTES, files: 2, fields: METADATA_MAX_FIELDS + 8, fieldSize: METADATA_MAX_BYTES, fieldNameSize: 1024, parts: METADATA_MAX_FIELDS + 10, headerPairs: 100 },
  });

  const notMultipart = () => new GatewayError('UNSUPPORTED_MEDIA_TYPE', 'send the file as multipart/form-data with the file in a part named "content"');
  // Any other body type is refused before a byte of it is read (JSON still parses, and is refused below).
  app.addContentTypeParser('*', (_request, _payload, done) => done(notMultipart(), undefined));

  app.post('/files', async (request, reply) => {
    if (!request.isMultipart()) throw notMultipart();
    const principal = request.principal!;
    let content: { bytes: Buffer; filename: string; mimetype: string } | undefined;
    let metadata: Record<string, unknown> = {};
    let name: string | undefined;
    let type: string | undefined;
    const formMetadata = new FormMetadata(METADATA_MAX_BYTES, config.JSON_MAX_DEPTH);
    try {
      for await (const part of request.parts()) {
        if (part.type === 'file') {
          const bytes = await part.toBuffer();
          if (part.fieldname === 'content') content = { bytes, filename: part.filename, mimetype: part.mimetype };
          // The JS client sends metadata as a JSON Blob, the Python client as a field.
          else if (part.fieldname === 'metadata') metadata = parseMetadata(bytes.subarray(0, METADATA_MAX_BYTES + 1).toString(), config.JSON_MAX_DEPTH);
        } else if (part.fieldname === 'metadata') metadata = parseMetadata(String(part.value), config.JSON_MAX_DEPTH);
        else if (isMetadataField(part.fieldname)) formMetadata.add(part.fieldname, String(part.value));
        else if (part.fieldname === 'filename') name = String(part.value);
        else if (part.fieldname === 'type') type = String(part.value);
      }
    } catch (err) {
      if (err instanceof GatewayError) throw err;
      const code = (err as { code?: string }).code;
      if (code === 'FST_REQ_FILE_TOO_LARGE') throw new GatewayError('PAYLOAD_TOO_LARGE', `the file is larger than FILES_MAX_BYTES (${config.FILES_MAX_BYTES} bytes)`);
      if (code === 'FST_FILES_LIMIT' || code === 'FST_PARTS_LIMIT' || code === 'FST_FIELDS_LIMIT') throw new GatewayError('BAD_REQUEST', 'send one file in a part named "content", with at most a few small fields');
      // Whatever else fails here is the parser reading the client's body: no boundary parameter, a boundary that
      // never occurs, a body cut off before the closing boundary (busboy's errors carry no code, only fixed texts).
      throw new GatewayError('BAD_REQUEST', `the body is not well-formed multipart/form-data: ${String((err as Error).message).slice(0, 200)}`, { cause: err });
    }
    if (!content) throw new GatewayError('VALIDATION', 'the form has no file in a part named "content"');
    if (!formMetadata.empty) metadata = formMetadata.merged(metadata);

    const id = randomBytes(24).toString('base64url');
    const now = Date.now();
    const meta: FileMeta = {
      id,
      tenant: principal.tenant.id,
      uploader: uploaderOf(principal),
      name: safeName(name ?? content.filename, `file_${now}`),
      contentType: safeContentType(type ?? content.mimetype),
      size: content.bytes.length,
      sha256: createHash('sha256').update(content.bytes).digest('hex'),
      md5: createHash('md5').update(content.bytes).digest('hex'),
      metadata,
      createdAt: now,
      expiresAt: now + config.FILES_TTL_SECONDS * 1000,
    };
    const put = await files.put(meta, content.bytes, config.FILES_TENANT_MAX_BYTES);
    if (!put.stored) {
      throw new GatewayError('PAYLOAD_TOO_LARGE', `your files would take ${put.usedBytes + meta.size} bytes, more than FILES_TENANT_MAX_BYTES (${config.FILES_TENANT_MAX_BYTES}); delete some (DELETE /replicate/v1/files/{id}) or wait for them to expire`);
    }
    request.log.info({ file: id, size: meta.size }, 'file stored');
    return reply.code(201).send(fileObject(meta, publicBase(config, request)));
  });

  // Key only, like the prediction list: a browser token would see other end users' uploads.
  app.get('/files', { config: { keyOnly: true } }, async (request) => {
    const { cursor } = parse(ListQuery, request.query, 'query');
    let before: number | undefined;
    if (cursor !== undefined) {
      const m = /^f(\d{1,16})$/.exec(Buffer.from(cursor, 'base64url').toString());
      if (!m) throw new GatewayError('VALIDATION', 'query cursor is not a cursor this gateway issued');
      before = Number(m[1]);
    }
    const page = await files.list(request.principal!.tenant.id, { limit: PAGE_SIZE, before });
    const base = publicBase(config, request);
    const last = page.files.at(-1);
    return {
      next: page.hasMore && last ? `${base}/replicate/v1/files?cursor=${Buffer.from(`f${last.createdAt}`).toString('base64url')}` : null,
      previous: null,
      results: page.files.map((f) => fileObject(f, base)),
    };
  });

  app.get('/files/:id', async (request) => {
    const { id } = parse(IdParams, request.params, 'path');
    const meta = await files.meta(id);
    if (!meta || !mayUse(request.principal!, meta)) throw notFound(id);
    return fileObject(meta, publicBase(config, request));
  });

  app.get('/files/:id/download', async (request, reply) => {
    const { id } = parse(IdParams, request.params, 'path');
    const file = await files.content(id);
    if (!file || !mayUse(request.principal!, file.meta)) throw notFound(id);
    return sendBytes(reply, file.meta, file.bytes);
  });

  app.delete('/files/:id', async (request, reply) => {
    const { id } = parse(IdParams, request.params, 'path');
    const meta = await files.meta(id);
    if (!meta || !mayUse(request.principal!, meta) || !(await files.delete(id, meta.tenant))) throw notFound(id);
    return reply.code(204).send();
  });
}

/** Outside auth: the signature is the permission (FILES_DELIVERY=url). Same answer for every refusal. */
export async function signedFileRoutes(app: FastifyInstance, opts: { signer: FileUrlSigner }): Promise<void> {
  app.get('/gateway/v1/files/:id/content', async (request, reply) => {
    const { id } = parse(IdParams, request.params, 'path');
    const { expires, signature } = parse(SignedQuery, request.query, 'query');
    const refused = () => new GatewayError('FORBIDDEN', 'this file link is not valid or has expired');
    if (!opts.signer.verify(id, expires, signature)) throw refused();
    const file = await app.files.content(id);
    if (!file) throw refused();
    return sendBytes(reply, file.meta, file.bytes);
  });
}
