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
  const sha = execFileSync('git', ['rev-parse', '--verify', `${commit}^{commit}`], { encoding: 'utf8' }).trim();
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

