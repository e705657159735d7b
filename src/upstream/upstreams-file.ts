// UPSTREAMS_FILE: the upstream accounts the gateway may create on (YAML or JSON), read the same way as the tenants
// file. A key may be written out or named as an environment variable ({"env": "NAME"}), so the file itself can be
// kept in version control without secrets.
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { ModelPatternSchema } from '../access/tenants.js';
import { ConfigError } from '../config.js';

/** What the gateway knows of one upstream account. */
export interface UpstreamSpec {
  /** Pins predictions: stored with each one, so it must stay the same for the same account. */
  name: string;
  baseUrl: string;
  apiKey: string;
  weight: number;
  /** Models this account may run ("owner/name" or "owner/*"); undefined: any. */
  models?: string[];
  /** Verifies this account's webhook calls (WEBHOOK_MODE=upstream); default UPSTREAM_WEBHOOK_SECRET. */
  webhookSecret?: string;
  /** new-api: its balance is read (src/upstream/balance.ts); none: it has no balance the gateway can read. */
  balance: 'new-api' | 'none';
  /** Takes no new creates; its predictions are still served (the way to retire an account across restarts). */
  drain: boolean;
  /** new-api's raw quota units per display unit (its QUOTA_PER_UNIT; 500000 by default): /api/usage/token counts in them. */
  quotaPerUnit: number;
}

const EnvRefSchema = z.strictObject({ env: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'must name an environment variable') });

const UpstreamEntrySchema = z.strictObject({
  // Names go into store keys' values and metric labels: short and plain.
  name: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, 'must be 1-64 letters, digits, ".", "_" or "-"'),
  baseUrl: z.url({ protocol: /^https?$/, error: 'must be an http(s) URL' }).transform((u) => u.replace(/\/+$/, '')),
  apiKey: z.union([z.string().min(1, 'must not be empty'), EnvRefSchema]),
  weight: z.number({ error: 'must be a number' }).min(0, 'must be at least 0').max(1_000_000).default(1),
  models: z.array(ModelPatternSchema).optional(),
  webhookSecret: z.string().regex(/^whsec_[A-Za-z0-9+/=]{16,}$/, 'must be a Standard Webhooks secret (whsec_ and base64)').optional(),
  balance: z.enum(['new-api', 'none'], { error: 'must be "new-api" or "none"' }).optional(),
  drain: z.boolean().default(false),
  quotaPerUnit: z.number().positive('must be above 0').default(500_000),
});

const UpstreamsFileSchema = z.object({ upstreams: z.array(UpstreamEntrySchema).min(1, 'needs at least one upstream') });

/** Replicate itself has no new-api billing routes: only resellers are asked for a balance unless the file says so. */
const defaultBalance = (baseUrl: string): UpstreamSpec['balance'] => (new URL(baseUrl).hostname === 'api.replicate.com' ? 'none' : 'new-api');

/** The one-upstream form (UPSTREAM_BASE_URL + UPSTREAM_API_KEY), named "default". */
export function singleUpstream(baseUrl: string, apiKey: string, webhookSecret?: string): UpstreamSpec {
  return { name: 'default', baseUrl, apiKey, weight: 1, webhookSecret, balance: defaultBalance(baseUrl), drain: false, quotaPerUnit: 500_000 };
}

/** Reads and checks the file; the error names the entry and field, never a key's value. */
export function readUpstreamsFile(path: string, env: Record<string, string | undefined>): UpstreamSpec[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError(`invalid configuration: UPSTREAMS_FILE ${path} cannot be read (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  let raw: unknown;
  try {
    raw = /\.json$/i.test(path) ? JSON.parse(text) : parseYaml(text);
  } catch {
    // The parsers quote the text around the mistake, which may be a key: their messages are not passed on.
    throw new ConfigError(`invalid configuration: UPSTREAMS_FILE ${path} is not valid ${/\.json$/i.test(path) ? 'JSON' : 'YAML'}`);
  }
  const parsed = UpstreamsFileSchema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new ConfigError(`invalid configuration: UPSTREAMS_FILE ${path}: ${issue.path.join('.') || 'the file'} ${issue.message}`);
  }
  const seen = new Set<string>();
  return parsed.data.upstreams.map((u, i) => {
    if (seen.has(u.name)) throw new ConfigError(`invalid configuration: UPSTREAMS_FILE ${path}: upstreams.${i}.name ${u.name} is listed twice`);
    seen.add(u.name);
    let apiKey: string;
    if (typeof u.apiKey === 'string') apiKey = u.apiKey;
    else {
      const v = env[u.apiKey.env]?.trim();
      if (!v) throw new ConfigError(`invalid configuration: UPSTREAMS_FILE ${path}: upstreams.${i}.apiKey names ${u.apiKey.env}, which is not set`);
      apiKey = v;
    }
    return { name: u.name, baseUrl: u.baseUrl, apiKey, weight: u.weight, models: u.models, webhookSecret: u.webhookSecret, balance: u.balance ?? defaultBalance(u.baseUrl), drain: u.drain, quotaPerUnit: u.quotaPerUnit };
  });
}
