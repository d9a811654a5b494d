// Ctrl-C ends every command with exit status 130 (issue 27 item 28): train after keeping a
// checkpoint, generate at once; `train --json | head -1` ends quietly and leaves a resumable run, not
// an empty folder (item 33). Run on the tiny model, as a user runs the CLI.
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { makeSubjectPhotos, makeTinyModel } from '../../scripts/make-tiny-model.ts';
import { BIN, REPO, runCliClosingStdout, STACK } from './run.ts';
import { tempDir } from '../helpers/tempDir.ts';

const tmp = tempDir('singlora-cancel');
let tiny = '';

beforeAll(async () => {
  tiny = await makeTinyModel();
  await makeSubjectPhotos(join(tmp, 'photos'));
});

/** `train` on the tiny model and the photos, 500 steps, into `out`. */
function trainArgs(out: string): string[] {
  return ['train', '--base', tiny, '--images', join(tmp, 'photos'), '--out', out, '--steps', '500'];
}

/**
 * Runs the CLI with --json, sends SIGINT once a stdout line matches `when`, and resolves with the
 * exit status (null when a signal killed it), the signal, and the output.
 */
function interrupt(
  args: readonly string[],
  when: RegExp,
): Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }> {
  return new Promise((done, fail) => {
    const child = spawn(process.execPath, [BIN, ...args, '--json'], {
      cwd: REPO,
      env: { ...process.env, SINGLORA_DEBUG: '' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    let sent = false;
    child.stdout.on('data', (d) => {
      stdout += d;
      if (!sent && when.test(stdout)) {
        sent = true;
        child.kill('SIGINT');
      }
    });
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 600_000);
    child.on('error', fail);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      done({ code, signal, stdout, stderr });
    });
  });
}

describe('a cancelled command exits with 130', () => {
  it('train: SIGINT after the first step keeps a checkpoint, reports where it stopped, exits 130', {
    timeout: 600_000,
  }, async () => {
    const out = join(tmp, 'run');
    const r = await interrupt(
      [...trainArgs(out), '--checkpoint-every', '1000', '--sample-every', '0'],
      /"event":"step"/,
    );
    expect(r.stderr).not.toMatch(STACK);
    expect({ code: r.code, signal: r.signal }).toEqual({ code: 130, signal: null });
    const result = JSON.parse(r.stdout.trim().split('\n').pop()!);
    expect(result).toMatchObject({ event: 'result', status: 'cancelled' });
    expect(result.step).toBeLessThan(500);
    expect(readdirSync(join(out, 'checkpoints')).some((n) => n.startsWith('step-'))).toBe(true);
  });

  it('generate: SIGINT during sampling exits 130 and writes no image', { timeout: 600_000 }, async () => {
    const out = join(tmp, 'images');
    const r = await interrupt(
      ['generate', '--base', tiny, '--prompt', 'a photo of a dog', '--steps', '200', '--count', '3', '--out', out],
      /"event":"step"/,
    );
    expect({ code: r.code, signal: r.signal }).toEqual({ code: 130, signal: null });
    expect(existsSync(out) ? readdirSync(out).filter((f) => f.endsWith('.png')) : []).toEqual([]);
  });

  it('train --json | head -1: a closed stdout ends quietly (exit 0), after keeping a checkpoint', {
    timeout: 600_000,
  }, async () => {
    const out = join(tmp, 'epipe-run');
    const { code, stderr } = await runCliClosingStdout([...trainArgs(out), '--sample-every', '0', '--json']);
    expect(stderr).toBe('');
    expect(code).toBe(0);
    const manifest = JSON.parse(readFileSync(join(out, 'run.json'), 'utf8'));
    expect(manifest.status).toBe('cancelled');
    expect(readdirSync(join(out, 'checkpoints')).some((n) => n.startsWith('step-'))).toBe(true);
  });
});
