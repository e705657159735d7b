// Runs the FuhuAPI simulator standalone (demo, benchmark, docker-compose demo profile).
import { intFromEnv } from '../config.js';
import { createSimulator } from './simulator.js';

const env = process.env;
const port = intFromEnv(env, 'SIMULATOR_PORT', 8090, 0, 65535);
const host = process.env.SIMULATOR_HOST || '127.0.0.1';
const apiKey = process.env.SIMULATOR_API_KEY || 'sim-key';
const stepMs = intFromEnv(env, 'SIMULATOR_STEP_MS', 1000);
const latencyMs = intFromEnv(env, 'SIMULATOR_LATENCY_MS', 0);

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
