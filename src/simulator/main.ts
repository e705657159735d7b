// Runs the FuhuAPI simulator standalone (demo, benchmark, docker-compose demo profile).
import { createSimulator } from './simulator.js';

function intFromEnv(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 0) throw new Error(`${name} must be a non-negative integer, got ${JSON.stringify(raw)}`);
  return n;
}

const port = intFromEnv('SIMULATOR_PORT', 8090);
const host = process.env.SIMULATOR_HOST || '127.0.0.1';
const apiKey = process.env.SIMULATOR_API_KEY || 'sim-key';
const stepMs = intFromEnv('SIMULATOR_STEP_MS', 1000);
const latencyMs = intFromEnv('SIMULATOR_LATENCY_MS', 0);

const sim = createSimulator({ apiKey, stepMs, latencyMs });
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
