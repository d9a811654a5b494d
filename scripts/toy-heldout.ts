/**
 * A held-out check of toy-subject-runs.ts's picks: the evaluation picks the best of several
 * checkpoints on the same 12 images it reports, so its gain is biased upwards. This scores the
 * base model and each run's picked checkpoint again on other seeds (the same probes) and prints
 * one markdown row per run.
 *
 *   npx tsx scripts/toy-heldout.ts --out DIR [--seeds 20] [--from 7001]
 *
 * DIR is a toy-subject-runs.ts output folder (results.json, photos/, one folder per run).
 */
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Evaluation } from '../src-main/api/schemas.ts';
import { listImageFiles } from '../src-main/cli/eval.ts';
import { initBackend } from '../src-main/engine/backend/tf.ts';
import { readToyPhotos, scoreToyModel, type ToyScore, toyProbes } from '../src-main/engine/eval/toyEvaluate.ts';
import { StableDiffusion } from '../src-main/engine/pipeline/stableDiffusion.ts';
import { TOY_SUBJECT_DIR } from '../src-main/engine/toy/toyModel.ts';
import { checkpointName } from '../src-main/engine/train/runFiles.ts';

interface Results {
  base: string;
  results: Array<{ subject: string; seed: number; evaluation: Evaluation }>;
}

const pct = (x: number | undefined) => (x === undefined ? '?' : `${(100 * x).toFixed(0)}%`);
const cell = (s: ToyScore) => `${s.subject.toFixed(3)} (${pct(s.prompt)})`;
const signed = (x: number) => `${x >= 0 ? '+' : ''}${x.toFixed(3)}`;

function arg(args: string[], name: string, fallback?: string): string {
  const i = args.indexOf(name);
  const v = i >= 0 ? args[i + 1] : fallback;
  if (v === undefined) throw new Error(`toy-heldout: expected ${name}`);
  return v;
}

/** The adapter file of a run's checkpoint at `step`, as toy-subject-runs.ts lays the runs out. */
function checkpointFile(out: string, subject: string, seed: number, step: number): string {
  return join(out, `${subject}-seed${seed}`, 'checkpoints', checkpointName(step), 'adapter.safetensors');
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const out = resolve(arg(args, '--out'));
  const from = Number(arg(args, '--from', '7001'));
  const seeds = Array.from({ length: Number(arg(args, '--seeds', '20')) }, (_, i) => from + i);
  const { base, results } = JSON.parse(readFileSync(join(out, 'results.json'), 'utf8')) as Results;
  await initBackend();
  const sd = await StableDiffusion.load(base);
  const baselines = new Map<string, ToyScore>();
  console.log(`held-out seeds ${from}-${from + seeds.length - 1}, 2 probes each`);
  console.log('| subject | seed | base (bg) | pick | held out: base (bg) | pick (bg) | gain |');
  console.log('| --- | ---: | --- | --- | --- | --- | ---: |');
  try {
    for (const { subject, seed, evaluation: e } of results) {
      const [token, cls] = subject.split('-');
      const photos = await readToyPhotos(
        listImageFiles(subject === 'sks-ball' ? TOY_SUBJECT_DIR : join(out, 'photos', subject)),
      );
      const probes = toyProbes(token, cls, photos);
      if (!baselines.has(subject)) baselines.set(subject, await scoreToyModel(sd, { photos, probes, seeds }));
      const b = baselines.get(subject)!;
      const best = e.rows.find((r) => r.step === e.best);
      const pick = best ? `step ${best.step} ${signed(best.dino - e.baseline.dino)}` : 'none';
      const head = `| ${subject} | ${seed} | ${e.baseline.dino.toFixed(3)} (${pct(e.baseline.prompt)}) | ${pick}`;
      if (!best || best.step === null) {
        console.log(`${head} | ${cell(b)} | | |`);
        continue;
      }
      const adapter = checkpointFile(out, subject, seed, best.step);
      const a = await scoreToyModel(sd, { photos, probes, seeds, adapter });
      console.log(`${head} | ${cell(b)} | ${cell(a)} | ${signed(a.subject - b.subject)} |`);
    }
  } finally {
    sd.dispose();
  }
}

await main();
