// Model allowlists: "owner/name" or "owner/*" patterns, from the tenant and, narrower still, from a token.

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
