// Kept outputs in any S3-compatible store (AWS S3, Cloudflare R2, MinIO, Ceph) through @aws-sdk/client-s3.
import { DeleteObjectCommand, GetObjectCommand, NoSuchKey, S3Client, S3ServiceException } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import type { Readable } from 'node:stream';
import type { Config, OutputsTarget } from '../config.js';
import type { ByteRange, OutputObjects } from './objects.js';

export class S3Objects implements OutputObjects {
  readonly kind = 's3' as const;
  readonly #client: S3Client;
  readonly #bucket: string;
  readonly #prefix: string;

  constructor(target: Extract<OutputsTarget, { kind: 's3' }>, config: Config) {
    this.#bucket = target.bucket;
    this.#prefix = target.prefix;
    this.#client = new S3Client({
      region: config.S3_REGION,
      ...(config.S3_ENDPOINT ? { endpoint: config.S3_ENDPOINT } : {}),
      forcePathStyle: config.S3_FORCE_PATH_STYLE,
      // Without keys the SDK's own chain applies (an instance role, AWS_* variables, a profile).
      ...(config.S3_ACCESS_KEY_ID && config.S3_SECRET_ACCESS_KEY
        ? { credentials: { accessKeyId: config.S3_ACCESS_KEY_ID, secretAccessKey: config.S3_SECRET_ACCESS_KEY } }
        : {}),
      // The SDK's default since 2025 adds CRC32 checksums (and aws-chunked trailers) to every upload, which R2,
      // Ceph, older MinIO and most S3 look-alikes refuse: checksums only where an operation requires one.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    });
  }

  async put(key: string, body: Readable, contentType: string): Promise<void> {
    // A stream of unknown length: one PUT when it fits a 5 MiB part, else a multipart upload, a part at a time (the
    // most held is one part). A failure aborts the multipart upload, so no parts are left behind to pay for.
    const upload = new Upload({
      client: this.#client,
      params: { Bucket: this.#bucket, Key: this.#prefix + key, Body: body, ContentType: contentType },
      queueSize: 1,
      partSize: 5 * 1024 * 1024,
      leavePartsOnError: false,
    });
    await upload.done();
  }

  async get(key: string, range?: ByteRange): Promise<Readable | null> {
    try {
      const res = await this.#client.send(
        new GetObjectCommand({ Bucket: this.#bucket, Key: this.#prefix + key, ...(range ? { Range: `bytes=${range.start}-${range.end}` } : {}) }),
      );
      return res.Body as Readable;
    } catch (err) {
      if (err instanceof NoSuchKey || (err instanceof S3ServiceException && err.$metadata.httpStatusCode === 404)) return null;
      throw err;
    }
  }

  async delete(key: string): Promise<void> {
    await this.#client.send(new DeleteObjectCommand({ Bucket: this.#bucket, Key: this.#prefix + key }));
  }

  async close(): Promise<void> {
    this.#client.destroy();
  }
}
