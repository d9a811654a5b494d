/**
 * An SD 1.5-shaped diffusers folder with seeded random weights (the real configs from
 * test/fixtures/sd15_configs; tiny-a's tokenizer, whose ids all fall inside SD 1.5's vocabulary;
 * SD 1.5's scheduler config), for measuring speed and memory at full size where the real weights
 * cannot be downloaded. It makes no meaningful pictures.
 *
 *   node --import tsx scripts/make-random-sd15.ts <out dir> [--f16]
 */
import { cpSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { writeSafetensors } from '../src-main/engine/io/safetensors.ts';
import { AutoencoderKL } from '../src-main/engine/models/autoencoderKL.ts';
import { ClipTextModel, parseClipTextConfig } from '../src-main/engine/models/clipTextModel.ts';
import { randomSource, type Module } from '../src-main/engine/models/layers/module.ts';
import { UNet2DConditionModel } from '../src-main/engine/models/unet2dCondition.ts';
import { SD15_SCHEDULER_CONFIG } from '../src-main/engine/pipeline/stableDiffusion.ts';

const out = process.argv[2];
if (!out) throw new Error('usage: make-random-sd15.ts <out dir> [--f16]');
const dtype = process.argv.includes('--f16') ? 'F16' : 'F32';
const root = resolve(import.meta.dirname, '..');
const cfg = (c: string) =>
  JSON.parse(readFileSync(join(root, 'test/fixtures/sd15_configs', c, 'config.json'), 'utf8')) as Record<
    string,
    unknown
  >;

async function write(model: Module, folder: string, file: string, config: Record<string, unknown>): Promise<void> {
  mkdirSync(join(out, folder), { recursive: true });
  writeFileSync(join(out, folder, 'config.json'), JSON.stringify(config, null, 2));
  const src = randomSource(model, 7);
  const tensors = new Map(
    [...model.namedParams()].map(([k, p]) => [k, { shape: p.shape, dtype, read: () => src.read(k) }] as const),
  );
  await writeSafetensors(join(out, folder, file), tensors);
  console.log(`${folder}: ${model.parameterCount().toLocaleString()} parameters (${dtype})`);
}

await write(UNet2DConditionModel.fromConfig(cfg('unet')), 'unet', 'diffusion_pytorch_model.safetensors', cfg('unet'));
await write(AutoencoderKL.fromConfig(cfg('vae')), 'vae', 'diffusion_pytorch_model.safetensors', cfg('vae'));
await write(
  new ClipTextModel(parseClipTextConfig(cfg('text_encoder'))),
  'text_encoder',
  'model.safetensors',
  cfg('text_encoder'),
);
cpSync(join(root, 'test/fixtures/tiny-a/model/tokenizer'), join(out, 'tokenizer'), { recursive: true });
mkdirSync(join(out, 'scheduler'), { recursive: true });
writeFileSync(join(out, 'scheduler', 'scheduler_config.json'), JSON.stringify(SD15_SCHEDULER_CONFIG, null, 2));
writeFileSync(
  join(out, 'model_index.json'),
  JSON.stringify(
    {
      _class_name: 'StableDiffusionPipeline',
      _diffusers_version: '0.27.2',
      unet: ['diffusers', 'UNet2DConditionModel'],
      vae: ['diffusers', 'AutoencoderKL'],
      text_encoder: ['transformers', 'CLIPTextModel'],
      tokenizer: ['transformers', 'CLIPTokenizer'],
      scheduler: ['diffusers', 'PNDMScheduler'],
      safety_checker: [null, null],
      feature_extractor: [null, null],
      requires_safety_checker: false,
    },
    null,
    2,
  ),
);
console.log(`wrote ${out}`);
