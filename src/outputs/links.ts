// The addresses of kept outputs. Stored bodies hold them relative (`/gateway/v1/outputs/{prediction}/{n}`): the
// gateway's external address is known only per request (PUBLIC_BASE_URL, or the request's host), so each rendering
// puts its own base in front. Signed, expiring links let an <img> or <video> tag, which sends no Authorization
// header, load one output: HMAC-SHA256 over the output and the expiry, compared in constant time.
import { createHmac, timingSafeEqual } from 'node:crypto';

export const OUTPUTS_PATH = '/gateway/v1/outputs';

export const outputPath = (prediction: string, n: number) => `${OUTPUTS_PATH}/${prediction}/${n}`;

/**
 * A rendered prediction (JSON) with its kept outputs' relative links made absolute under `base`. Only strings that
 * start with this prediction's own output path are touched (no input can hold them: the id did not exist yet).
 */
export function withOutputLinks(json: string, raw: string, id: string, base: string): string {
  const mark = `"${OUTPUTS_PATH}/${id}/`;
  if (!raw.includes(mark)) return json;
  // The base may come from a Host header: escaped as JSON string content, whatever it holds.
  return json.replaceAll(mark, `"${JSON.stringify(base).slice(1, -1)}${OUTPUTS_PATH}/${id}/`);
}

export class OutputLinkSigner {
  readonly #secret: string;
  constructor(secret: string) {
    this.#secret = secret;
  }

  #mac(prediction: string, n: number, expires: number): string {
    // "output:" keeps these apart from file links signed with the same secret.
    return createHmac('sha256', this.#secret).update(`output:${prediction}:${n}:${expires}`).digest('base64url');
  }

  /** A link under `base` that serves the output until `expiresAt` (ms). */
  url(base: string, prediction: string, n: number, expiresAt: number): string {
    const expires = Math.floor(expiresAt / 1000);
    return `${base}${outputPath(prediction, n)}/content?expires=${expires}&signature=${this.#mac(prediction, n, expires)}`;
  }

  verify(prediction: string, n: number, expires: string | undefined, signature: string | undefined): boolean {
    if (!expires || !signature || !/^\d{1,12}$/.test(expires)) return false;
    const exp = Number(expires);
    if (exp * 1000 <= Date.now()) return false;
    const want = Buffer.from(this.#mac(prediction, n, exp));
    const got = Buffer.from(signature);
    return got.length === want.length && timingSafeEqual(got, want);
  }
}
