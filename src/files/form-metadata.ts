// Upload metadata sent as form fields: Replicate's new SDK (like every Stainless-generated client) sends an object as
// one field per leaf, `metadata[key]`, `metadata[a][b]`, and arrays as repeated `metadata[list][]`. Values arrive as
// strings (the form keeps no types). Bounded in bytes and depth like a JSON body, and immune to `__proto__` keys.
import { GatewayError } from '../errors.js';

const FIELD = /^metadata((?:\[[^[\]]*\])+)$/;

export const isMetadataField = (name: string) => name.startsWith('metadata[');

export class FormMetadata {
  readonly #root: Record<string, unknown> = {};
  #bytes = 0;
  #fields = 0;

  constructor(
    readonly maxBytes: number,
    /** JSON_MAX_DEPTH: a field may not nest deeper than a JSON body may. */
    readonly maxDepth: number,
  ) {}

  get empty(): boolean {
    return this.#fields === 0;
  }

  add(name: string, value: string): void {
    this.#bytes += Buffer.byteLength(name) + Buffer.byteLength(value);
    if (this.#bytes > this.maxBytes) throw new GatewayError('VALIDATION', `metadata must be at most ${this.maxBytes} bytes`);
    const m = FIELD.exec(name);
    if (!m) throw new GatewayError('VALIDATION', `form field ${name.slice(0, 100)} is not metadata[key]`);
    const path = m[1]!.slice(1, -1).split('][');
    if (path.length > this.maxDepth) throw new GatewayError('VALIDATION', `metadata nests deeper than JSON_MAX_DEPTH (${this.maxDepth}) levels`);
    if (path[0] === '') throw new GatewayError('VALIDATION', 'metadata must be an object: metadata[] has no key');
    this.#fields++;
    let node: Record<string, unknown> | unknown[] = this.#root;
    path.forEach((key, i) => {
      const last = i === path.length - 1;
      // What this step holds: the value, or a container shaped by the next step ("[]": an array, else an object).
      const make = () => (last ? value : path[i + 1] === '' ? [] : {});
      const conflict = () => new GatewayError('VALIDATION', `metadata field ${name.slice(0, 100)} conflicts with another metadata field`);
      if (Array.isArray(node)) {
        if (key !== '') throw conflict();
        // metadata[list][] appends; metadata[list][][k] adds an object per field (the form cannot group them).
        const made = make();
        node.push(made);
        node = made as typeof node;
        return;
      }
      if (key === '') throw conflict();
      const existing = Object.hasOwn(node, key) ? node[key] : undefined;
      if (existing === undefined) {
        const made = make();
        // defineProperty: a key named __proto__ stays a plain key, never the object's prototype.
        Object.defineProperty(node, key, { value: made, enumerable: true, writable: true, configurable: true });
        node = made as typeof node;
      } else if (last || typeof existing !== 'object' || Array.isArray(existing) !== (path[i + 1] === '')) throw conflict();
      else node = existing as typeof node;
    });
  }

  /** The object, merged over `base` (a JSON `metadata` field, if the client sent one too). */
  merged(base: Record<string, unknown>): Record<string, unknown> {
    return { ...base, ...this.#root };
  }
}
