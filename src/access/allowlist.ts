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

/**
 * Whether this caller may create with this model (by model) or version (by version); 403 naming why not.
 * A version names no model the gateway can check, so tenants with an allowlist must list versions explicitly.
 */
export function checkAllowed(principal: Principal, model: string | undefined, version: string | undefined): void {
  const { tenant, token } = principal;
  if (model !== undefined) {
    if (!modelAllowed(model, tenant.models) || (token?.models && !modelAllowed(model, token.models))) {
      throw new GatewayError('FORBIDDEN', `model ${model} is not allowed for ${token?.models ? 'this token' : `tenant ${tenant.id}`}`);
    }
    return;
  }
  const hasAllowlist = tenant.models !== undefined || tenant.versions !== undefined;
  if (hasAllowlist && !tenant.versions?.includes(version!)) {
    throw new GatewayError('FORBIDDEN', `version ${version} is not in the allowed versions of tenant ${tenant.id}`);
  }
  // The upstream may run a version by its hash whatever name precedes it, so a token narrowed to models may only
  // use versions the tenant lists explicitly, and only of those models.
  if (token?.models) {
    const named = /^([^/:]+\/[^/:]+):/.exec(version!)?.[1];
    if (!named || !modelAllowed(named, token.models) || !tenant.versions?.includes(version!)) {
      throw new GatewayError('FORBIDDEN', `version ${version} is not allowed for this token`);
    }
  }
}
