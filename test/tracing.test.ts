// Where a request's time goes: OpenTelemetry traces sent to a local OTLP/HTTP receiver (a client's traceparent
// continued, a span per upstream attempt, the same trace id upstream), nothing upstream with tracing off, and
// Server-Timing on proxied answers, agreeing with the access log.
import { type Server, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KEY_A, MODEL_PATH, call, createPrediction, upstreamCalls, useGateway, useSimulator, waitFor } from './helpers/stack.js';

const s = useSimulator(100);

interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  kind: number;
  attributes: { key: string; value: Record<string, unknown> }[];
}

/** An OTLP/HTTP JSON receiver: every span it was sent, and the raw bodies. */
function otlpReceiver() {
  const spans: OtlpSpan[] = [];
  const bodies: string[] = [];
  const resources: Record<string, unknown>[] = [];
  let server: Server;
  let url = '';
  beforeAll(async () => {
    server = createServer((req, res) => {
      let body = '';
      req.on('data', (c) => (body += c));
      req.on('end', () => {
        if (req.method !== 'POST' || req.url !== '/v1/traces') {
          res.writeHead(404).end();
          return;
        }
        bodies.push(body);
        const parsed = JSON.parse(body) as { resourceSpans: { resource: { attributes: OtlpSpan['attributes'] }; scopeSpans: { spans: OtlpSpan[] }[] }[] };
        for (const rs of parsed.resourceSpans) {
          resources.push(attrs(rs.resource));
          for (const ss of rs.scopeSpans) spans.push(...ss.spans);
        }
        res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise<void>((r) => server.close(() => r())));
  return { spans, bodies, resources, url: () => url };
}

const attrs = (x: { attributes: OtlpSpan['attributes'] }): Record<string, unknown> =>
  Object.fromEntries(x.attributes.map((a) => [a.key, Object.values(a.value)[0]]));

const TRACE_ID = '4bf92f3577b34da6a3ce929d0e0e4736';
const CLIENT_SPAN = '00f067aa0ba902b7';
const TRACEPARENT = `00-${TRACE_ID}-${CLIENT_SPAN}-01`;

describe('tracing on (OTEL_EXPORTER_OTLP_ENDPOINT set)', () => {
  const otlp = otlpReceiver();
  const gw = useGateway(() => ({ sim: s, redis: 'memory', env: { OTEL_EXPORTER_OTLP_ENDPOINT: otlp.url(), OTEL_SERVICE_NAME: 'gw-under-test' } }));

  it('continues the client trace: a server span with tenant, route and prediction, a child span per upstream attempt, the same trace upstream', async () => {
    const r = await call(gw.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: { prompt: 'a trace' } }, headers: { traceparent: TRACEPARENT } });
    expect(r.status).toBe(201);
    await gw.app.tracing!.flush();
    await waitFor(() => otlp.spans.some((sp) => sp.traceId === TRACE_ID && sp.kind === 2), 3000, 'the server span');

    const server = otlp.spans.find((sp) => sp.traceId === TRACE_ID && sp.kind === 2)!;
    expect(server.parentSpanId).toBe(CLIENT_SPAN);
    expect(server.name).toBe('POST /replicate/v1/models/:owner/:name/predictions');
    expect(attrs(server)).toMatchObject({
      'fgw.tenant': 'team-a',
      'http.route': '/replicate/v1/models/:owner/:name/predictions',
      'http.request.method': 'POST',
      'http.response.status_code': 201,
      'fgw.prediction_id': r.body.id,
      'fgw.request_id': r.headers.get('x-request-id'),
    });
    const children = otlp.spans.filter((sp) => sp.parentSpanId === server.spanId);
    expect(children).toHaveLength(1);
    expect(children[0]!.kind).toBe(3); // CLIENT
    expect(children[0]!.traceId).toBe(TRACE_ID);
    expect(attrs(children[0]!)).toMatchObject({ 'http.request.method': 'POST', 'http.response.status_code': 201, 'http.request.resend_count': 0 });
    expect(otlp.resources.at(-1)).toMatchObject({ 'service.name': 'gw-under-test' });

    // The upstream got the attempt's own context, in the client's trace.
    const [create] = upstreamCalls(s.sim, /\/predictions$/);
    expect(create!.headers.traceparent).toBe(`00-${TRACE_ID}-${children[0]!.spanId}-01`);
    // Keys never reach the collector.
    for (const body of otlp.bodies) {
      expect(body).not.toContain(KEY_A);
      expect(body).not.toContain(s.apiKey);
    }
  });

  it('traces a request whose client says "not sampled", and forwards none of the client\'s tracestate', async () => {
    const traceId = 'cd'.repeat(16);
    s.sim.clearRequests();
    const r = await call(gw.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: { prompt: 'unsampled' } }, headers: { traceparent: `00-${traceId}-${CLIENT_SPAN}-00`, tracestate: 'vendor=secret-ish' } });
    expect(r.status).toBe(201);
    await gw.app.tracing!.flush();
    await waitFor(() => otlp.spans.some((sp) => sp.traceId === traceId && sp.kind === 2), 3000, 'the server span');
    const [create] = upstreamCalls(s.sim, /\/predictions$/);
    expect(create!.headers.traceparent).toMatch(new RegExp(`^00-${traceId}-[0-9a-f]{16}-01$`));
    expect(create!.headers.tracestate).toBeUndefined();
  });

  it('shows a retried upstream GET as two attempt spans, the failed one marked as an error', async () => {
    const id = await createPrediction(gw.url, KEY_A, { prompt: 'slow', duration_ms: 60_000 });
    s.sim.injectFault({ kind: 'status', status: 503 }, { match: (m) => m === 'GET' });
    const r = await call(gw.url, 'GET', `/replicate/v1/predictions/${id}`, { key: KEY_A, headers: { traceparent: `00-${'ab'.repeat(16)}-${CLIENT_SPAN}-01` } });
    expect(r.status).toBe(200);
    await gw.app.tracing!.flush();
    await waitFor(() => otlp.spans.some((sp) => sp.traceId === 'ab'.repeat(16) && sp.kind === 2), 3000, 'the GET span');
    const server = otlp.spans.find((sp) => sp.traceId === 'ab'.repeat(16) && sp.kind === 2)!;
    const attempts: Record<string, unknown>[] = otlp.spans
      .filter((sp) => sp.parentSpanId === server.spanId)
      .map((sp) => ({ ...attrs(sp), status: (sp as OtlpSpan & { status?: { code?: number } }).status?.code }));
    attempts.sort((x, y) => Number(x['http.request.resend_count']) - Number(y['http.request.resend_count']));
    expect(attempts).toMatchObject([
      { 'http.request.resend_count': 0, 'http.response.status_code': 503, 'error.type': '503', status: 2 },
      { 'http.request.resend_count': 1, 'http.response.status_code': 200 },
    ]);
    expect(attrs(server)).toMatchObject({ 'fgw.cache': 'MISS', 'fgw.prediction_id': id });
  });

  it('starts a new trace without a traceparent, and marks a cache hit on the request span', async () => {
    const id = await createPrediction(gw.url, KEY_A, { prompt: 'quick', duration_ms: 50 });
    await waitFor(async () => (await call(gw.url, 'GET', `/replicate/v1/predictions/${id}`, { key: KEY_A })).body.status === 'succeeded', 5000, 'the prediction to end');
    const hit = await call(gw.url, 'GET', `/replicate/v1/predictions/${id}`, { key: KEY_A });
    expect(hit.headers.get('x-cache')).toBe('HIT');
    await gw.app.tracing!.flush();
    const reqId = hit.headers.get('x-request-id');
    await waitFor(() => otlp.spans.some((sp) => attrs(sp)['fgw.request_id'] === reqId), 3000, 'the GET span');
    const span = otlp.spans.find((sp) => attrs(sp)['fgw.request_id'] === reqId)!;
    expect(span.parentSpanId ?? '').toBe('');
    expect(attrs(span)).toMatchObject({ 'fgw.cache': 'HIT', 'fgw.prediction_id': id, 'http.route': '/replicate/v1/predictions/:id' });
    // A hit makes no upstream call, so no child span.
    expect(otlp.spans.filter((sp) => sp.parentSpanId === span.spanId)).toHaveLength(0);
  });
});

describe('tracing off (the default)', () => {
  const gw = useGateway(() => ({ sim: s, redis: 'memory' }));

  it('loads no tracer and sends no traceparent upstream, even when the client sent one', async () => {
    expect(gw.app.tracing).toBeUndefined();
    const r = await call(gw.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: { prompt: 'untraced' } }, headers: { traceparent: TRACEPARENT, tracestate: 'x=1' } });
    expect(r.status).toBe(201);
    const [create] = upstreamCalls(s.sim, /\/predictions$/);
    expect(create!.headers.traceparent).toBeUndefined();
    expect(create!.headers.tracestate).toBeUndefined();
  });
});

describe('Server-Timing', () => {
  const gw = useGateway(() => ({ sim: s, redis: 'memory', tenants: [{ id: 'team-a', keys: [KEY_A], allowedOrigins: ['*'] }] }));

  const timing = (h: string | null) => {
    const out: Record<string, { dur?: number; desc?: string }> = {};
    for (const part of (h ?? '').split(/\s*,\s*/)) {
      const [name, ...params] = part.split(';');
      out[name!] = Object.fromEntries(params.map((p) => p.split('=')).map(([k, v]) => [k, k === 'dur' ? Number(v) : v]));
    }
    return out;
  };
  const accessLine = (reqId: string | null) =>
    gw.logs.map((l) => JSON.parse(l)).find((l) => l.reqId === reqId && l.msg === 'request completed');

  it('gives the gateway time and the upstream time of a create, the same figures as the access log', async () => {
    const r = await call(gw.url, 'POST', MODEL_PATH, { key: KEY_A, body: { input: { prompt: 'timed' } } });
    expect(r.status).toBe(201);
    const t = timing(r.headers.get('server-timing'));
    expect(t.gateway!.dur).toBeGreaterThan(0);
    expect(t.upstream!.dur).toBeGreaterThan(0);
    await waitFor(() => accessLine(r.headers.get('x-request-id')) !== undefined, 2000, 'the access line');
    const line = accessLine(r.headers.get('x-request-id'));
    expect(line.upstreamMs).toBe(t.upstream!.dur);
    expect(line.gatewayMs).toBe(t.gateway!.dur);
    // Measured as the answer is handed over; the access line's total comes once it is written, a little later.
    expect(t.gateway!.dur! + t.upstream!.dur!).toBeLessThanOrEqual(line.responseTime + 0.02);
  });

  it('has no upstream entry on a cache hit, says HIT, and is exposed to browsers; other routes have none', async () => {
    const id = await createPrediction(gw.url, KEY_A, { prompt: 'quick', duration_ms: 50 });
    await waitFor(async () => (await call(gw.url, 'GET', `/replicate/v1/predictions/${id}`, { key: KEY_A })).body.status === 'succeeded', 5000, 'the prediction to end');
    const hit = await call(gw.url, 'GET', `/replicate/v1/predictions/${id}`, { key: KEY_A, headers: { origin: 'https://any.example' } });
    const t = timing(hit.headers.get('server-timing'));
    expect(t.upstream).toBeUndefined();
    expect(t.cache).toEqual({ desc: 'HIT' });
    expect(t.gateway!.dur).toBeGreaterThanOrEqual(0);
    expect((hit.headers.get('access-control-expose-headers') ?? '').toLowerCase()).toContain('server-timing');
    await waitFor(() => accessLine(hit.headers.get('x-request-id')) !== undefined, 2000, 'the access line');
    expect(accessLine(hit.headers.get('x-request-id')).gatewayMs).toBe(t.gateway!.dur);

    const problem = await call(gw.url, 'GET', '/replicate/v1/predictions/nope', { key: KEY_A });
    expect(problem.status).toBe(404);
    expect(problem.headers.get('server-timing')).toMatch(/^gateway;dur=[\d.]+$/);

    const health = await call(gw.url, 'GET', '/healthz');
    expect(health.headers.get('server-timing')).toBeNull();
  });
});
