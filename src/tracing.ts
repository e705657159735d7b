// OpenTelemetry traces, loaded only when OTEL_EXPORTER_OTLP_ENDPOINT is set (app.ts imports this file on demand, so
// with tracing off not even the SDK is loaded): a server span per request, continuing a client's `traceparent`, and
// a client span per upstream attempt whose context goes upstream as `traceparent`/`tracestate`.
//
// The provider belongs to the app, not the process: nothing is registered globally (several apps share a test
// process), and parents are passed explicitly (request → use case → upstream client) instead of through an
// AsyncLocalStorage context manager, which would cost every request of every app an async-context switch.
import {
  type Context,
  ROOT_CONTEXT,
  type Span,
  SpanKind,
  SpanStatusCode,
  type Tracer,
  defaultTextMapGetter,
  defaultTextMapSetter,
  trace,
} from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { AlwaysOnSampler, BatchSpanProcessor, ParentBasedSampler, TracerProvider } from '@opentelemetry/sdk-trace';
import {
  ATTR_ERROR_TYPE,
  ATTR_HTTP_REQUEST_METHOD,
  ATTR_HTTP_REQUEST_RESEND_COUNT,
  ATTR_HTTP_RESPONSE_STATUS_CODE,
  ATTR_HTTP_ROUTE,
  ATTR_SERVER_ADDRESS,
  ATTR_SERVICE_NAME,
  ATTR_URL_PATH,
} from '@opentelemetry/semantic-conventions';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Config } from './config.js';
import type { UpstreamTracing } from './upstream/client.js';

/** What the rest of the app sees of tracing (app.tracing); undefined while it is off. */
export interface Tracing extends UpstreamTracing {
  /** Sends what is buffered now (tests; shutdown does it too). */
  flush(): Promise<void>;
  shutdown(): Promise<void>;
}

const propagator = new W3CTraceContextPropagator();

class OtelTracing implements Tracing {
  readonly #provider: TracerProvider;
  readonly tracer: Tracer;

  constructor(config: Config) {
    // OTEL_EXPORTER_OTLP_ENDPOINT is the collector's base: the traces path is appended, as the OTLP spec says.
    const url = `${config.OTEL_EXPORTER_OTLP_ENDPOINT!.replace(/\/+$/, '')}/v1/traces`;
    this.#provider = new TracerProvider({
      // The operator decides what is traced, not the client: a client's "not sampled" flag does not switch it off.
      sampler: new ParentBasedSampler({ root: new AlwaysOnSampler(), remoteParentNotSampled: new AlwaysOnSampler() }),
      resource: resourceFromAttributes({ [ATTR_SERVICE_NAME]: config.OTEL_SERVICE_NAME }),
      spanProcessors: [new BatchSpanProcessor({ exporter: new OTLPTraceExporter({ url }), scheduledDelayMillis: 1000 })],
    });
    this.tracer = this.#provider.getTracer('fuhu-gateway');
  }

  attempt(parent: unknown, info: { method: string; path: string; host: string; attempt: number }, headers: Record<string, string>) {
    const span = this.tracer.startSpan(
      `upstream ${info.method}`,
      {
        kind: SpanKind.CLIENT,
        attributes: { [ATTR_HTTP_REQUEST_METHOD]: info.method, [ATTR_URL_PATH]: info.path, [ATTR_SERVER_ADDRESS]: info.host, [ATTR_HTTP_REQUEST_RESEND_COUNT]: info.attempt - 1 },
      },
      parent as Context,
    );
    propagator.inject(trace.setSpan(parent as Context, span), headers, defaultTextMapSetter);
    // Only the trace's ids go upstream, not a client's vendor state (its tracestate).
    delete headers.tracestate;
    return (status: number | undefined, error?: unknown) => {
      if (status !== undefined) span.setAttribute(ATTR_HTTP_RESPONSE_STATUS_CODE, status);
      if (error !== undefined || (status !== undefined && status >= 500)) {
        const type = error === undefined ? String(status) : ((error as { code?: string }).code ?? (error as Error).name ?? 'error');
        span.setAttribute(ATTR_ERROR_TYPE, type);
        span.setStatus({ code: SpanStatusCode.ERROR, message: type });
      }
      span.end();
    };
  }

  flush() {
    return this.#provider.forceFlush();
  }

  shutdown() {
    return this.#provider.shutdown();
  }
}

declare module 'fastify' {
  interface FastifyRequest {
    /** The request's server span, while tracing is on. */
    span: Span | undefined;
  }
}

/** Sets up tracing for this app, with the hooks of the request spans; the provider is flushed and shut on close. */
export function startTracing(app: FastifyInstance, config: Config): Tracing {
  const tracing = new OtelTracing(config);
  const { tracer } = tracing;
  app.decorateRequest('span', undefined);
  app.decorateRequest('traceContext', undefined);
  app.addHook('onRequest', async (request) => {
    // A client's traceparent makes this span part of its trace; a malformed one is ignored.
    const parent = propagator.extract(ROOT_CONTEXT, request.headers, defaultTextMapGetter);
    const route = request.routeOptions.url;
    const span = tracer.startSpan(
      route ? `${request.method} ${route}` : request.method,
      { kind: SpanKind.SERVER, attributes: { [ATTR_HTTP_REQUEST_METHOD]: request.method, ...(route ? { [ATTR_HTTP_ROUTE]: route } : {}), 'fgw.request_id': request.id } },
      parent,
    );
    request.span = span;
    request.traceContext = trace.setSpan(parent, span);
  });
  const end = (request: FastifyRequest, reply: FastifyReply | undefined) => {
    const span = request.span;
    if (!span) return;
    request.span = undefined;
    const tenant = request.principal?.tenant.id;
    if (tenant) span.setAttribute('fgw.tenant', tenant);
    if (request.cacheResult) span.setAttribute('fgw.cache', request.cacheResult);
    const prediction = request.createdPrediction ?? (request.params as { id?: unknown } | undefined)?.id;
    if (typeof prediction === 'string') span.setAttribute('fgw.prediction_id', prediction);
    if (request.upstreamMs !== undefined) span.setAttribute('fgw.upstream_ms', Math.round(request.upstreamMs * 100) / 100);
    if (reply) {
      span.setAttribute(ATTR_HTTP_RESPONSE_STATUS_CODE, reply.statusCode);
      if (reply.statusCode >= 500) span.setStatus({ code: SpanStatusCode.ERROR, message: String(reply.statusCode) });
    } else {
      span.setStatus({ code: SpanStatusCode.ERROR, message: 'the client went away' });
    }
    span.end();
  };
  app.addHook('onResponse', async (request, reply) => end(request, reply));
  app.addHook('onRequestAbort', async (request) => end(request, undefined));
  app.addHook('onClose', async () => tracing.shutdown());
  return tracing;
}
