// Answers of a misbehaving upstream: a normal answer with text planted in it (embed). It works on a copy: the
// stored predictions never change.
import { isPlainObject } from './protocol.js';

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
