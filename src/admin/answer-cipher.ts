// A rotation's answer holds the new secret. So that a client whose answer was lost can ask again (same
// Idempotency-Key) and get the same secret, the answer is kept for IDEMPOTENCY_TTL_SECONDS, encrypted with
// AES-256-GCM under a key derived from ADMIN_API_KEY: the store alone (a dump, a replica) never reveals it.
// Changing ADMIN_API_KEY makes the kept answers unreadable (a repeat then gets 409 and must rotate again).
import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from 'node:crypto';

export class AnswerCipher {
  readonly #key: Buffer;
  constructor(secret: string) {
    this.#key = Buffer.from(hkdfSync('sha256', secret, 'fuhu-gateway', 'rotation answers v1', 32));
  }

  /** `aad` binds the text to its place (the key id and request), so a stored answer cannot be replayed elsewhere. */
  seal(plain: string, aad: string): string {
    const iv = randomBytes(12);
    const c = createCipheriv('aes-256-gcm', this.#key, iv).setAAD(Buffer.from(aad));
    const body = Buffer.concat([c.update(plain, 'utf8'), c.final()]);
    return `v1.${iv.toString('base64url')}.${c.getAuthTag().toString('base64url')}.${body.toString('base64url')}`;
  }

  /** The plain text, or undefined when it was sealed under another key or changed. */
  open(sealed: string, aad: string): string | undefined {
    const [v, iv, tag, body] = sealed.split('.');
    if (v !== 'v1' || !iv || !tag || body === undefined) return undefined;
    try {
      const d = createDecipheriv('aes-256-gcm', this.#key, Buffer.from(iv, 'base64url')).setAAD(Buffer.from(aad));
      d.setAuthTag(Buffer.from(tag, 'base64url'));
      return Buffer.concat([d.update(Buffer.from(body, 'base64url')), d.final()]).toString('utf8');
    } catch {
      return undefined;
    }
  }
}
