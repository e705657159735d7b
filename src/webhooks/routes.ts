// The tenant's side of webhooks (its signing secret, its last delivery failures) and the receiver the upstream
// calls in WEBHOOK_MODE=upstream. A receiver call is only a hint: the gateway re-reads the prediction itself.
import { randomBytes } from 'node:crypto';
import type { Readable } from 'node:stream';
import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import { GatewayError } from '../errors.js';
import { parse } from '../http/validate.js';
import { UpstreamSignature, drain } from './signature.js';

/** How long a receiver link and a seen upstream message id are remembered. */
const SEEN_MS = 10 * 60_000;
const TokenParams = z.object({ token: z.string().regex(/^[A-Za-z0-9_-]{32}$/, 'is not a receiver this gateway issued') });

export const receiverToken = () => randomBytes(24).toString('base64url');
export const receiverKey = (token: string) => `whr:${token}`;

export async function webhookRoutes(app: FastifyInstance): Promise<void> {
  const { webhooks } = app;

  // Shown once: whoever holds the tenant key can always rotate, but a leaked log of this call cannot be replayed.
  app.get('/webhooks/secret', { config: { keyOnly: true } }, async (request, reply) => {
    const tenant = request.principal!.tenant;
    if (tenant.webhookSecret) throw new GatewayError('CONFLICT', 'this tenant\'s webhook secret is set in the tenants file; ask the gateway\'s operator for it');
    const secret = await webhooks.revealSecret(tenant.id);
    if (!secret) throw new GatewayError('CONFLICT', 'the webhook secret was shown once already; POST /gateway/v1/webhooks/secret/rotate for a new one');
    return reply.header('cache-control', 'no-store').send({ key: secret });
  });

  app.post('/webhooks/secret/rotate', { config: { keyOnly: true } }, async (request, reply) => {
    const tenant = request.principal!.tenant;
    if (tenant.webhookSecret) throw new GatewayError('CONFLICT', 'this tenant\'s webhook secret is set in the tenants file; the operator rotates it there');
    const secret = await webhooks.rotateSecret(tenant.id);
    request.log.info({ tenant: tenant.id }, 'webhook secret rotated');
    return reply.header('cache-control', 'no-store').send({ key: secret });
  });

  app.get('/webhooks/deliveries', { config: { keyOnly: true } }, async (request) => {
    return { failures: await webhooks.failures(request.principal!.tenant.id) };
  });
}

/**
 * Outside auth: the upstream has no tenant key. Unknown links, bad signatures and replays change nothing, and all
 * that can be refused is refused before the body is read: the link, the declared length, the signature headers.
 */
export async function webhookReceiverRoutes(app: FastifyInstance): Promise<void> {
  const { config, kv, webhooks, store, upstreams } = app;
  // Each account signs with its own secret (UPSTREAMS_FILE webhookSecret, else UPSTREAM_WEBHOOK_SECRET): a call about
  // a prediction is verified with the secret of the account it is pinned to, so one account cannot speak for another.
  const signatures = new Map<string, UpstreamSignature>();
  const signatureFor = (secret: string | undefined) => {
    if (!secret) return undefined;
    let s = signatures.get(secret);
    if (!s) signatures.set(secret, (s = new UpstreamSignature(secret)));
    return s;
  };
  // A webhook's body is the prediction, as large as an upstream answer may be (it echoes the input, inlined files
  // too); it is never used, only verified. So it is not parsed or kept: the handler gets the stream and reads it
  // through the HMAC once the headers have passed.
  const maxBytes = config.UPSTREAM_MAX_BODY_BYTES;
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (_request, payload, done) => done(null, payload));
  // Refusals close the connection, so that Node does not read the rest of a body nobody asked for.
  const refuse = (code: 'NOT_FOUND' | 'PAYLOAD_TOO_LARGE', detail: string) => new GatewayError(code, detail, { headers: { connection: 'close' } });

  app.post('/gateway/v1/webhooks/upstream/:token', async (request, reply) => {
    const { token } = parse(TokenParams, request.params, 'path');
    if (Number(request.headers['content-length'] ?? 0) > maxBytes) throw refuse('PAYLOAD_TOO_LARGE', `the webhook body is larger than UPSTREAM_MAX_BODY_BYTES (${maxBytes}) allows`);
    const id = await kv.get(receiverKey(token));
    if (!id) throw refuse('NOT_FOUND', 'no such webhook receiver: the gateway never issued this link, or it has expired');
    const body = request.body as Readable | undefined;
    const signature = signatureFor(upstreams.webhookSecret((await store.lookup(id)).upstream) ?? config.UPSTREAM_WEBHOOK_SECRET);
    if (signature) {
      const signed = signature.headers(request.headers);
      if (!(await signature.verify(body, signed, maxBytes))) {
        throw new GatewayError('UNAUTHENTICATED', 'the webhook signature is not valid');
      }
      if (!(await kv.setIfAbsent(`whseen:${signed.id}`, '1', SEEN_MS))) {
        throw new GatewayError('CONFLICT', 'this webhook message was received already');
      }
    } else {
      await drain(body, maxBytes);
    }
    await webhooks.hint(id);
    return reply.code(204).send();
  });
}
