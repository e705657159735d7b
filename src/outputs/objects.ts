// Where kept outputs' bytes live: a folder (a volume) or an S3-compatible bucket, behind one small contract. Bytes
// always arrive and leave as streams: an output may be a video far larger than a process should hold.
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Config, OutputsTarget } from '../config.js';

/** Bytes `start` to `end`, both included (as in HTTP Range). */
export interface ByteRange {
  start: number;
  end: number;
}

export interface OutputObjects {
  readonly kind: 'file' | 's3';
  /** Stores the stream under `key`; the stream's own error (too big, cut off) fails it and leaves nothing. */
  put(key: string, body: Readable, contentType: string): Promise<void>;
  /** The bytes (or a range of them); null when the object is not there. */
  get(key: string, range?: ByteRange): Promise<Readable | null>;
  delete(key: string): Promise<void>;
  close(): Promise<void>;
}

/** Keys are `<tenant>/<prediction>/<n>`: ids the gateway checked (letters, digits, `.`, `_`, `-`), never `..`. */
export const objectKey = (tenant: string, prediction: string, n: number) => `${tenant}/${prediction}/${n}`;

export class FileObjects implements OutputObjects {
  readonly kind = 'file' as const;
  readonly #dir: string;

  constructor(dir: string) {
    this.#dir = dir;
  }

  #path(key: string): string {
    if (key.split('/').some((part) => part === '' || part === '.' || part === '..')) throw new Error(`not an object key: ${key}`);
    return join(this.#dir, key);
  }

  async put(key: string, body: Readable, _contentType: string): Promise<void> {
    const path = this.#path(key);
    await mkdir(dirname(path), { recursive: true });
    // Written aside and renamed: a reader never sees half a file, and a failed copy leaves only a part to remove.
    const part = `${path}.part-${process.pid}-${Date.now()}`;
    try {
      await pipeline(body, createWriteStream(part, { flags: 'wx' }));
      await rename(part, path);
    } catch (err) {
      await rm(part, { force: true });
      throw err;
    }
  }

  async get(key: string, range?: ByteRange): Promise<Readable | null> {
    const path = this.#path(key);
    try {
      await stat(path);
    } catch {
      return null;
    }
    return createReadStream(path, range ? { start: range.start, end: range.end } : {});
  }

  async delete(key: string): Promise<void> {
    await rm(this.#path(key), { force: true });
  }

  async close(): Promise<void> {}
}

/** The store OUTPUTS_STORE names; S3 is loaded only when chosen (its SDK is large). */
export async function openOutputObjects(target: OutputsTarget, config: Config): Promise<OutputObjects> {
  if (target.kind === 'file') {
    await mkdir(target.dir, { recursive: true });
    return new FileObjects(target.dir);
  }
  const { S3Objects } = await import('./s3-objects.js');
  return new S3Objects(target, config);
}
