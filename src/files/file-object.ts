// The Replicate file object, as the clients read it: `urls.get` points at this gateway, which is what a client puts
// in a prediction's input (src/files/inline.ts replaces it before the input goes upstream).
import type { FileMeta } from '../store/file-store.js';
import type { Principal } from '../types.js';

/** Replicate-style file ids: URL-safe, unguessable. */
export const FILE_ID = /^[A-Za-z0-9_-]{16,64}$/;

export const fileUrl = (base: string, id: string) => `${base}/replicate/v1/files/${id}`;

/** Who may read, use or delete a file: its tenant, and of a browser token only the uploads it made itself. */
export function mayUse(principal: Principal, meta: FileMeta): boolean {
  return meta.tenant === principal.tenant.id && (principal.token === undefined || meta.uploader === principal.token.jti);
}

export const uploaderOf = (principal: Principal) => principal.token?.jti ?? 'key';

export function fileObject(meta: FileMeta, base: string) {
  return {
    id: meta.id,
    name: meta.name,
    content_type: meta.contentType,
    size: meta.size,
    etag: meta.md5,
    checksums: { sha256: meta.sha256, md5: meta.md5 },
    metadata: meta.metadata,
    created_at: new Date(meta.createdAt).toISOString(),
    expires_at: new Date(meta.expiresAt).toISOString(),
    urls: { get: fileUrl(base, meta.id) },
  };
}
