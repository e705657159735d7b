// An older commit's gateway built beside this checkout, for before/after runs (`npm run bench`, `npm run bench:ab`).
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

/**
 * BENCH_BASELINE=<commit>: that commit's gateway, built once into a temporary directory (`git archive` of the commit,
 * this checkout's node_modules linked in, its own `npm run build`), so a before/after is one command. The build is
 * kept under the system's temp directory by commit hash and reused by later runs.
 */
export function buildBaseline(commit: string): { name: string; entry: string } {
  let sha: string;
  try {
    sha = execFileSync('git', ['rev-parse', '--verify', '--quiet', `${commit}^{commit}`], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    throw new BenchError(`BENCH_BASELINE=${commit} names no commit in this repository (try a hash, a tag or HEAD~1)`);
  }
  const dir = join(tmpdir(), `fgw-bench-baseline-${sha}`);
  const entry = join(dir, 'dist', 'server.js');
  if (!existsSync(entry)) {
    process.stderr.write(`building ${commit} (${sha.slice(0, 7)}) in ${dir}\n`);
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir, { recursive: true });
    execFileSync('sh', ['-c', `git archive ${sha} | tar -x -C ${JSON.stringify(dir)}`], { stdio: 'inherit' });
    symlinkSync(resolve('node_modules'), join(dir, 'node_modules'), 'dir');
    execFileSync('npm', ['run', '-s', 'build'], { cwd: dir, stdio: 'inherit' });
  }
  // A kept build may have been made from another checkout, since moved or deleted: it runs on this one's packages.
  const modules = join(dir, 'node_modules');
  if (!existsSync(modules)) {
    rmSync(modules, { force: true });
    symlinkSync(resolve('node_modules'), modules, 'dir');
  }
  return { name: commit.length > 12 ? sha.slice(0, 7) : commit, entry };
}


/** A mistake in how a benchmark was asked for: stops it with one line, not a stack trace. */
export class BenchError extends Error {}

/** Runs a benchmark's main; a BenchError ends it with its message on one line and exit code 2. */
export async function runBench(name: string, main: () => Promise<void>): Promise<void> {
  try {
    await main();
  } catch (err) {
    if (!(err instanceof BenchError)) throw err;
    process.stderr.write(`${name}: ${err.message}\n`);
    process.exitCode = 2;
  }
}
