// Records API requests (method, url, headers, parsed body) for tests to assert on, bounded for long benchmarks.
import type { IncomingMessage } from 'node:http';
import type { FastifyRequest } from 'fastify';
import { SIM_PREFIX } from './protocol.js';

export interface RecordedRequest {
  method: string;
  url: string;
  headers: Record<string, string | string[] | undefined>;
  body: unknown;
}

export class RequestRecorder {
  /** The live array behind `sim.requests`: cleared in place so a test's reference stays valid. */
  readonly requests: RecordedRequest[] = [];
  private readonly records = new WeakMap<IncomingMessage, RecordedRequest>();

  /** `max` 0 disables recording; when full, the oldest half is dropped. */
  constructor(private readonly max: number) {}

  /** onRequest: the record exists before any fault can end the request, so hung and reset requests are recorded too. */
  start(request: FastifyRequest): void {
    const max = this.max;
    if (max <= 0 || !request.url.startsWith(SIM_PREFIX)) return;
    const rec: RecordedRequest = { method: request.method, url: request.url, headers: { ...request.headers }, body: undefined };
    const requests = this.requests;
    if (requests.length >= max) requests.splice(0, Math.max(1, max >> 1));
    requests.push(rec);
    this.records.set(request.raw, rec);
  }

  /** preHandler: the body is parsed only now. */
  attachBody(request: FastifyRequest): void {
    const rec = this.records.get(request.raw);
    if (rec !== undefined) rec.body = request.body;
  }

  clear(): void {
    this.requests.length = 0;
  }
}
