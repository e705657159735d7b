// Signed, expiring URLs for FILES_DELIVERY=url: the upstream fetches the file from the gateway without any key,
// so the URL itself is the permission. HMAC-SHA256 over the id and the expiry; compared in constant time.
import { createHmac, timingSafeEqual } from 'node:crypto';

export class FileUrlSigner {
  readonly #secret: string;
  constructor(secret: string) {
    this.#secret = secret;
  }

  #mac(id: string, expires: number): string {
    return createHmac('sha256', this.#secret).update(`file:${id}:${expires}`).digest('base64url');
  }

  /** A URL under `base` that serves the file's bytes until `expiresAt` (ms). */
  url(base: string, id: string, expiresAt: number): string {
    const expires = Math.floor(expiresAt / 1000);
    return `${base}/gateway/v1/files/${id}/content?expires=${expires}&signature=${this.#mac(id, expires)}`;
  }

  /** Whether a presented id, expiry (seconds) and signature are genuine and not yet expired. */
  verify(id: string, expires: string | undefined, signature: string | undefined): boolean {
    if (!expires || !signature || !/^\d{1,12}$/.test(expires)) return false;
    const exp = Number(expires);
    if (exp * 1000 <= Date.now()) return false;
    const want = Buffer.from(this.#mac(id, exp));
    const got = Buffer.from(signature);
    return got.length === want.length && timingSafeEqual(got, want);
  }
}
