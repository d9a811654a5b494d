/**
 * `singlora demo` (= `npm run demo`): the whole product on the bundled tiny model, with nothing
 * but the repository: build the tiny model, make a few synthetic subject photos, train a
 * SingLoRA adapter with checkpoints, score the checkpoints with the tiny DINO-shaped ONNX model,
 * generate with the best one, export kohya and native files, and print a summary.
 *
 * `--base <SD 1.5 folder or .safetensors>` runs the same steps on real weights (with real photos
 * from `--photos`, and the real DINO model from `singlora models download dino`).
 */
import type { Command } from 'commander';
import { existsSync, readdirSync } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { REPO_ROOT } from '../engine/paths.ts';
import { listImageFiles } from './eval.ts';
import { action, emitJsonLine, parse, printResult, progressBar, requireExists, requireFile, requireFolder, requireNotFile, startBackend, UsageError, withCommon, type GlobalOptions } from './common.ts';

interface DemoOptions extends GlobalOptions {
  base?: string;
  configDir?: string;
  photos?: string;
  out: string;
  steps: number;
  dinoModel?: string;
  force?: boolean;
}

/** Marks a folder the demo made: only then does a later demo replace what is in it. */
const DEMO_MARKER = '.singlora-demo';
/** What the demo writes in --out, and so what it replaces on the next run. */
const DEMO_OUTPUTS = ['run', 'images', 'photos', 'sks-ball.kohya.safetensors', 'sks-ball.singlora.safetensors'];

/**
 * Checks every option before anything is written, and makes --out ready: a new folder, an
 * earlier demo's folder (its own outputs are replaced), or, with --force, any folder (the
 * demo's outputs in it are replaced; nothing else is touched).
 */
export async function prepareDemoOut(o: DemoOptions): Promise<string> {
  const out = resolve(o.out);
  requireNotFile(out, '--out');
  if (o.base) requireExists(o.base, '--base');
  if (o.configDir) requireFolder(o.configDir, '--config-dir');
  if (o.photos) {
    requireFolder(o.photos, '--photos');
    try {
      listImageFiles(o.photos);
    } catch (err) {
      throw new UsageError(`--photos: ${(err as Error).message}`);
    }
  }
  if (o.dinoModel) requireFile(o.dinoModel, '--dino-model', 'an .onnx file');
  const entries = existsSync(out) ? readdirSync(out) : [];
  const ours = entries.includes(DEMO_MARKER);
  if (entries.length && !ours && !o.force) {
    throw new UsageError(`--out: ${o.out} is not empty and was not made by the demo; choose a new folder, or add --force to write the demo's outputs (${DEMO_OUTPUTS.join(', ')}) into it`);
  }
  if (o.photos && resolve(o.photos) === join(out, 'photos')) throw new UsageError(`--photos: ${o.photos} is inside --out, where the demo writes its own photos; choose another --out`);
  for (const name of DEMO_OUTPUTS) {
    // Only what the demo writes; synthetic photos only when the demo makes them.
    if (name === 'photos' && o.photos) continue;
    if (entries.includes(name)) await rm(join(out, name), { recursive: true, force: true });
  }
  await mkdir(out, { recursive: true });
  await writeFile(join(out, DEMO_MARKER), 'made by `singlora demo`: a later demo replaces the outputs in this folder\n');
  return out;
}

export function register(program: Command): void {
  withCommon(
    program
      .command('demo')
      .description('train, score, generate and export on the bundled tiny model (or on --base) in a few minutes')
      .option('--base <model>', 'run on this base model instead of the bundled tiny one')
      .option('--config-dir <dir>', 'for a single-file --base: a diffusers SD 1.5 folder to take configs, tokenizer and scheduler from')
      .option('--photos <dir>', 'subject photos (default: synthetic ones)')
      .option('--out <dir>', 'output folder: new, or one an earlier demo made (its outputs are replaced)', join(REPO_ROOT, 'demo-output'))
      .option('--force', "write into a non-empty --out the demo did not make (only the demo's own outputs in it are replaced)")
      .option('--steps <n>', 'training steps', parse.int(2, 100_000), 40)
      .option('--dino-model <file.onnx>', 'DINO model (default: the tiny bundled one, or models/dino for --base)'),
  ).action(
    action(async (o: DemoOptions) => {
      const out = await prepareDemoOut(o);
      const { makeSubjectPhotos, makeTinyModel, TINY_DINO } = await import('../../scripts/make-tiny-model.ts');
      const { exportAdapter } = await import('../engine/adapters/exportAdapter.ts');
      const { evaluateRun } = await import('../engine/eval/evaluateRun.ts');
      const { generateImages } = await import('../engine/pipeline/generate.ts');
      const { train } = await import('../engine/train/trainer.ts');
      const t0 = performance.now();
      const times: Record<string, number> = {};
      const lap = (name: string, since: number) => (times[name] = Math.round(performance.now() - since));
      const say = (msg: string) => (o.json ? emitJsonLine(o, { event: 'stage', message: msg }) : process.stderr.write(`\n== ${msg}\n`));
      const tiny = !o.base;
      const backend = await startBackend(o);
      if (tiny) {
        say('the bundled tiny model: a Stable-Diffusion-1.x-shaped pipeline with random weights. It runs every step of the real thing in seconds, and makes no meaningful pictures. Use --base <SD 1.5 folder or .safetensors> for real ones.');
      }

      let t = performance.now();
      const base = o.base ?? (await makeTinyModel());
      lap('model', t);
      const photos = o.photos ?? join(out, 'photos');
      if (!o.photos) await makeSubjectPhotos(photos);
      const resolution = tiny ? 64 : 512;
      const steps = o.steps;

      say(`training SingLoRA (rank 8) for ${steps} steps on ${backend.name}`);
      t = performance.now();
      const runDir = join(out, 'run');
      let bar: ReturnType<typeof progressBar> | null = null;
      const baseOptions = o.configDir ? { configDir: o.configDir } : undefined;
      const result = await train(
        {
          base,
          baseOptions,
          photos,
          runDir,
          settings: {
            method: 'singlora',
            steps,
            rank: 8,
            alpha: tiny ? 32 : 8,
            rampSteps: Math.max(1, Math.floor(steps / 4)),
            learningRate: tiny ? 1e-2 : 1e-4,
            resolution,
            triggerToken: 'sks',
            classWord: 'ball',
            checkpointEvery: Math.max(1, Math.floor(steps / 2)),
            sampleEvery: steps,
            sampleSteps: tiny ? 10 : 25,
            seed: 42,
          },
        },
        {
          onEvent: (e) => {
            emitJsonLine(o, e as Record<string, unknown>);
            if (e.event === 'step' && !o.json) {
              bar ??= progressBar(o, 'step', e.steps);
              bar.update(e.step, { loss: e.smoothed.toFixed(4) }, e.its);
            }
          },
        },
      );
      (bar as ReturnType<typeof progressBar> | null)?.stop();
      lap('train', t);
      const m = result.manifest;
      if (m.status !== 'completed') throw new Error(`training ended ${m.status}: ${m.error}`);

      say('scoring the base model and each checkpoint with DINO');
      t = performance.now();
      const dinoModel = o.dinoModel ?? (tiny ? TINY_DINO : undefined);
      let evalBar: ReturnType<typeof progressBar> | null = null;
      const evaluation = await evaluateRun(
        {
          runDir,
          photos,
          checkpoints: 'all',
          prompts: tiny ? ['a photo of sks ball', 'a photo of sks ball on the beach', 'a photo of sks ball in the snow'] : undefined,
          imagesPerPrompt: tiny ? 1 : 4,
          steps: tiny ? 10 : 25,
          subjectType: 'object',
          dinoModel,
          baseOptions,
        },
        {
          onProgress: (done, total, label) => {
            emitJsonLine(o, { event: 'progress', stage: 'evaluate', done, total, label });
            evalBar ??= progressBar(o, 'image', total);
            evalBar.update(done, { at: label });
          },
        },
      );
      (evalBar as ReturnType<typeof progressBar> | null)?.stop();
      lap('evaluate', t);
      const best = m.checkpoints.find((c) => c.step === (evaluation.chosen ?? evaluation.best)) ?? m.checkpoints[m.checkpoints.length - 1];

      say(`generating with the best checkpoint (step ${best.step})`);
      t = performance.now();
      const images = await generateImages({
        base,
        baseOptions,
        settings: { prompt: 'a photo of sks ball on a wooden table', negativePrompt: 'blurry', steps: tiny ? 15 : 25, scheduler: 'dpmpp-2m-karras', seed: 1234, width: resolution, height: resolution, count: 2 },
        adapters: [{ path: join(runDir, best.adapter), strength: 1 }],
        outDir: join(out, 'images'),
      });
      lap('generate', t);

      say('exporting kohya (A1111 / ComfyUI) and native SingLoRA files');
      t = performance.now();
      const kohya = await exportAdapter({ adapter: join(runDir, best.adapter), format: 'kohya', out: join(out, 'sks-ball.kohya.safetensors') });
      const native = await exportAdapter({ adapter: join(runDir, best.adapter), format: 'singlora', out: join(out, 'sks-ball.singlora.safetensors') });
      lap('export', t);

      const first = m.losses[0];
      const last = m.losses[m.losses.length - 1];
      const summary = {
        event: 'summary',
        backend: backend.name,
        base,
        tinyModel: tiny,
        run: runDir,
        steps: m.step,
        loss: { first: first.loss, last: last.loss, smoothedLast: last.smoothed, fixedNoiseStart: result.fixedLoss?.start ?? null, fixedNoiseEnd: result.fixedLoss?.end ?? null },
        msPerStep: m.timing.msPerStep,
        scores: { baseline: evaluation.baseline, rows: evaluation.rows, best: evaluation.best, rule: evaluation.rule },
        images: images.map((i) => i.file),
        samples: m.samples.map((s) => join(runDir, s.file)),
        exports: { kohya: kohya.path, native: native.path },
        timingsMs: { ...times, total: Math.round(performance.now() - t0) },
      };
      printResult(o, summary, () =>
        [
          '',
          `SingLoRA Studio demo finished in ${(summary.timingsMs.total / 1000).toFixed(1)} s on ${backend.name}`,
          `  base model       ${base}${tiny ? '  (tiny, random weights: the pictures are noise by design)' : ''}`,
          `  training         ${m.step} steps, ${m.timing.msPerStep ? (1000 / m.timing.msPerStep).toFixed(2) : '?'} it/s; loss ${first.loss.toFixed(4)} -> ${last.loss.toFixed(4)} (fixed-noise loss ${result.fixedLoss?.start.toFixed(4)} -> ${result.fixedLoss?.end.toFixed(4)})`,
          `  run folder       ${runDir}`,
          `  DINO scores      base ${evaluation.baseline.dino.toFixed(4)}; ${evaluation.rows.map((r) => `step ${r.step}: ${r.dino.toFixed(4)}`).join(', ')}  -> best: step ${evaluation.best}`,
          `  images           ${images.map((i) => i.file).join(', ')}`,
          `  kohya LoRA       ${kohya.path}  (A1111/Forge: models/Lora, prompt <lora:sks-ball.kohya:1>; ComfyUI: LoraLoader)`,
          `  native SingLoRA  ${native.path}`,
          `  timings (ms)     ${Object.entries(summary.timingsMs).map(([k, v]) => `${k} ${v}`).join(', ')}`,
          '',
          tiny ? 'Next: real weights. Put SD 1.5 (diffusers folder or v1-5-pruned-emaonly.safetensors) somewhere and run\n  npm run demo -- --base <path> --photos <your photos>\nsee models/README.md.' : '',
        ].join('\n'),
      );
    }),
  );
}
