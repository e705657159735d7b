// Uploaded files (POST /replicate/v1/files): held by the gateway for their tenant until they expire, never sent to
// the upstream's own files API (on the shared key its list would show every team's files).

export interface FileMeta {
  id: string;
  tenant: string;
  /** The credential that uploaded it: 'key', or a browser token's jti (a token sees only its own uploads). */
  uploader: string;
  name: string;
  contentType: string;
  size: number;
  sha256: string;
  md5: string;
  metadata: Record<string, unknown>;
  /** Milliseconds since the epoch. */
  createdAt: number;
  expiresAt: number;
}

export interface FilePage {
  files: FileMeta[];
  hasMore: boolean;
}

export interface FileStore {
  /**
   * Stores the file unless the tenant's live files would then exceed `quotaBytes`; checked and written in one step,
   * so parallel uploads through any number of replicas cannot overshoot. Returns the bytes in use when refused.
   */
  put(meta: FileMeta, bytes: Buffer, quotaBytes: number): Promise<{ stored: true } | { stored: false; usedBytes: number }>;
  meta(id: string): Promise<FileMeta | null>;
  content(id: string): Promise<{ meta: FileMeta; bytes: Buffer } | null>;
  /** Deletes the file if the tenant has it; false when it does not (or no longer) exist for that tenant. */
  delete(id: string, tenant: string): Promise<boolean>;
  /** The tenant's live files, newest first; `before`: created strictly before this time (the next page). */
  list(tenant: string, q: { limit: number; before?: number }): Promise<FilePage>;
}
