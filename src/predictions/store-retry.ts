// Store writes that must not be lost to a Redis blip (a paid upstream job exists by then).
import { setTimeout as sleep } from 'node:timers/promises';
import { GatewayError } from '../errors.js';

/** How long a write keeps retrying while the store is unavailable. */
const RECORD_RETRY_MS = 10_000;

/** Runs a store call, retrying on STORE_UNAVAILABLE (Redis reconnecting) for up to RECORD_RETRY_MS. */
export async function untilStored<T>(write: () => Promise<T>): Promise<T> {
  const until = Date.now() + RECORD_RETRY_MS;
  for (let pause = 50; ; pause = Math.min(pause * 2, 500)) {
    try {
      return await write();
    } catch (err) {
      if (!(err instanceof GatewayError && err.code === 'STORE_UNAVAILABLE') || Date.now() + pause > until) throw err;
      await sleep(pause);
    }
  }
}
