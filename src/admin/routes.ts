// The admin API under /gateway/v1/admin: tenants (CRUD, merge patch with If-Match), their keys (issue, list,
// rotate with a grace period, revoke, usage) and the audit trail. ADMIN_API_KEY or a dashboard session for all of
// it; a team admin's key (role admin) for its own tenant's keys and audit events.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { z } from 'zod';
import { TenantSchema } from '../access/tenants.js';
import { GatewayError } from '../errors.js';
import { deeperThan } from '../lib/json-depth.js';
import { parse } from '../http/validate.js';
import { daysBefore, daysBetween, today } from '../usage/day.js';
import { KEY_ID_FORMAT } from './api-keys.js';
import { TenantSettingsSchema } from './records.js';
import { AdminService, type Ctx, MAX_GRACE_SECONDS } from './service.js';

const KeyCreateSchema = z.strictObject({
  name: z.string().min(1).max(200).optional(),
  expires_at: z.iso.datetime({ offset: true, error: 'must be an ISO 8601 date and time, such as 2030-01-01T00:00:00Z' }).optional(),
  role: z.enum(['member', 'admin'], { error: 'must be "member" or "admin"' }).optional(),
});
const RotateSchema = z.strictObject({
  grace_seconds: z.number({ error: 'must be a number' }).int('must be a whole number').min(0, 'must be at least 0').max(MAX_GRACE_SECONDS, `must be at most ${MAX_GRACE_SECONDS} (7 days)`).default(0),
});
const AuditQuerySchema = z.object({
  after: z.coerce.number({ error: 'must be a number' }).int('must be a whole number').min(0).default(0),
  limit: z.coerce.number({ error: 'must be a number' }).int('must be a whole number').min(1).max(1000).default(100),
});
const UsageQuerySchema = z.object({
  from: z.iso.date('must be a date as YYYY-MM-DD').optional(),
  to: z.iso.date('must be a date as YYYY-MM-DD').optional(),
});
const TenantParams = z.object({ id: TenantSchema.shape.id });
const KeyParams = TenantParams.extend({ keyId: z.string().regex(KEY_ID_FORMAT, 'must be a key id (12 of a-z and 0-9)') });

/** The JSON Schema of a zod schema, for the OpenAPI document (requests are still checked by zod, for 422s naming the field). */
function doc(schema: z.ZodType): Record<string, unknown> {
  const { $schema: _s, ...rest } = z.toJSONSchema(schema, { io: 'input', unrepresentable: 'any' }) as Record<string, unknown>;
  return rest;
}

const problem = { description: 'problem JSON {type, title, status, detail}', type: 'object', properties: { type: { type: 'string' }, title: { type: 'string' }, status: { type: 'integer' }, detail: { type: 'string' } } };
const errors = (...codes: number[]) => Object.fromEntries(codes.map((c) => [c, problem]));
const tenantBody = doc(TenantSettingsSchema.extend({ id: TenantSchema.shape.id }));
const tenantPatch = { ...doc(TenantSettingsSchema.partial()), description: 'a JSON merge patch (RFC 7396) of the tenant; null removes a field' };
const keyAnswer = {
  type: 'object',
  description: 'the key, shown once: only its hash is stored',
  properties: { id: { type: 'string' }, key: { type: 'string' }, tenant: { type: 'string' }, name: { type: ['string', 'null'] }, role: { type: 'string' }, created_at: { type: 'string' }, expires_at: { type: ['string', 'null'] } },
};

export async function adminRoutes(app: FastifyInstance): Promise<void> {
  // Requests are checked by zod (422 naming the field); the schemas are for the OpenAPI document.
  app.setValidatorCompiler(() => () => true);
  app.setSerializerCompiler(() => (data) => JSON.stringify(data));
  const maxDepth = app.config.JSON_MAX_DEPTH;
  app.addContentTypeParser('application/merge-patch+json', { parseAs: 'string' }, (_request, body, done) => {
    const text = body as string;
    if (deeperThan(text, maxDepth)) return done(new GatewayError('VALIDATION', `the request body nests deeper than JSON_MAX_DEPTH (${maxDepth}) levels`), undefined);
    try {
      done(null, text.trim() === '' ? undefined : JSON.parse(text));
    } catch (err) {
      done(new GatewayError('BAD_REQUEST', `the request body is not valid JSON: ${(err as Error).message}`), undefined);
    }
  });

  const service = (): AdminService => {
    if (!app.admin) throw new GatewayError('FORBIDDEN', 'the admin API is disabled: set ADMIN_API_KEY');
    return app.admin;
  };
  const ctx = (request: FastifyRequest): Ctx => ({
    actor: request.adminActor!,
    ip: request.ip,
    userAgent: typeof request.headers['user-agent'] === 'string' ? request.headers['user-agent'].slice(0, 300) : null,
  });
  /** A team admin acts on its own tenant only. */
  const own = (request: FastifyRequest, tenantId: string) => {
    const a = request.adminActor!;
    if (a.type === 'team_admin' && a.tenant !== tenantId) throw new GatewayError('FORBIDDEN', `a team admin key of tenant ${a.tenant} cannot act on tenant ${tenantId}`);
  };
  const admin = { auth: 'admin' as const };
  const team = { auth: 'admin' as const, teamAdmin: true };
  const tags = ['admin'];

  app.get('/tenants', { config: admin, schema: { tags, summary: 'Every tenant: from the tenants file (read-only) and from the API', response: { 200: { type: 'object' }, ...errors(401, 403) } } }, async () => {
    const s = service();
    const l = await s.load();
    const file = app.tenants.all().filter((t) => app.tenants.inFile(t.id)).map((t) => s.fileTenantView(t));
    return { tenants: [...file, ...[...l.tenants.values()].sort((a, b) => a.id.localeCompare(b.id)).map((r) => s.tenantView(r))] };
  });

  app.post('/tenants', { config: admin, schema: { tags, summary: 'Create a tenant (every tenants-file field but keys)', body: tenantBody, response: { 201: { type: 'object' }, ...errors(400, 401, 403, 409, 422) } } }, async (request, reply) => {
    const s = service();
    const body = request.body as Record<string, unknown> | undefined;
    if (!body || typeof body !== 'object' || Array.isArray(body)) throw new GatewayError('BAD_REQUEST', 'the request body must be a JSON object');
    const r = await s.createTenant(ctx(request), body);
    return reply.code(201).header('etag', AdminService.etag(r)).header('location', `/gateway/v1/admin/tenants/${r.id}`).send(s.tenantView(r));
  });

  app.get('/tenants/:id', { config: admin, schema: { tags, summary: 'One tenant, with its ETag', params: doc(TenantParams), response: { 200: { type: 'object' }, ...errors(401, 403, 404) } } }, async (request, reply) => {
    const s = service();
    const { id } = parse(TenantParams, request.params, 'path');
    if (app.tenants.inFile(id)) return s.fileTenantView(app.tenants.get(id)!);
    const r = (await s.load()).tenants.get(id);
    if (!r) throw new GatewayError('NOT_FOUND', `no tenant ${id}`);
    return reply.header('etag', AdminService.etag(r)).send(s.tenantView(r));
  });

  app.patch(
    '/tenants/:id',
    { config: admin, schema: { tags, summary: 'Change a tenant: a JSON merge patch, If-Match with its ETag (412 on a conflict)', params: doc(TenantParams), body: tenantPatch, response: { 200: { type: 'object' }, ...errors(400, 401, 403, 404, 409, 412, 422) } } },
    async (request, reply) => {
      const s = service();
      const { id } = parse(TenantParams, request.params, 'path');
      const body = request.body;
      if (!body || typeof body !== 'object' || Array.isArray(body)) throw new GatewayError('BAD_REQUEST', 'the request body must be a JSON object (a merge patch)');
      const ifMatch = request.headers['if-match'];
      const r = await s.patchTenant(ctx(request), id, body as Record<string, unknown>, typeof ifMatch === 'string' ? ifMatch : undefined);
      return reply.header('etag', AdminService.etag(r)).send(s.tenantView(r));
    },
  );

  app.delete('/tenants/:id', { config: admin, schema: { tags, summary: 'Delete a tenant: its keys and tokens stop working at once; running predictions finish', params: doc(TenantParams), response: { 204: { type: 'null' }, ...errors(401, 403, 404, 409) } } }, async (request, reply) => {
    const { id } = parse(TenantParams, request.params, 'path');
    await service().deleteTenant(ctx(request), id);
    return reply.code(204).send();
  });

  app.get('/tenants/:id/keys', { config: team, schema: { tags, summary: "A tenant's keys: ids, names, roles and dates, never secrets", params: doc(TenantParams), response: { 200: { type: 'object' }, ...errors(401, 403, 404, 409) } } }, async (request) => {
    const { id } = parse(TenantParams, request.params, 'path');
    own(request, id);
    return { keys: await service().listKeys(id) };
  });

  app.post('/tenants/:id/keys', { config: team, schema: { tags, summary: 'Issue a key (the secret is in this answer only)', params: doc(TenantParams), body: doc(KeyCreateSchema), response: { 201: keyAnswer, ...errors(400, 401, 403, 404, 409, 422) } } }, async (request, reply) => {
    const { id } = parse(TenantParams, request.params, 'path');
    own(request, id);
    const body = parse(KeyCreateSchema, request.body ?? {}, 'body');
    const r = await service().createKey(ctx(request), id, body);
    return reply.code(201).header('cache-control', 'no-store').send(r);
  });

  app.post(
    '/tenants/:id/keys/:keyId/rotate',
    {
      config: team,
      schema: {
        tags,
        summary: 'A new secret under the same id; the old one works for grace_seconds more. Idempotency-Key: a repeat gets the same secret',
        params: doc(KeyParams),
        headers: { type: 'object', properties: { 'idempotency-key': { type: 'string', maxLength: 256 } } },
        body: doc(RotateSchema),
        response: { 200: keyAnswer, ...errors(400, 401, 403, 404, 409, 422) },
      },
    },
    async (request, reply) => {
      const { id, keyId } = parse(KeyParams, request.params, 'path');
      own(request, id);
      const body = parse(RotateSchema, request.body ?? {}, 'body');
      const idem = request.headers['idempotency-key'];
      if (idem !== undefined && (typeof idem !== 'string' || idem.length < 1 || idem.length > 256)) throw new GatewayError('VALIDATION', 'Idempotency-Key must be 1 to 256 characters');
      const r = await service().rotateKey(ctx(request), id, keyId, body.grace_seconds, idem);
      if (r.replayed) reply.header('idempotent-replayed', 'true');
      return reply.header('cache-control', 'no-store').send(r.answer);
    },
  );

  app.delete('/tenants/:id/keys/:keyId', { config: team, schema: { tags, summary: 'Revoke a key at once, on every replica', params: doc(KeyParams), response: { 204: { type: 'null' }, ...errors(401, 403, 404, 409) } } }, async (request, reply) => {
    const { id, keyId } = parse(KeyParams, request.params, 'path');
    own(request, id);
    await service().revokeKey(ctx(request), id, keyId);
    return reply.code(204).send();
  });

  app.get(
    '/tenants/:id/keys/:keyId/usage',
    { config: team, schema: { tags, summary: "A key's requests and creates per UTC day (default the last 7 days)", params: doc(KeyParams), querystring: doc(UsageQuerySchema), response: { 200: { type: 'object' }, ...errors(401, 403, 404, 409, 422) } } },
    async (request) => {
      const { id, keyId } = parse(KeyParams, request.params, 'path');
      own(request, id);
      const q = parse(UsageQuerySchema, request.query, 'query');
      await service().getKey(id, keyId);
      const to = q.to ?? today();
      const from = q.from ?? daysBefore(to, 6);
      if (from > to) throw new GatewayError('VALIDATION', 'query from must be on or before to');
      const days = daysBetween(from, to, 92);
      if (!days) throw new GatewayError('VALIDATION', 'query range is longer than 92 days');
      // What this process counted and has not written yet is included.
      await app.keyUsage.flush();
      const byDay = await app.keyUsage.of(keyId, days);
      const totals = Object.values(byDay).reduce((a, d) => ({ requests: a.requests + d.requests, creates: a.creates + d.creates }), { requests: 0, creates: 0 });
      return { tenant: id, key: keyId, days: byDay, totals };
    },
  );

  app.get(
    '/audit',
    { config: team, schema: { tags, summary: 'Audit events after seq `after`, oldest first (a team admin: its own tenant only)', querystring: doc(AuditQuerySchema), response: { 200: { type: 'object' }, ...errors(401, 403, 422) } } },
    async (request) => {
      const q = parse(AuditQuerySchema, request.query, 'query');
      const a = request.adminActor!;
      return service().audit(q.after, q.limit, a.type === 'team_admin' ? a.tenant : undefined);
    },
  );
}
