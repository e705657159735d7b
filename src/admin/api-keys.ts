// The format of API-issued keys: `fgw_<id>_<secret><checksum>`. The id (12 of [a-z0-9]) names the key in logs,
// usage and metrics without its secret; the checksum (CRC-32 of everything before it, 6 base62 digits) lets a
// secret scanner tell a real key from a look-alike without asking us, as GitHub's and Stripe's keys do.
import { randomInt, timingSafeEqual } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { hashKey } from '../access/tenants.js';

const BASE62 = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';
const ID_ALPHABET = '0123456789abcdefghijklmnopqrstuvwxyz';
const SECRET_LENGTH = 32; // 62^32: about 190 bits
const KEY_FORMAT = /^fgw_([a-z0-9]{12})_([A-Za-z0-9]{32})([A-Za-z0-9]{6})$/;
export const KEY_ID_FORMAT = /^[a-z0-9]{12}$/;

function randomOf(alphabet: string, n: number): string {
  let out = '';
  for (let i = 0; i < n; i++) out += alphabet[randomInt(alphabet.length)];
  return out;
}

function checksum(body: string): string {
  let n = crc32(body);
  let out = '';
  for (let i = 0; i < 6; i++) {
    out = BASE62[n % 62]! + out;
    n = Math.floor(n / 62);
  }
  return out;
}

export function newKeyId(): string {
  return randomOf(ID_ALPHABET, 12);
}

/** A new secret for key `id`, and the hash that is all the store keeps of it. */
export function newApiKey(id: string): { key: string; hash: string } {
  // randomInt draws from the CSPRNG without modulo bias.
  const body = `fgw_${id}_${randomOf(BASE62, SECRET_LENGTH)}`;
  const key = body + checksum(body);
  return { key, hash: hashKey(key) };
}

/** The id of a well-formed key with a valid checksum; undefined for anything else (a file key, a typo, a token). */
export function keyIdOf(credential: string): string | undefined {
  const m = KEY_FORMAT.exec(credential);
  if (!m) return undefined;
  return checksum(`fgw_${m[1]}_${m[2]}`) === m[3] ? m[1] : undefined;
}

/** Compares two hex SHA-256 digests in constant time. */
export function sameHash(a: string, b: string): boolean {
  return a.length === b.length && timingSafeEqual(Buffer.from(a, 'hex'), Buffer.from(b, 'hex'));
}
