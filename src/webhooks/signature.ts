// The upstream's webhook signature (Standard Webhooks), checked without holding the body: the headers are checked
// before a byte of it is read, then the body streams through the HMAC. A caller who is not the upstream costs the
// gateway no memory, whatever it sends.
import { createHmac, timingSafeEqual } from 'node:crypto';
import type { Readable } from 'node:stream';
import { GatewayError } from '../errors.js';

/** Standard Webhooks' tolerance for the sender's clock, either way. */
const TOLERANCE_SECONDS = 5 * 60;
const MSG_ID = /^[\x21-\x7e]{1,256}$/;
const V1 = /^v1,([A-Za-z0-9+/]{43}=)$/;

export interface SignedHeaders {
  id: string;
  timestamp: string;
  signatures: Buffer[];
}

const unauthenticated = (why: string) =>
  // connection: close, so that Node does not read the rest of a body nobody wants to keep the connection open.
  new GatewayError('UNAUTHENTICATED', `the webhook signature is ${why}`, { headers: { connection: 'close' } });

export class UpstreamSignature {
  readonly #key: Buffer;

  constructor(secret: string) {
    this.#key = Buffer.from(secret.startsWith('whsec_') ? secret.slice('whsec_'.length) : secret, 'base64');
  }

  /** What can be checked before the body: the three headers are there and well formed, the timestamp is recent. */
  headers(h: Record<string, string | string[] | undefined>, nowMs = Date.now()): SignedHeaders {
    const one = (name: string) => (typeof h[name] === 'string' ? (h[name] as string) : '');
    const id = one('webhook-id');
    const timestamp = one('webhook-timestamp');
    if (!MSG_ID.test(id) || !/^\d{1,12}$/.test(timestamp) || !one('webhook-signature')) throw unauthenticated('missing, or its headers are not well formed');
    if (Math.abs(Math.floor(nowMs / 1000) - Number(timestamp)) > TOLERANCE_SECONDS) throw unauthenticated('too old or too new (its timestamp is more than five minutes away)');
    const signatures = one('webhook-signature')
      .split(' ')
      .slice(0, 8)
      .map((s) => V1.exec(s)?.[1])
      .filter((s): s is string => s !== undefined)
      .map((s) => Buffer.from(s, 'base64'));
    if (!signatures.length) throw unauthenticated('missing, or its headers are not well formed');
    return { id, timestamp, signatures };
  }

  /**
   * Reads the body through the HMAC, never keeping it: true when one of the signatures matches. Past `maxBytes` it
   * stops reading and throws 413.
   */
  async verify(body: Readable | undefined, signed: SignedHeaders, maxBytes: number): Promise<boolean> {
    const hmac = createHmac('sha256', this.#key).update(`${signed.id}.${signed.timestamp}.`);
    await drain(body, maxBytes, (chunk) => hmac.update(chunk));
    const digest = hmac.digest();
    return signed.signatures.some((s) => s.length === digest.length && timingSafeEqual(s, digest));
  }
}

/** Reads a body to its end, handing each chunk to `onChunk` and keeping none; past `maxBytes`, 413. */
export async function drain(body: Readable | undefined, maxBytes: number, onChunk: (chunk: Buffer) => void = () => {}): Promise<void> {
  if (!body) return;
  let seen = 0;
  // Not destroyed on an early stop: that would take the socket, and the 413 with it.
  for await (const chunk of body.iterator({ destroyOnReturn: false })) {
    const buf = typeof chunk === 'string' ? Buffer.from(chunk) : (chunk as Buffer);
    seen += buf.length;
    if (seen > maxBytes) {
      throw new GatewayError('PAYLOAD_TOO_LARGE', `the webhook body is larger than UPSTREAM_MAX_BODY_BYTES (${maxBytes}) allows`, { headers: { connection: 'close' } });
    }
    onChunk(buf);
  }
}
