// What the store keeps of an API-managed tenant and of an API-issued key (src/store/tenant-store.ts holds them as JSON).
import { z } from 'zod';
import { TenantSchema, type Tenant } from '../access/tenants.js';

/** Every setting of the tenants file except the id and the keys (keys are issued through the API). */
export const TenantSettingsSchema = TenantSchema.omit({ id: true, keys: true });
export type TenantSettings = z.output<typeof TenantSettingsSchema>;

export interface TenantRecord {
  id: string;
  rev: number;
  created_at: string;
  updated_at: string;
  settings: TenantSettings;
}

export type KeyRole = 'member' | 'admin';

export interface KeyRecord {
  id: string;
  tenant: string;
  rev: number;
  name: string | null;
  role: KeyRole;
  created_at: string;
  expires_at: string | null;
  rotated_at: string | null;
  /** SHA-256 (hex) of the key: the secret itself is never stored. */
  hash: string;
  /** The secret before the last rotation, valid until `until` (ISO). */
  previous: { hash: string; until: string } | null;
}

export function tenantOf(r: TenantRecord): Tenant {
  return Object.freeze({ id: r.id, ...r.settings });
}
