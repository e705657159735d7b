// `npm run bench:logger`: what one access line costs on the gateway's logger, by destination, in one run. Lines go
// to /dev/null, 32 per turn of the event loop (a loaded gateway with 32 connections writes about that many).
import { pino } from 'pino';
import { batchLines, loggerOptions } from '../src/logger.js';

const LINES = 200_000;
const PER_TURN = 32;
const line = (i: number) => ({
  method: 'GET',
  url: '/replicate/v1/predictions/czygeot2qwcleqwrbyshqj73mf',
  statusCode: 200,
  responseTime: 0.52 + (i % 7),
  gatewayMs: 0.4,
  cache: 'HIT',
});

async function perLine(dest: { write(s: string): void }): Promise<number> {
  const log = pino(loggerOptions('info'), dest);
  const start = process.hrtime.bigint();
  for (let i = 0; i < LINES; i++) {
    // As a request does: a child with its request id, the tenant bound in place, then the access line.
    const child = log.child({ reqId: `2f1c9a0e-5b7d-4e7a-9c1b-${String(i).padStart(12, '0')}` });
    child.setBindings({ tenant: 'bench' });
    child.info(line(i), 'request completed');
    if (i % PER_TURN === PER_TURN - 1) await new Promise(setImmediate);
  }
  return Number(process.hrtime.bigint() - start) / LINES / 1000;
}

const devNull = (sync: boolean) => pino.destination({ dest: '/dev/null', sync });
const variants: [string, () => { write(s: string): void }][] = [
  ['no destination (building the line only)', () => ({ write() {} })],
  ['sonic-boom, asynchronous, a write per line (the gateway before)', () => devNull(false)],
  ['sonic-boom, synchronous, a write per line', () => devNull(true)],
  ['sonic-boom, asynchronous, one write per turn (batchLines)', () => batchLines(devNull(false))],
  ['sonic-boom, synchronous, one write per turn (batchLines, the gateway)', () => batchLines(devNull(true))],
];
const results = new Map<string, number[]>();
// Three rounds, interleaved: the first warms the JIT, the median of the rest is printed.
for (let round = 0; round < 3; round++) {
  for (const [name, make] of variants) {
    const us = await perLine(make());
    if (round > 0) results.set(name, [...(results.get(name) ?? []), us]);
  }
}
process.stdout.write('| destination | µs per access line |\n|---|---:|\n');
for (const [name, us] of results) process.stdout.write(`| ${name} | ${Math.min(...us).toFixed(2)}–${Math.max(...us).toFixed(2)} |\n`);
