// Model allowlists: "owner/name" or "owner/*" patterns, from the tenant and, narrower still, from a token.
import { GatewayError } from '../errors.js';
import type { Principal } from '../types.js';

export function modelMatches(model: string, pattern: string): boolean {
  if (pattern.endsWith('/*')) return model.startsWith(pattern.slice(0, -1));
  return model === pattern;
}

export function modelAllowed(model: string, patterns: readonly string[] | undefined): boolean {
  return patterns === undefined || patterns.some((p) => modelMatches(model, p));
}

/** A pattern is within an allowlist when every model it matches is allowed. */
export function patternWithin(pattern: string, allow: readonly string[] | undefined): boolean {
  if (allow === undefined) return true;
  if (!pattern.endsWith('/*')) return modelAllowed(pattern, allow);
  return allow.some((a) => a === pattern || (a.endsWith('/*') && pattern.startsWith(a.slice(0, -1))));
}

/** Whether this caller may create with this model; 403 naming why not. */
export function checkAllowed(principal: Principal, model: string): void {
  const { tenant, token } = principal;
  if (!modelAllowed(model, tenant.models) || (token?.models && !modelAllowed(model, token.models))) {
    throw new GatewayError('FORBIDDEN', `model ${model} is not allowed for ${token?.models ? 'this token' : `tenant ${tenant.id}`}`);
  }
}

/**
 * Whether this caller may create with this version ("owner/name:hash" or the bare hash). The upstream runs a version
 * by its hash whatever name precedes it, so a name proves nothing: a version passes when the tenant lists it in
 * `versions`, or when the gateway has seen it belong to a model the tenant (and token) may use (`modelOf`).
 */
export async function checkVersionAllowed(principal: Principal, version: string, modelOf: (version: string) => Promise<string | undefined>): Promise<void> {
  const { tenant, token } = principal;
  const listed = tenant.versions?.includes(version) === true;
  const hasAllowlist = tenant.models !== undefined || tenant.versions !== undefined;
  if (!hasAllowlist && !token?.models) return;
  if (listed && !token?.models) return;
  const learned = await modelOf(version);
  const learnedOk = learned !== undefined && tenant.models !== undefined && modelAllowed(learned, tenant.models);
  if (token?.models) {
    // The token's narrowing applies to the learned model, or (as before) to the listed version's own name.
    const named = /^([^/:]+\/[^/:]+):/.exec(version)?.[1];
    const byLearned = learned !== undefined && modelAllowed(learned, token.models) && (learnedOk || listed || !hasAllowlist);
    const byListing = listed && named !== undefined && modelAllowed(named, token.models);
    if (!byLearned && !byListing) throw new GatewayError('FORBIDDEN', `version ${version} is not allowed for this token`);
    return;
  }
  if (learnedOk) return;
  const hash = version.slice(version.lastIndexOf(':') + 1);
  const how = tenant.models
    ? `; the gateway has not seen it belong to one of the tenant's models: read it once through GET /replicate/v1/models/{owner}/{name}/versions/${hash}, or list it in the tenant's "versions"`
    : '';
  throw new GatewayError('FORBIDDEN', `version ${version} is not in the allowed versions of tenant ${tenant.id}${how}`);
}
