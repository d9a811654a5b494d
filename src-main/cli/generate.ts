/** `singlora generate`: text-to-image with optional adapters, PNGs with A1111 parameters + JSON sidecars. */
import { Command, Option } from 'commander';
import { SCHEDULERS } from '../api/schemas.ts';
import { generateImages } from '../engine/pipeline/generate.ts';
import { action, emitJsonLine, inferenceOptions, printResult, progressBar, startBackend, withCommon, withInference, type GlobalOptions, type InferenceCliOptions } from './common.ts';

interface GenerateCliOptions extends GlobalOptions, InferenceCliOptions {
  base: string;
  prompt: string;
  negative?: string;
  steps: number;
  scheduler: (typeof SCHEDULERS)[number];
  guidance: number;
  seed: number;
  width: number;
  height: number;
  count: number;
  clipSkip?: number;
  adapter?: string[];
  out: string;
}

const num = (v: string) => {
  const n = Number(v);
  if (!Number.isFinite(n)) throw new Error(`expected a number, got '${v}'`);
  return n;
};

/** `file[:strength]` -> {path, strength}; a Windows drive letter is not a strength. */
export function parseAdapterArg(v: string): { path: string; strength: number } {
  const m = /^(.*):(-?\d+(?:\.\d+)?)$/.exec(v);
  if (m && m[1].length > 1) return { path: m[1], strength: Number(m[2]) };
  return { path: v, strength: 1 };
}

export function register(program: Command): void {
  withInference(withCommon(
    program
      .command('generate')
      .description('generate images from a prompt, optionally with adapters')
      .requiredOption('--base <model>', 'base model: a diffusers folder or a single-file .safetensors')
      .requiredOption('--prompt <text>', 'prompt')
      .option('--negative <text>', 'negative prompt', '')
      .option('--steps <n>', 'sampling steps', num, 25)
      .addOption(new Option('--scheduler <name>', 'sampler').choices([...SCHEDULERS]).default('dpmpp-2m-karras'))
      .option('--guidance <g>', 'classifier-free guidance scale', num, 7.5)
      .option('--seed <n>', 'seed (-1: random); image i uses seed + i', num, -1)
      .option('--width <px>', 'width, a multiple of 8', num, 512)
      .option('--height <px>', 'height, a multiple of 8', num, 512)
      .option('--count <n>', 'number of images', num, 1)
      .option('--clip-skip <n>', "diffusers clip_skip (A1111's 'Clip skip' minus 1)", num)
      .option('--adapter <file[:strength]>', 'adapter file (native, kohya or diffusers LoRA); repeatable', (v: string, prev: string[] = []) => [...prev, v])
      .requiredOption('--out <dir>', 'output folder'),
  )).action(
    action(async (o: GenerateCliOptions) => {
      await startBackend(o);
      const total = o.count * o.steps;
      const bar = progressBar(o, 'step', total);
      try {
        const files = await generateImages(
          {
            base: o.base,
            settings: { prompt: o.prompt, negativePrompt: o.negative ?? '', steps: o.steps, scheduler: o.scheduler, guidanceScale: o.guidance, seed: o.seed, width: o.width, height: o.height, count: o.count, clipSkip: o.clipSkip ?? 0 },
            adapters: (o.adapter ?? []).map(parseAdapterArg),
            outDir: o.out,
            inference: inferenceOptions(o),
          },
          {
            onAdapters: (s) => (o.json ? s.forEach((summary) => emitJsonLine(o, { event: 'adapter', summary })) : s.forEach((l) => process.stderr.write(`${l}\n`))),
            onStep: (i) => {
              emitJsonLine(o, { event: 'step', image: i.image, images: i.images, step: i.step, steps: i.steps });
              bar.update(i.image * i.steps + i.step);
            },
            onImage: (img) => emitJsonLine(o, { event: 'image', file: img.file, seed: img.sidecar.settings.seed }),
          },
        );
        bar.stop();
        printResult(o, { event: 'result', files: files.map((f) => f.file), seeds: files.map((f) => f.sidecar.settings.seed) }, () => files.map((f) => `${f.file}  (seed ${f.sidecar.settings.seed})`).join('\n'));
      } finally {
        bar.stop();
      }
    }),
  );
}
