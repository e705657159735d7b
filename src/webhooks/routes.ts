// The tenant's side of webhooks (its signing secret, its last delivery failures) and the receiver the upstream
// calls in WEBHOOK_MODE=upstream. A receiver call is only a hint: the gateway re-reads the prediction itself.
import { randomBytes } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import { Webhook } from 'standardwebhooks';
import { z } from 'zod';
import { GatewayError } from '../errors.js';
import { parse } from '../http/validate.js';

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

/** Outside auth: the upstream has no tenant key. Unknown links, bad signatures and replays change nothing. */
export async function webhookReceiverRoutes(app: FastifyInstance): Promise<void> {
  const { config, kv, webhooks } = app;
  const verifier = config.UPSTREAM_WEBHOOK_SECRET ? new Webhook(config.UPSTREAM_WEBHOOK_SECRET) : undefined;
  // The payload is never used, only verified: read it as text, as large as an upstream answer may be (it echoes
  // the input, inlined files included) and as deep, rather than under the limits for client bodies.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'string' }, (request, body, done) => {
    request.rawBody = body as string;
    done(null, undefined);
  });

  app.post('/gateway/v1/webhooks/upstream/:token', { bodyLimit: config.UPSTREAM_MAX_BODY_BYTES }, async (request, reply) => {
    const { token } = parse(TokenParams, request.params, 'path');
    if (verifier) {
      const headers = {
        'webhook-id': String(request.headers['webhook-id'] ?? ''),
        'webhook-timestamp': String(request.headers['webhook-timestamp'] ?? ''),
        'webhook-signature': String(request.headers['webhook-signature'] ?? ''),
      };
      try {
        // Checks the signature and that the timestamp is within five minutes.
        verifier.verify(request.rawBody ?? '', headers);
      } catch {
        throw new GatewayError('UNAUTHENTICATED', 'the webhook signature is missing, not valid, or its timestamp is too old');
      }
      if (!(await kv.setIfAbsent(`whseen:${headers['webhook-id']}`, '1', SEEN_MS))) {
        throw new GatewayError('CONFLICT', 'this webhook message was received already');
      }
    }
    const id = await kv.get(receiverKey(token));
    if (id) await webhooks.hint(id);
    return reply.code(204).send();
  });
}
