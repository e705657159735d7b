// Finding the files in a prediction's output: every string that is an http(s) URL or a data: URI, wherever it sits
// (the output itself, an array of them, an object of arrays...), numbered depth first, so the copy and the rewrite
// agree on which is which. An output already kept (its gateway path) keeps its number too.
import { OUTPUTS_PATH } from './links.js';

/** Longest string taken for a URL: a model's text output may start with "https://" and go on for pages. */
const MAX_URL_LENGTH = 8192;

/** An output file: a URL or a data: URI, with no whitespace (text that merely starts with a URL is not one). */
export function isOutputRef(s: string): boolean {
  if (s.startsWith('data:')) return /^data:[^,\s]*,\S*$/.test(s.slice(0, 256)) && !/\s/.test(s);
  if (s.length > MAX_URL_LENGTH || !/^https?:\/\/\S+$/i.test(s)) return false;
  return URL.canParse(s);
}

/**
 * The output with each file reference replaced by what `replace` answers for it (its number and the reference), or
 * kept when it answers undefined. Visits in the same order every time: arrays by index, objects by key order.
 */
export function mapRefs(output: unknown, replace: (n: number, ref: string) => string | undefined): unknown {
  let n = 0;
  const visit = (v: unknown, depth: number): unknown => {
    // Stored bodies are already held to JSON_MAX_DEPTH; this only keeps a bug from becoming a stack overflow.
    if (depth > 256) return v;
    if (typeof v === 'string') return isOutputRef(v) || v.startsWith(`${OUTPUTS_PATH}/`) ? (replace(n++, v) ?? v) : v;
    if (Array.isArray(v)) return v.map((x) => visit(x, depth + 1));
    if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, visit(x, depth + 1)]));
    return v;
  };
  return visit(output, 0);
}

/** Every file reference of the output, in the numbering of mapRefs. */
export function outputRefs(output: unknown): string[] {
  const refs: string[] = [];
  mapRefs(output, (_n, ref) => {
    refs.push(ref);
    return undefined;
  });
  return refs;
}
