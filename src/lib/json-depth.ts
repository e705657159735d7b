// How deeply a JSON text nests, found by one scan of its characters: cheap, and safe on inputs whose parsed form
// would overflow the stack of anything that walks it recursively (JSON.stringify, zod, a fingerprint).

/** True when the text nests objects and arrays deeper than `max` (strings are skipped correctly). */
export function deeperThan(text: string, max: number): boolean {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 92 /* \ */) i++;
      else if (c === 34 /* " */) inString = false;
    } else if (c === 34) inString = true;
    else if (c === 123 /* { */ || c === 91 /* [ */) {
      if (++depth > max) return true;
    } else if (c === 125 /* } */ || c === 93 /* ] */) depth--;
  }
  return false;
}
