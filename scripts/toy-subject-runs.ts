/**
 * The issue-26 table: each toy subject trained with the base model's defaults (no training
 * flags but the token, class and seed) for each seed, then `singlora eval --run R --json`; prints
 * one markdown row per run (base, each checkpoint with its background share, the noise band, the
 * pick and its gain) and writes every evaluation to OUT/results.json.
 *
 *   npx tsx scripts/toy-subject-runs.ts --base models/toy-sd --out DIR [--seeds 1,2,3]
 *     [--subjects sks-ball,qrv-triangle,vkx-square,zwx-square] [--images-per-prompt 6] [-- extra train flags]
 *
 * sks-ball uses models/toy-sd-subject; the others are drawn by scripts/toy-subjects.ts into OUT/photos.
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Evaluation } from '../src-main/api/schemas.ts';
import { atomicWriteFile } from '../src-main/engine/io/atomic.ts';
import { REPO_ROOT } from '../src-main/engine/paths.ts';
import { TOY_SUBJECT_DIR } from '../src-main/engine/toy/toyModel.ts';

const CLI = join(REPO_ROOT, 'bin/singlora.js');
const pct = (x: number | undefined) => (x === undefined ? '?' : `${(100 * x).toFixed(0)}%`);

function run(args: string[]): string {
  return execFileSync(process.execPath, [CLI, ...args], { encoding: 'utf8', maxBuffer: 64 << 20 });
}

/** One markdown row of an evaluation. */
function row(subject: string, seed: number, e: Evaluation, seconds: number): string {
  const rows = e.rows.map((r) => `${r.dino.toFixed(3)} (${pct(r.prompt)})`).join(' / ');
  const best = e.rows.find((r) => r.step === e.best);
  const pick = best
    ? `step ${best.step} (+${(best.dino - e.baseline.dino).toFixed(3)}, bg ${pct(best.prompt)})`
    : 'none';
  return `| ${subject} | ${seed} | ${e.baseline.dino.toFixed(3)} (${pct(e.baseline.prompt)}) | ${rows} | ${e.noiseBand?.toFixed(3) ?? '?'} | ${pick} | ${seconds.toFixed(0)} |`;
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const dash = argv.indexOf('--');
  const args = dash >= 0 ? argv.slice(0, dash) : argv;
  const extra = dash >= 0 ? argv.slice(dash + 1) : [];
  const arg = (name: string, fallback?: string) => {
    const i = args.indexOf(name);
    const v = i >= 0 ? args[i + 1] : fallback;
    if (v === undefined) throw new Error(`toy-subject-runs: expected ${name}`);
    return v;
  };
  const base = resolve(arg('--base'));
  const out = resolve(arg('--out'));
  const seeds = arg('--seeds', '1,2,3').split(',').map(Number);
  const subjects = arg('--subjects', 'sks-ball,qrv-triangle,vkx-square,zwx-square').split(',');
  const perPrompt = arg('--images-per-prompt', '6');
  if (!existsSync(join(out, 'photos')))
    execFileSync(process.execPath, [
      '--import',
      'tsx',
      join(REPO_ROOT, 'scripts/toy-subjects.ts'),
      '--out',
      join(out, 'photos'),
    ]);
  const results: Array<{ subject: string; seed: number; evaluation: Evaluation; seconds: number }> = [];
  console.log(
    '| subject | seed | base (bg) | checkpoints (bg) | noise band | pick | s |\n| --- | ---: | --- | --- | ---: | --- | ---: |',
  );
  for (const subject of subjects) {
    const [token, cls] = subject.split('-');
    const photos = subject === 'sks-ball' ? TOY_SUBJECT_DIR : join(out, 'photos', subject);
    for (const seed of seeds) {
      const runDir = join(out, `${subject}-seed${seed}`);
      await rm(runDir, { recursive: true, force: true });
      const t0 = performance.now();
      run([
        'train',
        '--base',
        base,
        '--images',
        photos,
        '--out',
        runDir,
        '--token',
        token,
        '--class',
        cls,
        '--seed',
        String(seed),
        '--sample-every',
        '0',
        ...extra,
      ]);
      const lines = run(['eval', '--run', runDir, '--photos', photos, '--images-per-prompt', perPrompt, '--json'])
        .trim()
        .split('\n');
      const evaluation = JSON.parse(lines[lines.length - 1]) as Evaluation;
      const seconds = (performance.now() - t0) / 1000;
      results.push({ subject, seed, evaluation, seconds });
      console.log(row(subject, seed, evaluation, seconds));
      await atomicWriteFile(join(out, 'results.json'), `${JSON.stringify({ base, extra, results }, null, 2)}\n`);
    }
  }
}

await main();
