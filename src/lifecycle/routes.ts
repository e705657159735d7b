// GET /gateway/v1/predictions/{id}/events: a prediction's progress as server-sent events, for its owner (a key, or a
// token, which may come as `?token=` since EventSource sends no headers). One event per change: `status` with the
// prediction as the gateway renders it, `output` and `logs` when they changed, and `done` at the end, after which
// the stream closes. Each event's id is the prediction's version in the store, the same on every replica, so
// `Last-Event-ID` resumes without loss (a stream sends the latest state, which holds everything before it) or repeat.
import { randomUUID } from 'node:crypto';
import { normalizeIP } from '@fastify/rate-limit';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { GatewayError } from '../errors.js';
import { publicBase } from '../http/base.js';
import { parse } from '../http/validate.js';
import { IdParamsSchema } from '../predictions/schemas.js';
import { keys } from '../store/keys.js';
import type { PredictionStreams, StreamState } from './streams.js';

/** The browser's reconnect delay after a dropped stream. */
const RETRY_MS = 2000;
const KEEPALIVE_MS = 15_000;
/** A stream's slot lapses this long after its replica last refreshed it (a replica that died frees its slots). */
const SLOT_MS = 60_000;
const SLOT_REFRESH_MS = 20_000;

/** What a stream last sent, to send only what changed. */
interface Sent {
  version: number;
  status?: unknown;
  output?: string;
  logs?: number;
}

export async function streamRoutes(app: FastifyInstance, opts: { streams: PredictionStreams }): Promise<void> {
  const { config, store } = app;
  const { streams } = opts;
  /** Open streams of this process, to end them at shutdown and refresh their slots. */
  const open = new Map<string, { end: () => void; slots: [string, string][] }>();

  const refresher = setInterval(() => {
    const bySet = new Map<string, string[]>();
    for (const [member, s] of open) for (const [set] of s.slots) bySet.set(set, [...(bySet.get(set) ?? []), member]);
    for (const [set, members] of bySet) store.slotRefresh(set, members, Date.now() + SLOT_MS).catch(() => {});
  }, SLOT_REFRESH_MS);
  refresher.unref();
  // Streams never end by themselves while a prediction runs: end them first, so the server can close.
  app.addHook('preClose', async () => {
    clearInterval(refresher);
    for (const s of [...open.values()]) s.end();
    streams.close();
  });

  app.get('/predictions/:id/events', { config: { predictionScoped: true, queryToken: true } }, async (request: FastifyRequest, reply: FastifyReply) => {
    const { id } = parse(IdParamsSchema, request.params, 'path');
    const tenant = request.principal!.tenant;
    const owner = app.predictions.facts.owners.get(id) ?? (await store.lookup(id)).owner;
    if (owner !== tenant.id) throw new GatewayError('NOT_FOUND', `prediction ${id} was not found`);
    const first = await streams.read(id);
    if (!first) throw new GatewayError('NOT_FOUND', `prediction ${id} was not found`);

    // Bounds: open streams per tenant and per address, counted across replicas.
    const member = randomUUID();
    const now = Date.now();
    const sets: [string, number, string][] = [
      [keys.streams(tenant.id), config.MAX_STREAMS_PER_TENANT, `tenant ${tenant.id} has ${config.MAX_STREAMS_PER_TENANT} event streams open (MAX_STREAMS_PER_TENANT)`],
      [keys.streamsOfIp(normalizeIP(request.ip)), config.MAX_STREAMS_PER_IP, `this address has ${config.MAX_STREAMS_PER_IP} event streams open (MAX_STREAMS_PER_IP)`],
    ];
    const taken: [string, string][] = [];
    const releaseSlots = () => {
      for (const [set] of taken) store.slotRelease(set, member).catch(() => {});
    };
    for (const [set, max, why] of first.final ? [] : sets) {
      if (!(await store.slotAcquire(set, member, max, now, now + SLOT_MS))) {
        releaseSlots();
        app.metrics.rateLimited.inc({ tenant: tenant.id, limit: 'streams' });
        throw new GatewayError('RATE_LIMITED', `${why}; close one first`, { headers: { 'retry-after': '5' } });
      }
      taken.push([set, member]);
    }

    const base = publicBase(config, request);
    const lastEventId = Number(request.headers['last-event-id']);
    const sent: Sent = { version: Number.isFinite(lastEventId) ? lastEventId : -1 };
    const raw = reply.raw;
    // The hooks that would add these (CORS, request id) ran already; a hijacked reply sends what it is given.
    reply.hijack();
    raw.writeHead(200, {
      ...(reply.getHeaders() as Record<string, string>),
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache, no-transform',
      'x-accel-buffering': 'no',
      connection: 'keep-alive',
    });
    raw.write(`retry: ${RETRY_MS}\n\n`);

    let ended = false;
    let pending: StreamState | undefined;
    let stop: (() => void) | undefined;
    const timers: NodeJS.Timeout[] = [];
    const end = () => {
      if (ended) return;
      ended = true;
      for (const t of timers) clearInterval(t);
      stop?.();
      open.delete(member);
      releaseSlots();
      raw.end();
    };

    const done = (state: StreamState) => `id: ${state.version}\nevent: done\ndata: {"status":${JSON.stringify(String(state.body.prediction.status))}}\n\n`;
    /** Writes what changed since the last event; the end closes the stream. A full socket holds only the latest. */
    const send = (state: StreamState) => {
      if (ended) return;
      if (raw.writableNeedDrain) {
        pending = state;
        return;
      }
      if (state.version > sent.version) write(state);
      else if (state.final) {
        // Resumed after the last state was sent but not its `done`.
        raw.write(done(state));
        end();
      }
    };
    const write = (state: StreamState) => {
      const p = state.body.prediction;
      const idLine = `id: ${state.version}\n`;
      let out = '';
      if (sent.status === undefined || p.status !== sent.status || state.final) out += `${idLine}event: status\ndata: ${state.body.render(base)}\n\n`;
      const output = p.output === undefined || p.output === null ? undefined : JSON.stringify(p.output);
      if (output !== undefined && output !== sent.output) out += `${idLine}event: output\ndata: ${output}\n\n`;
      const logs = typeof p.logs === 'string' ? p.logs : '';
      if (logs.length > (sent.logs ?? 0)) out += `${idLine}event: logs\ndata: ${JSON.stringify(logs)}\n\n`;
      Object.assign(sent, { version: state.version, status: p.status, output, logs: logs.length });
      if (state.final) out += done(state);
      raw.write(out);
      if (state.final) end();
    };
    raw.on('drain', () => {
      const s = pending;
      pending = undefined;
      if (s) send(s);
    });
    raw.on('close', end);

    // A stream opened after the end gets the final state and `done` at once (a resumed one only `done`).
    if (first.final) return send(first);
    open.set(member, { end, slots: taken });
    stop = await streams.subscribe(id, send);
    if (ended) return stop();
    send(first);
    timers.push(setInterval(() => !ended && raw.write(': keep-alive\n\n'), KEEPALIVE_MS));
    // A stream lasts no longer than the gateway follows a prediction.
    const lifetime = setTimeout(end, config.PREDICTION_MAX_OPEN_SECONDS * 1000);
    lifetime.unref();
    timers.push(lifetime);
  });
}
