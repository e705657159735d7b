// Reading one output file to copy it: a data: URI, or a URL fetched under the webhook rules (https only, http for
// WEBHOOK_ALLOW_HTTP_HOSTS; no private, loopback or reserved address unless the host is in
// WEBHOOK_ALLOW_PRIVATE_HOSTS, checked on the address actually connected to; redirects followed only to URLs that
// pass the same checks). Bytes stream through a counter that stops at OUTPUTS_MAX_BYTES and a SHA-256 (the ETag).
import { createHash } from 'node:crypto';
import { Readable, Transform, type TransformCallback } from 'node:stream';
import { Agent, request } from 'undici';
import { RefusedAddress, type UrlPolicy, guardedLookup, refuseUrl } from '../webhooks/deliver.js';

/** How a copy ended; fgw_output_copies_total counts these. */
export type CopyOutcome = 'copied' | 'not_found' | 'too_large' | 'refused' | 'quota' | 'failed';

/** A copy that did not happen, and whether trying again later could change that. */
export class CopyFailure extends Error {
  override name = 'CopyFailure';
  constructor(
    readonly outcome: Exclude<CopyOutcome, 'copied'>,
    readonly retry: boolean,
    message: string,
  ) {
    super(message);
  }
}

const MAX_REDIRECTS = 3;

/** A MIME type fit for a Content-Type header, else undefined. */
export function cleanType(given: string | undefined): string | undefined {
  const type = given?.split(';')[0]!.trim().toLowerCase();
  return type && /^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}\/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$/.test(type) ? type : undefined;
}

// For a CDN that answers application/octet-stream (or nothing): what a browser needs to show the file.
const BY_EXTENSION: Record<string, string> = {
  webp: 'image/webp', png: 'image/png', jpg: 'image/jpeg', jpeg: 'image/jpeg', gif: 'image/gif', svg: 'image/svg+xml',
  mp4: 'video/mp4', webm: 'video/webm', mov: 'video/quicktime', mp3: 'audio/mpeg', wav: 'audio/wav', ogg: 'audio/ogg',
  flac: 'audio/flac', txt: 'text/plain', json: 'application/json', glb: 'model/gltf-binary', zip: 'application/zip',
};

function typeOf(header: string | undefined, url: string): string {
  const given = cleanType(header);
  if (given && given !== 'application/octet-stream') return given;
  const ext = /\.([a-z0-9]{1,5})$/i.exec(new URL(url).pathname)?.[1]?.toLowerCase();
  return (ext && BY_EXTENSION[ext]) ?? given ?? 'application/octet-stream';
}

/** Counts and hashes what passes, and fails the stream past `max` bytes. */
export class Capped extends Transform {
  readonly #max: number;
  readonly #hash = createHash('sha256');
  size = 0;

  constructor(max: number) {
    super();
    this.#max = max;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    this.size += chunk.length;
    if (this.size > this.#max) return done(new CopyFailure('too_large', false, `larger than OUTPUTS_MAX_BYTES (${this.#max} bytes)`));
    this.#hash.update(chunk);
    done(null, chunk);
  }

  /** The ETag of what passed (once the stream ended). */
  etag(): string {
    return `"${this.#hash.digest('base64url')}"`;
  }
}

export interface Opened {
  body: Readable;
  contentType: string;
}

export class Sources {
  readonly #agent: Agent;
  readonly #policy: UrlPolicy;
  readonly #maxBytes: number;
  readonly #timeoutMs: number;

  constructor(policy: UrlPolicy, maxBytes: number, timeoutMs: number) {
    this.#policy = policy;
    this.#maxBytes = maxBytes;
    this.#timeoutMs = timeoutMs;
    this.#agent = new Agent({ connect: { lookup: guardedLookup(policy), timeout: Math.min(timeoutMs, 5000) }, connections: 16, keepAliveTimeout: 10_000 });
  }

  /** The file's bytes as a stream and its type; throws CopyFailure when it cannot (or must not) be read. */
  async open(ref: string, signal?: AbortSignal): Promise<Opened> {
    if (ref.startsWith('data:')) return this.#data(ref);
    let url = ref;
    for (let hop = 0; ; hop++) {
      const refused = refuseUrl(url, this.#policy);
      if (refused) throw new CopyFailure('refused', false, `the output URL ${refused}`);
      let res;
      try {
        res = await request(url, {
          method: 'GET',
          dispatcher: this.#agent,
          headers: { 'user-agent': 'fuhu-gateway-outputs' },
          signal,
          headersTimeout: this.#timeoutMs,
          // Between two chunks, not for the whole file: a large video may take long, a stalled one may not.
          bodyTimeout: this.#timeoutMs,
        });
      } catch (err) {
        const cause = (err as { cause?: unknown }).cause;
        if (err instanceof RefusedAddress || cause instanceof RefusedAddress) throw new CopyFailure('refused', false, ((cause as Error) ?? (err as Error)).message);
        throw new CopyFailure('failed', true, `could not fetch the output (${(err as { code?: string }).code ?? (err as Error).message})`);
      }
      const status = res.statusCode;
      if (status >= 300 && status < 400 && typeof res.headers.location === 'string' && hop < MAX_REDIRECTS) {
        await res.body.dump({ limit: 64 * 1024 }).catch(() => {});
        url = new URL(res.headers.location, url).href;
        continue;
      }
      if (status < 200 || status >= 300) {
        await res.body.dump({ limit: 64 * 1024 }).catch(() => {});
        if (status === 404 || status === 410 || status === 403) throw new CopyFailure('not_found', false, `the output URL answered ${status} (deleted, or expired)`);
        const retry = status >= 500 || status === 408 || status === 429;
        throw new CopyFailure('failed', retry, status >= 300 && status < 400 ? `the output URL answered ${status} (too many redirects)` : `the output URL answered ${status}`);
      }
      const length = Number(res.headers['content-length']);
      if (Number.isFinite(length) && length > this.#maxBytes) {
        res.body.destroy();
        throw new CopyFailure('too_large', false, `the output is ${length} bytes, more than OUTPUTS_MAX_BYTES (${this.#maxBytes})`);
      }
      const type = res.headers['content-type'];
      return { body: res.body, contentType: typeOf(typeof type === 'string' ? type : undefined, url) };
    }
  }

  #data(ref: string): Opened {
    const comma = ref.indexOf(',');
    const head = ref.slice(5, comma);
    const base64 = /;base64$/i.test(head);
    const payload = ref.slice(comma + 1);
    // Decoded size, before decoding: base64 is 4 characters for 3 bytes.
    const approx = base64 ? Math.floor((payload.length * 3) / 4) : payload.length;
    if (approx > this.#maxBytes + 2) throw new CopyFailure('too_large', false, `the data: output is larger than OUTPUTS_MAX_BYTES (${this.#maxBytes} bytes)`);
    let bytes: Buffer;
    try {
      bytes = base64 ? Buffer.from(payload, 'base64') : Buffer.from(decodeURIComponent(payload));
    } catch {
      throw new CopyFailure('failed', false, 'the data: output is not well-formed');
    }
    return { body: Readable.from([bytes]), contentType: cleanType(head.replace(/;base64$/i, '')) ?? (head === '' || head.startsWith(';') ? 'text/plain' : 'application/octet-stream') };
  }

  async close(): Promise<void> {
    await this.#agent.close();
  }
}
