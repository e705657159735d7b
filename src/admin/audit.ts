// The audit trail: one event per admin action, each holding the hash of the one before it, so a removed, changed
// or reordered event shows. Retention trims from the oldest end; the oldest kept event's `prev` anchors the rest.
import { hash } from 'node:crypto';
import type { TenantStore } from '../store/tenant-store.js';
import type { AdminActor } from '../types.js';

export interface AuditInput {
  actor: AdminActor;
  /** e.g. tenant.create, tenant.update, tenant.delete, key.create, key.rotate, key.revoke */
  action: string;
  target: { tenant: string; key?: string };
  /** The changed fields before and after (never a secret). */
  before: Record<string, unknown> | null;
  after: Record<string, unknown> | null;
  ip: string;
  user_agent: string | null;
}

export interface AuditEvent extends AuditInput {
  seq: number;
  /** When, in ms since the epoch (the log is trimmed by it), and as ISO 8601. */
  ts: number;
  at: string;
  /** The previous event's hash; null for the first event ever written. */
  prev: string | null;
  hash: string;
}

/** JSON with keys sorted at every depth: what is hashed does not depend on the order fields were written in. */
export function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (v !== null && typeof v === 'object') {
    const entries = Object.entries(v as Record<string, unknown>).filter(([, x]) => x !== undefined);
    return `{${entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([k, x]) => `${JSON.stringify(k)}:${canonical(x)}`).join(',')}}`;
  }
  return JSON.stringify(v);
}

export function eventHash(event: Omit<AuditEvent, 'hash'>): string {
  return hash('sha256', canonical(event), 'hex');
}

/** The event that follows `head` ("" or "<seq> <hash>"), its JSON (seq and ts first: the store reads them) and the new head. */
export function chainEvent(head: string, input: AuditInput, now = Date.now()): { json: string; newHead: string; event: AuditEvent } {
  const [seqText, prevHash] = head ? head.split(' ') : ['0', null];
  const seq = Number(seqText) + 1;
  const body: Omit<AuditEvent, 'hash'> = { seq, ts: now, at: new Date(now).toISOString(), ...input, prev: prevHash ?? null };
  const event: AuditEvent = { ...body, hash: eventHash(body) };
  return { json: JSON.stringify(event), newHead: `${seq} ${event.hash}`, event };
}

export interface VerifyResult {
  ok: boolean;
  events: number;
  first?: number;
  last?: number;
  /** The first problem found: which event and what. */
  problem?: string;
}

/** Reads the whole log in pages and checks every hash, every link and the head. */
export async function verifyAudit(store: TenantStore, pageSize = 1000): Promise<VerifyResult> {
  const head = await store.auditHead();
  let after = 0;
  let count = 0;
  let first: number | undefined;
  let last: AuditEvent | undefined;
  for (;;) {
    const page = await store.auditRange(after, pageSize);
    if (!page.length) break;
    for (const json of page) {
      let e: AuditEvent;
      try {
        e = JSON.parse(json) as AuditEvent;
      } catch {
        return { ok: false, events: count, problem: `the event after seq ${after} is not JSON` };
      }
      const { hash: stored, ...body } = e;
      if (eventHash(body) !== stored) return { ok: false, events: count, first, problem: `event ${e.seq}: its content does not match its hash (changed after it was written)` };
      if (last) {
        if (e.seq !== last.seq + 1) return { ok: false, events: count, first, problem: `event ${e.seq} follows event ${last.seq}: events are missing` };
        if (e.prev !== last.hash) return { ok: false, events: count, first, problem: `event ${e.seq}: prev does not match event ${last.seq}'s hash` };
      }
      first ??= e.seq;
      last = e;
      count++;
      after = e.seq;
    }
  }
  if (!last) return head ? { ok: false, events: 0, problem: `the head names event ${head.split(' ')[0]} but the log is empty` } : { ok: true, events: 0 };
  if (head !== `${last.seq} ${last.hash}`) return { ok: false, events: count, first, last: last.seq, problem: `the head (${head.split(' ')[0]}) is not the last event (${last.seq}): events were removed from the end` };
  return { ok: true, events: count, first, last: last.seq };
}
