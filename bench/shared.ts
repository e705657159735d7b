// What the benchmarks share: an older commit's gateway built beside this checkout (before/after runs), whether a
// tool is installed, the kernel's clock tick, and one-line stops for a benchmark asked for wrongly.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
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

/** Whether a command is installed: only a missing binary throws ENOENT (`wrk --version` exits 1 after printing). */
export function has(cmd: string, args: string[]): boolean {
  try {
    execFileSync(cmd, args, { stdio: 'ignore' });
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code !== 'ENOENT';
  }
}

/** Clock ticks per second, the unit of CPU times in /proc/<pid>/stat. */
export const CLOCK_TICKS = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();

/**
 * utime + stime in seconds of a process (or of one of its threads, `thread` its id) from /proc, or undefined
 * elsewhere. After "pid (comm) ", utime and stime are fields 12 and 13 (0-based), in clock ticks.
 */
export function cpuSeconds(pid: number | undefined, thread?: number): number | undefined {
  try {
    const fields = readFileSync(thread === undefined ? `/proc/${pid}/stat` : `/proc/${pid}/task/${thread}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
  } catch {
    return undefined;
  }
}
