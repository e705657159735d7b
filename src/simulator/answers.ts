// Answers of a misbehaving upstream: a normal answer with text planted in it (embed), and a huge prediction body
// streamed in chunks (hugeBody). Both work on copies: the stored predictions never change.
import { Readable } from 'node:stream';
import { isPlainObject } from './protocol.js';
import type { Prediction } from './predictions.js';

export type EmbedField = 'logs' | 'error' | 'output' | 'urls.stream' | 'urls.web';

export const DEFAULT_EMBED_FIELDS: readonly EmbedField[] = ['logs', 'error', 'urls.stream'];

function embedInPrediction(p: Record<string, unknown>, text: string, fields: readonly EmbedField[]): void {
  for (const field of fields) {
    switch (field) {
      case 'logs': {
        const logs = typeof p.logs === 'string' ? p.logs : '';
        p.logs = `${logs}${logs === '' || logs.endsWith('\n') ? '' : '\n'}upstream key: ${text}\n`;
        break;
      }
      case 'error':
        p.error = typeof p.error === 'string' && p.error !== '' ? `${p.error} (upstream key: ${text})` : `upstream key: ${text}`;
        break;
      case 'output': {
        const output = p.output;
        p.output = [...(Array.isArray(output) ? output : output == null ? [] : [output]), text];
        break;
      }
      case 'urls.stream':
      case 'urls.web': {
        const urls = isPlainObject(p.urls) ? p.urls : (p.urls = {});
        if (field === 'urls.stream') urls.stream = `https://stream.example/${text}`;
        else urls.web = `https://web.example/${text}`;
        break;
      }
    }
  }
}

function isPredictionLike(v: unknown): v is Record<string, unknown> {
  return isPlainObject(v) && typeof v.id === 'string' && typeof v.status === 'string';
}

/**
 * The serialized answer with `text` written into `fields` of the prediction it carries (or of every prediction of a
 * list page). Anything else (an error body, non-JSON) comes back unchanged: there is no prediction to plant it in.
 */
export function embedInAnswer(payload: string, text: string, fields: readonly EmbedField[]): string {
  let body: unknown;
  try {
    body = JSON.parse(payload);
  } catch {
    return payload;
  }
  if (isPredictionLike(body)) {
    embedInPrediction(body, text, fields);
  } else if (isPlainObject(body) && Array.isArray(body.results)) {
    for (const p of body.results) if (isPredictionLike(p)) embedInPrediction(p, text, fields);
  } else {
    return payload;
  }
  return JSON.stringify(body);
}

export const HUGE_BODY_CHUNK_BYTES = 64 * 1024;
// Plain ASCII without quotes or backslashes, so any prefix of it is valid inside a JSON string.
const PAD_CHUNK = Buffer.alloc(HUGE_BODY_CHUNK_BYTES, 'simulated upstream log line; ');

/**
 * A prediction as JSON of at least `bytes` bytes, its logs padded, produced chunk by chunk as the socket drains:
 * one shared 64 KiB pad buffer is pushed again and again, so 100 MB costs the simulator no more than a few chunks.
 * The exact length is known up front for content-length. A client leaving mid-body destroys the stream (Fastify
 * does that when the response closes); there are no timers to leak.
 */
export class HugePredictionBody extends Readable {
  readonly length: number;
  private readonly head: Buffer;
  private readonly tail = Buffer.from('"}');
  private padLeft: number;
  private stage: 'head' | 'pad' | 'done' = 'head';

  constructor(p: Prediction, bytes: number) {
    super();
    const { logs, ...rest } = p;
    const open = JSON.stringify(rest);
    // `{...rest,"logs":"<logs>` then padding, then `"}`: the logs string is left open for the padding.
    const logsOpen = `"logs":${JSON.stringify(logs ?? '').slice(0, -1)}`;
    this.head = Buffer.from(open === '{}' ? `{${logsOpen}` : `${open.slice(0, -1)},${logsOpen}`);
    this.padLeft = Math.max(0, bytes - this.head.length - this.tail.length);
    this.length = this.head.length + this.padLeft + this.tail.length;
  }

  override _read(): void {
    for (;;) {
      let chunk: Buffer;
      if (this.stage === 'head') {
        chunk = this.head;
        this.stage = 'pad';
      } else if (this.padLeft > 0) {
        const n = Math.min(this.padLeft, PAD_CHUNK.length);
        chunk = n === PAD_CHUNK.length ? PAD_CHUNK : PAD_CHUNK.subarray(0, n);
        this.padLeft -= n;
      } else if (this.stage === 'pad') {
        chunk = this.tail;
        this.stage = 'done';
      } else {
        this.push(null);
        return;
      }
      if (!this.push(chunk)) return;
    }
  }
}
