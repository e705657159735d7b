// How deeply a JSON text nests, found by one scan of its characters: cheap, and safe on inputs whose parsed form
// would overflow the stack of anything that walks it recursively (JSON.stringify, zod, a fingerprint).

/** True when the text nests objects and arrays deeper than `max` (strings are skipped correctly). */
export function deeperThan(text: string, max: number): boolean {
  // Every level takes an opening and a closing bracket: a short text cannot nest too deep (most creates and polls).
  if (text.length <= 2 * max) return false;
  let depth = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 34 /* " */) {
      // Strings are most of a body's bytes (prompts, logs, data: URIs): jump to the closing quote with indexOf,
      // which runs far faster than a loop over characters. A quote after an odd run of backslashes is escaped.
      for (;;) {
        const end = text.indexOf('"', i + 1);
        if (end < 0) return false; // unterminated: JSON.parse refuses it
        i = end;
        let slashes = 0;
        while (text.charCodeAt(end - 1 - slashes) === 92 /* \ */) slashes++;
        if (slashes % 2 === 0) break;
      }
    } else if (c === 123 /* { */ || c === 91 /* [ */) {
      if (++depth > max) return true;
    } else if (c === 125 /* } */ || c === 93 /* ] */) depth--;
  }
  return false;
}
