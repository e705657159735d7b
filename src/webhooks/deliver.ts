// Sending one webhook to a tenant's URL: only https (http for WEBHOOK_ALLOW_HTTP_HOSTS), never to a private or
// loopback address unless its host is in WEBHOOK_ALLOW_PRIVATE_HOSTS (checked on the address actually connected to,
// so DNS cannot be turned against us between the check and the call), no redirects, a deadline per attempt,
// signed the Standard Webhooks way.
import { lookup as dnsLookup } from 'node:dns';
import type { LookupFunction } from 'node:net';
import ipaddr from 'ipaddr.js';
import { Webhook } from 'standardwebhooks';
import { Agent, request } from 'undici';

export interface UrlPolicy {
  allowHttpHosts: readonly string[];
  allowPrivateHosts: readonly string[];
}

/** Host names as URL gives them: IPv6 in brackets. */
const hostOf = (u: URL) => u.hostname.toLowerCase();

const v4IsPublic = (hi: number, lo: number) => new ipaddr.IPv4([hi >> 8, hi & 0xff, lo >> 8, lo & 0xff]).range() === 'unicast';

/**
 * Global unicast only. An IPv6 address that carries an IPv4 one (v4-mapped, NAT64's 64:ff9b::/96, 6to4's
 * 2002::/16) reaches that IPv4 address, so it is judged by it; IPv4-compatible ::/96 is deprecated and, like every
 * IPv6 address outside 2000::/3 or in a special range (ipaddr.js knows no range for ::/96: it called it unicast), refused.
 */
export function isGlobalUnicast(address: string): boolean {
  if (!ipaddr.isValid(address)) return false;
  const ip = ipaddr.parse(address);
  if (ip.kind() === 'ipv4') return ip.range() === 'unicast';
  const { parts } = ip as ipaddr.IPv6;
  const range = ip.range();
  if (range === 'ipv4Mapped') return v4IsPublic(parts[6]!, parts[7]!);
  // The well-known NAT64 prefix only (DNS64 gives it for IPv4-only hosts); the local-use 64:ff9b:1::/48 is not global.
  if (range === 'rfc6052') return parts[2] === 0 && parts[3] === 0 && parts[4] === 0 && parts[5] === 0 && v4IsPublic(parts[6]!, parts[7]!);
  if (range === '6to4') return v4IsPublic(parts[1]!, parts[2]!);
  return range === 'unicast' && (parts[0]! & 0xe000) === 0x2000;
}

/** Why a webhook URL is refused outright (at create), or undefined. Names are resolved later, at each delivery. */
export function refuseUrl(raw: string, policy: UrlPolicy): string | undefined {
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    return 'is not a URL';
  }
  const host = hostOf(u);
  if (u.username || u.password) return 'must not carry credentials';
  if (u.protocol === 'http:' && !policy.allowHttpHosts.includes(host)) return 'must be an https URL (http only for hosts in WEBHOOK_ALLOW_HTTP_HOSTS)';
  if (u.protocol !== 'https:' && u.protocol !== 'http:') return 'must be an https URL';
  const literal = host.replace(/^\[|\]$/g, '');
  if (ipaddr.isValid(literal) && !isGlobalUnicast(literal) && !policy.allowPrivateHosts.includes(host)) {
    return 'points at a private, loopback or reserved address (allowed only for hosts in WEBHOOK_ALLOW_PRIVATE_HOSTS)';
  }
  return undefined;
}

export class RefusedAddress extends Error {
  override name = 'RefusedAddress';
}

/** Resolves as usual, then refuses the connection if an address is not public (unless the host is allowed). */
export function guardedLookup(policy: UrlPolicy): LookupFunction {
  return (hostname, options, callback) => {
    dnsLookup(hostname, { ...options, all: true }, (err, addresses) => {
      if (err) return callback(err, '', 0);
      const list = addresses as unknown as { address: string; family: number }[];
      const allowed = policy.allowPrivateHosts.includes(hostname.toLowerCase()) ? list : list.filter((a) => isGlobalUnicast(a.address));
      if (allowed.length === 0) {
        return callback(new RefusedAddress(`${hostname} resolves to a private, loopback or reserved address`), '', 0);
      }
      if ((options as { all?: boolean }).all) return (callback as unknown as (e: null, a: typeof allowed) => void)(null, allowed);
      callback(null, allowed[0]!.address, allowed[0]!.family);
    });
  };
}

export type Outcome = { ok: true; status: number } | { ok: false; retry: boolean; reason: string; status?: number };

export class Deliverer {
  readonly #agent: Agent;
  readonly #timeoutMs: number;

  readonly #policy: UrlPolicy;

  constructor(policy: UrlPolicy, timeoutMs: number) {
    this.#policy = policy;
    this.#timeoutMs = timeoutMs;
    // Connecting gets less than the whole attempt: a host that drops SYNs should not hold a watcher for long.
    this.#agent = new Agent({ connect: { lookup: guardedLookup(policy), timeout: Math.min(timeoutMs, 3000) }, connections: 64, keepAliveTimeout: 10_000 });
  }

  /** One attempt. Retried later: 5xx, 408, 429, timeouts, connection errors. Never: other 4xx, 3xx, refused addresses. */
  async send(url: string, msg: { id: string; secret: string; body: string }): Promise<Outcome> {
    // An address literal is connected to without a lookup, so the lookup's guard never sees it: check it here, on
    // every attempt (a URL accepted under an older policy, or by an older gateway, is judged by this one).
    const refused = refuseUrl(url, this.#policy);
    if (refused) return { ok: false, retry: false, reason: `the webhook URL ${refused}` };
    const timestamp = new Date();
    const signature = new Webhook(msg.secret).sign(msg.id, timestamp, msg.body);
    try {
      const res = await request(url, {
        method: 'POST',
        dispatcher: this.#agent,
        headers: {
          'content-type': 'application/json',
          'user-agent': 'fuhu-gateway-webhooks',
          'webhook-id': msg.id,
          'webhook-timestamp': String(Math.floor(timestamp.getTime() / 1000)),
          'webhook-signature': signature,
        },
        body: msg.body,
        signal: AbortSignal.timeout(this.#timeoutMs),
        headersTimeout: this.#timeoutMs,
        bodyTimeout: this.#timeoutMs,
      });
      await res.body.dump({ limit: 64 * 1024 }).catch(() => {});
      const status = res.statusCode;
      if (status >= 200 && status < 300) return { ok: true, status };
      const retry = status >= 500 || status === 408 || status === 429;
      const reason = status >= 300 && status < 400 ? `answered ${status}; redirects are not followed` : `answered ${status}`;
      return { ok: false, retry, reason, status };
    } catch (err) {
      if (err instanceof RefusedAddress || (err as { cause?: unknown }).cause instanceof RefusedAddress) {
        return { ok: false, retry: false, reason: ((err as { cause?: Error }).cause ?? (err as Error)).message };
      }
      const e = err as Error & { code?: string };
      const timedOut = e.name === 'TimeoutError' || e.name === 'AbortError' || /TIMEOUT/.test(e.code ?? '');
      return { ok: false, retry: true, reason: timedOut ? `no answer within ${this.#timeoutMs} ms` : `could not connect (${e.code ?? e.message})` };
    }
  }

  async close() {
    await this.#agent.close();
  }
}
