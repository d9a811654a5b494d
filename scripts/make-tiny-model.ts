/**
 * Builds the bundled tiny model, `models/tiny-sd/`: a Stable-Diffusion-1.x-shaped diffusers
 * pipeline (UNet with cross-attention, KL VAE, CLIP text encoder, BPE tokenizer, PNDM scheduler
 * config) small enough to train in seconds on a CPU, with seeded random weights. It exercises
 * every code path of the real model and makes no meaningful pictures.
 *
 * Configs and tokenizer files come from test/fixtures/tiny-a (the reference fixture's shapes);
 * the weights are drawn here from the project's generator, so the folder is rebuilt identically
 * on every machine. Also copies the tiny DINO-shaped ONNX model to `models/dino-tiny/`.
 *
 *   npx tsx scripts/make-tiny-model.ts [--out models/tiny-sd] [--force]
 */
import { existsSync } from 'node:fs';
import { copyFile, mkdir, readFile, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { encodeImage } from '../src-main/engine/image/sharp.ts';
import { atomicWriteFile } from '../src-main/engine/io/atomic.ts';
import { writeSafetensors, type TensorToWrite } from '../src-main/engine/io/safetensors.ts';
import { AutoencoderKL } from '../src-main/engine/models/autoencoderKL.ts';
import { ClipTextModel, parseClipTextConfig } from '../src-main/engine/models/clipTextModel.ts';
import { randomSource, type Module } from '../src-main/engine/models/layers/module.ts';
import { UNet2DConditionModel } from '../src-main/engine/models/unet2dCondition.ts';
import { REPO_ROOT } from '../src-main/engine/paths.ts';
import { Rng } from '../src-main/engine/random.ts';

const SOURCE = join(REPO_ROOT, 'test/fixtures/tiny-a/model');
const DINO_SOURCE = join(REPO_ROOT, 'test/fixtures/dino-tiny/model.onnx');
export const TINY_MODEL_DIR = join(REPO_ROOT, 'models/tiny-sd');
export const TINY_DINO = join(REPO_ROOT, 'models/dino-tiny/model.onnx');
const SEED = 20250707;

async function writeComponent(model: Module, seed: number, file: string): Promise<void> {
  const source = randomSource(model, seed, 'tiny-sd');
  const tensors = new Map<string, TensorToWrite>();
  for (const [key] of model.namedParams())
    tensors.set(key, { shape: source.shape(key)!, read: () => source.read(key) });
  await writeSafetensors(file, tensors, { format: 'pt', source: 'scripts/make-tiny-model.ts' });
}

/** Builds the tiny pipeline at `out` unless it is already there (or `force`). Returns its path. */
export async function makeTinyModel(out = TINY_MODEL_DIR, force = false): Promise<string> {
  if (
    !force &&
    existsSync(join(out, 'model_index.json')) &&
    existsSync(join(out, 'unet/diffusion_pytorch_model.safetensors')) &&
    existsSync(TINY_DINO)
  )
    return out;
  if (force) await rm(out, { recursive: true, force: true });
  const readJson = async (p: string) => JSON.parse(await readFile(join(SOURCE, p), 'utf8')) as Record<string, unknown>;
  for (const dir of ['unet', 'vae', 'text_encoder', 'tokenizer', 'scheduler'])
    await mkdir(join(out, dir), { recursive: true });

  const unetConfig = await readJson('unet/config.json');
  const vaeConfig = await readJson('vae/config.json');
  const textConfig = await readJson('text_encoder/config.json');
  await writeComponent(
    UNet2DConditionModel.fromConfig(unetConfig),
    SEED + 1,
    join(out, 'unet/diffusion_pytorch_model.safetensors'),
  );
  await writeComponent(
    AutoencoderKL.fromConfig(vaeConfig),
    SEED + 2,
    join(out, 'vae/diffusion_pytorch_model.safetensors'),
  );
  await writeComponent(
    new ClipTextModel(parseClipTextConfig(textConfig)),
    SEED + 3,
    join(out, 'text_encoder/model.safetensors'),
  );
  for (const [name, cfg] of [
    ['unet/config.json', unetConfig],
    ['vae/config.json', vaeConfig],
    ['text_encoder/config.json', textConfig],
  ] as const) {
    await atomicWriteFile(join(out, name), `${JSON.stringify(cfg, null, 2)}\n`);
  }
  for (const f of [
    'tokenizer/vocab.json',
    'tokenizer/merges.txt',
    'tokenizer/tokenizer_config.json',
    'tokenizer/special_tokens_map.json',
    'scheduler/scheduler_config.json',
  ]) {
    if (existsSync(join(SOURCE, f))) await copyFile(join(SOURCE, f), join(out, f));
  }
  const index = await readJson('model_index.json');
  await atomicWriteFile(
    join(out, 'model_index.json'),
    `${JSON.stringify({ ...index, _name_or_path: 'singlora-studio/tiny-sd' }, null, 2)}\n`,
  );
  await atomicWriteFile(
    join(out, 'README.md'),
    '# tiny-sd\n\nA tiny Stable-Diffusion-1.x-shaped pipeline with random weights, built by `scripts/make-tiny-model.ts` for the demo and tests.\nIt trains in seconds on a CPU and makes no meaningful pictures. See ../README.md for real SD 1.5 weights.\n',
  );
  await mkdir(join(REPO_ROOT, 'models/dino-tiny'), { recursive: true });
  await copyFile(DINO_SOURCE, TINY_DINO);
  return out;
}

/**
 * Synthetic subject photos: one "object" (a red ball with a yellow band) on five different
 * backgrounds and positions, 96x96 PNG.
 */
export async function makeSubjectPhotos(dir: string, count = 5): Promise<string[]> {
  await mkdir(dir, { recursive: true });
  const rng = new Rng(7);
  const files: string[] = [];
  for (let k = 0; k < count; k++) {
    const w = 96;
    const h = 96;
    const data = new Uint8Array(w * h * 3);
    const bg = [40 + rng.int(120), 60 + rng.int(120), 80 + rng.int(150)];
    const cx = 36 + rng.int(24);
    const cy = 36 + rng.int(24);
    const r = 18 + rng.int(8);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const i = (y * w + x) * 3;
        const d2 = (x - cx) ** 2 + (y - cy) ** 2;
        const ground = y > 70 ? 0.6 : 1;
        if (d2 < r * r) {
          const band = Math.abs(y - cy) < 3;
          data[i] = band ? 240 : 210;
          data[i + 1] = band ? 210 : 30;
          data[i + 2] = band ? 40 : 40;
        } else {
          data[i] = bg[0] * ground;
          data[i + 1] = bg[1] * ground;
          data[i + 2] = bg[2] * ground;
        }
      }
    }
    const file = join(dir, `subject-${k + 1}.png`);
    await atomicWriteFile(file, await encodeImage({ data, width: w, height: h }, 'png'));
    files.push(file);
  }
  return files;
}

if (import.meta.url === `file://${process.argv[1]}` || process.argv[1]?.endsWith('make-tiny-model.ts')) {
  const args = process.argv.slice(2);
  const outIdx = args.indexOf('--out');
  const out = outIdx >= 0 ? resolve(args[outIdx + 1]) : TINY_MODEL_DIR;
  const path = await makeTinyModel(out, args.includes('--force'));
  console.log(`tiny model at ${path}`);
}
