// GET /gateway/v1/openapi.json: a valid OpenAPI 3.1 document, generated from the routes, that misses none of them
// (every optional part switched on: tokens, the admin API and dashboard, signed file links, the webhook receiver).
import { Validator } from '@seriousme/openapi-schema-validator';
import { describe, expect, it } from 'vitest';
import { call, useGateway, useSimulator } from './helpers/stack.js';

const s = useSimulator(50);
const gw = useGateway(() => ({
  sim: s,
  env: {
    ADMIN_API_KEY: 'admin-key-for-openapi-0123456789',
    TOKEN_SIGNING_SECRET: 'openapi-test-signing-secret-0123456789abcdef',
    PUBLIC_BASE_URL: 'https://gateway.example',
    FILES_DELIVERY: 'url',
    WEBHOOK_MODE: 'upstream',
    LOG_LEVEL: 'warn',
  },
}));

const openapiPath = (url: string) => url.replace(/:(\w+)/g, '{$1}').replace(/\*$/, '{*}');

describe('the OpenAPI document', () => {
  it('is valid OpenAPI 3.1, open to anyone, and documents the admin API with its request schemas', async () => {
    const r = await call(gw.url, 'GET', '/gateway/v1/openapi.json');
    expect(r.status).toBe(200);
    const validator = new Validator();
    const result = await validator.validate(r.body);
    expect(result.errors ?? []).toEqual([]);
    expect(result.valid).toBe(true);
    expect(r.body.openapi).toBe('3.1.0');
    const tenants = r.body.paths['/gateway/v1/admin/tenants'];
    expect(tenants.post.requestBody.content['application/json'].schema.properties).toHaveProperty('maxRunning');
    expect(tenants.post.security).toEqual([{ bearer: [] }, { session: [] }]);
    expect(r.body.paths['/gateway/v1/admin/tenants/{id}/keys/{keyId}/rotate'].post.requestBody.content['application/json'].schema.properties.grace_seconds).toMatchObject({ maximum: 604800 });
    expect(r.body.paths['/gateway/v1/tokens'].post.summary).toMatch(/token/);
    expect(r.body.paths['/gateway/v1/openapi.json'].get.summary).toBe('This document');
  });

  it('has every registered route', async () => {
    const doc = (await call(gw.url, 'GET', '/gateway/v1/openapi.json')).body as { paths: Record<string, Record<string, unknown>> };
    const routes = gw.app.registeredRoutes.filter((x) => !x.hidden);
    expect(routes.length).toBeGreaterThan(40);
    // A prefixed '/' answers with and without the slash: one path in the document.
    const documented = (url: string, method: string) => [url, `${url}/`].some((u) => doc.paths[openapiPath(u)]?.[method.toLowerCase()]);
    const missing = routes.filter((x) => !documented(x.url, x.method)).map((x) => `${x.method} ${x.url}`);
    expect(missing).toEqual([]);
    // Hidden: the CORS preflight's catch-all, and the model search (OpenAPI 3.1 has no QUERY operation; GET
    // /replicate/v1/models names it).
    expect(gw.app.registeredRoutes.filter((x) => x.hidden).map((x) => `${x.method} ${x.url}`).sort()).toEqual(['OPTIONS *', 'QUERY /replicate/v1/models']);
    expect(doc.paths['/replicate/v1/models']!.get).toMatchObject({ summary: expect.stringMatching(/QUERY/) });
  });
});
