/** Runs the `singlora` CLI as a user does (node bin/singlora.js, through tsx), capturing everything. */
import { spawn } from 'node:child_process';
import { BIN, REPO } from '../../scripts/runCli.ts';

export { BIN, type CliResult, REPO, runCli } from '../../scripts/runCli.ts';

/**
 * Runs the CLI and closes its stdout at the first output, as `| head -1` does, then waits for it
 * to end: its exit status and what it wrote to stderr.
 */
export async function runCliClosingStdout(args: readonly string[]): Promise<{ code: number | null; stderr: string }> {
  const child = spawn(process.execPath, [BIN, ...args], { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  await new Promise<void>((resolve) => child.stdout.once('data', () => resolve()));
  child.stdout.destroy(); // `| head -1`
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  return { code, stderr };
}

/** A stack trace line ("    at foo (file:1:2)") or minified source dumped by an uncaught error. */
export const STACK = /^\s+at |node:internal|\.js:\d+$/m;
