// On create: an input value that is one of the caller's gateway file URLs is replaced before the body goes
// upstream (the upstream cannot read the gateway's files with its own key, and must never see another tenant's).
import type { Config } from '../config.js';
import { GatewayError } from '../errors.js';
import type { FileStore } from '../store/file-store.js';
import type { Principal } from '../types.js';
import { FILE_ID, mayUse } from './file-object.js';
import type { FileUrlSigner } from './signed-urls.js';

export interface InlineDeps {
  config: Pick<Config, 'FILES_DELIVERY' | 'FILES_MAX_BYTES' | 'FILES_URL_TTL_SECONDS' | 'PUBLIC_BASE_URL' | 'UPSTREAM_MAX_BODY_BYTES'>;
  files: FileStore;
  signer: FileUrlSigner | undefined;
}

const MARK = '/replicate/v1/files/';
/** Room left in UPSTREAM_MAX_BODY_BYTES for the rest of the prediction the upstream echoes around its input. */
const ECHO_MARGIN = 64 * 1024;

/** Every string in the input that is a gateway file URL under one of `bases`: its file id, and how often it occurs. */
function fileUrlsIn(input: unknown, bases: readonly string[], found = new Map<string, { id: string; count: number }>()): Map<string, { id: string; count: number }> {
  if (typeof input === 'string') {
    // Only a string long enough to be `<base>/replicate/v1/files/<id>` is searched.
    const at = input.length > MARK.length ? input.indexOf(MARK) : -1;
    if (at > 0 && bases.includes(input.slice(0, at))) {
      const id = input.slice(at + MARK.length);
      if (FILE_ID.test(id)) {
        const seen = found.get(input);
        if (seen) seen.count++;
        else found.set(input, { id, count: 1 });
      }
    }
  } else if (Array.isArray(input)) {
    for (const v of input) fileUrlsIn(v, bases, found);
  } else if (input && typeof input === 'object') {
    for (const v of Object.values(input)) fileUrlsIn(v, bases, found);
  }
  return found;
}

function replaceDeep(value: unknown, map: Map<string, string>): unknown {
  if (typeof value === 'string') return map.get(value) ?? value;
  if (Array.isArray(value)) return value.map((v) => replaceDeep(v, map));
  if (value && typeof value === 'object') return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, replaceDeep(v, map)]));
  return value;
}

/**
 * The body to send upstream: `raw` itself unless its input names gateway files, which become data: URIs or signed
 * URLs. Unknown, expired and other tenants' files are one 422 (no way to tell them apart from outside).
 */
export async function inlineFiles(deps: InlineDeps, principal: Principal, bases: readonly string[], raw: string, parsed: { input?: unknown }): Promise<string> {
  // One walk over the parsed input finds every file URL, however the client escaped it in JSON; the raw text is
  // not scanned at all (it was three substring scans before the walk).
  const urls = fileUrlsIn(parsed.input, bases);
  if (urls.size === 0) return raw;
  const { config } = deps;

  const metas = new Map<string, Awaited<ReturnType<FileStore['meta']>>>();
  for (const { id } of urls.values()) {
    if (metas.has(id)) continue;
    const meta = await deps.files.meta(id);
    if (!meta || !mayUse(principal, meta)) {
      throw new GatewayError('VALIDATION', `the input names the file ${id}, which does not exist, has expired, or is not yours; upload it with POST /replicate/v1/files and use its urls.get`);
    }
    metas.set(id, meta);
  }

  const replacement = new Map<string, string>();
  if (config.FILES_DELIVERY === 'url') {
    const until = Date.now() + config.FILES_URL_TTL_SECONDS * 1000;
    for (const [url, { id }] of urls) replacement.set(url, deps.signer!.url(config.PUBLIC_BASE_URL!, id, Math.min(until, metas.get(id)!.expiresAt)));
  } else {
    // Every occurrence is a copy: a file named 30 times is inlined 30 times. Checked before any byte is read.
    const total = [...urls.values()].reduce((n, u) => n + metas.get(u.id)!.size * u.count, 0);
    if (total > config.FILES_MAX_BYTES) {
      throw new GatewayError('PAYLOAD_TOO_LARGE', `the files in this input add up to ${total} bytes; sent inline as data: URIs they may add up to FILES_MAX_BYTES (${config.FILES_MAX_BYTES}) at most (FILES_DELIVERY=url sends links instead)`);
    }
    const estimate = raw.length + [...urls.values()].reduce((n, u) => n + (Math.ceil((metas.get(u.id)!.size * 4) / 3) + 100) * u.count, 0);
    if (estimate + ECHO_MARGIN > config.UPSTREAM_MAX_BODY_BYTES) {
      throw new GatewayError('PAYLOAD_TOO_LARGE', `with its files inlined this create would be about ${estimate} bytes, more than the upstream answer may be (UPSTREAM_MAX_BODY_BYTES ${config.UPSTREAM_MAX_BODY_BYTES}, since a prediction echoes its input)`);
    }
    const dataUris = new Map<string, string>();
    for (const id of metas.keys()) {
      const file = await deps.files.content(id);
      if (!file) throw new GatewayError('VALIDATION', `the input names the file ${id}, which has just expired or been deleted; upload it again`);
      dataUris.set(id, `data:${file.meta.contentType};base64,${file.bytes.toString('base64')}`);
    }
    for (const [url, { id }] of urls) replacement.set(url, dataUris.get(id)!);
  }

  // Replace the JSON string literals in the raw text, so every other byte the client sent goes upstream as it was
  // (numbers beyond double precision included); a URL written with escapes falls back to re-serialising.
  let out = raw;
  let exact = true;
  for (const [url, value] of replacement) {
    const literal = JSON.stringify(url);
    if (!out.includes(literal)) exact = false;
    else out = out.split(literal).join(JSON.stringify(value));
  }
  if (!exact) out = JSON.stringify({ ...parsed, input: replaceDeep(parsed.input, replacement) });
  const bytes = Buffer.byteLength(out);
  if (bytes + ECHO_MARGIN > config.UPSTREAM_MAX_BODY_BYTES) {
    throw new GatewayError('PAYLOAD_TOO_LARGE', `with its files inlined this create would be ${bytes} bytes, more than the upstream answer may be (UPSTREAM_MAX_BODY_BYTES ${config.UPSTREAM_MAX_BODY_BYTES}, since a prediction echoes its input)`);
  }
  return out;
}
