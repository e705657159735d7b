// Runs the FuhuAPI simulator standalone (demo, benchmark, docker-compose demo profile).
import { intFromEnv } from '../config.js';
import { createSimulator } from './simulator.js';

const env = process.env;
const port = intFromEnv(env, 'SIMULATOR_PORT', 8090, 0, 65535);
const host = process.env.SIMULATOR_HOST || '127.0.0.1';
const apiKey = process.env.SIMULATOR_API_KEY || 'sim-key';
const stepMs = intFromEnv(env, 'SIMULATOR_STEP_MS', 1000);
const latencyMs = intFromEnv(env, 'SIMULATOR_LATENCY_MS', 0);

// SIMULATOR_BALANCE: stand for a new-api reseller account with this balance in USD (billing routes, quota 403 when empty).
const balanceRaw = process.env.SIMULATOR_BALANCE?.trim();
const balance = balanceRaw ? Number(balanceRaw) : undefined;
if (balance !== undefined && !Number.isFinite(balance)) throw new Error('invalid configuration: SIMULATOR_BALANCE must be a number');
const sim = createSimulator({ apiKey, stepMs, latencyMs, balance });
const url = await sim.listen(port, host);
console.log(`fuhu simulator listening on ${url} (stepMs=${stepMs}, latencyMs=${latencyMs})`);

let stopping = false;
async function shutdown(signal: string): Promise<void> {
  if (stopping) return;
  stopping = true;
  try {
    await sim.close();
    process.exit(0);
  } catch (err) {
    console.error(`simulator: error while closing on ${signal}`, err);
    process.exit(1);
  }
}
process.once('SIGTERM', () => void shutdown('SIGTERM'));
process.once('SIGINT', () => void shutdown('SIGINT'));
