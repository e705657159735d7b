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

const isPublic = (address: string): boolean => {
  if (!ipaddr.isValid(address)) return false;
  return ipaddr.process(address).range() === 'unicast';
};

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
  if (ipaddr.isValid(literal) && !isPublic(literal) && !policy.allowPrivateHosts.includes(host)) {
    return 'points at a private, loopback or reserved address (allowed only for hosts in WEBHOOK_ALLOW_PRIVATE_HOSTS)';
  }
  return undefined;
}

export class RefusedAddress extends Error {
  override name = 'RefusedAddress';
}

/** Resolves as usual, then refuses the connection if an address is not public (unless the host is allowed). */
function guardedLookup(policy: UrlPolicy): LookupFunction {
  return (hostname, options, callback) => {
    dnsLookup(hostname, { ...options, all: true }, (err, addresses) => {
      if (err) return callback(err, '', 0);
      const list = addresses as unknown as { address: string; family: number }[];
      const allowed = policy.allowPrivateHosts.includes(hostname.toLowerCase()) ? list : list.filter((a) => isPublic(a.address));
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

  constructor(policy: UrlPolicy, timeoutMs: number) {
    this.#timeoutMs = timeoutMs;
    // Connecting gets less than the whole attempt: a host that drops SYNs should not hold a watcher for long.
    this.#agent = new Agent({ connect: { lookup: guardedLookup(policy), timeout: Math.min(timeoutMs, 3000) }, connections: 64, keepAliveTimeout: 10_000 });
  }

  /** One attempt. Retried later: 5xx, 408, 429, timeouts, connection errors. Never: other 4xx, 3xx, refused addresses. */
  async send(url: string, msg: { id: string; secret: string; body: string }): Promise<Outcome> {
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
