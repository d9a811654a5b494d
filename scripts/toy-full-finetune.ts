/**
 * A diagnostic for issue 26 (docs/experiments.md): DreamBooth without adapters. Copies the toy
 * model to `--out`, fine-tunes its whole UNet on the demo subject's six photos (captioned "a photo
 * of sks ball on a <colour> background", the text encoder frozen) with the DDPM step of adapter
 * training, and saves it there, so that `singlora generate --base OUT` shows what the UNet itself
 * can learn of the subject: if even full fine-tuning cannot draw it on backgrounds the photos
 * lack, no adapter on this UNet will.
 *
 *   npx tsx scripts/toy-full-finetune.ts --out DIR [--model models/toy-sd] [--steps 300] [--lr 2e-4] [--seed 1]
 */
import { cp, readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { initBackend, tf } from '../src-main/engine/backend/tf.ts';
import { AutoencoderKL } from '../src-main/engine/models/autoencoderKL.ts';
import { ClipTextModel } from '../src-main/engine/models/clipTextModel.ts';
import { ClipTokenizer } from '../src-main/engine/models/clipTokenizer.ts';
import { UNet2DConditionModel } from '../src-main/engine/models/unet2dCondition.ts';
import { Rng } from '../src-main/engine/random.ts';
import { createScheduler, readSchedulerConfig } from '../src-main/engine/schedulers/index.ts';
import { TOY_MODEL_DIR } from '../src-main/engine/toy/toyModel.ts';
import { drawScene, subjectScenes, TOY_SIZE } from '../src-main/engine/toy/toyWorld.ts';
import { AdamW } from '../src-main/engine/train/adamw.ts';
import { makeTrainable, saveModule } from '../src-main/engine/train/fullTrain.ts';
import { trainStep } from '../src-main/engine/train/step.ts';
import { encodeMeans, imagesTensor } from './build-toy-model.ts';

function option(name: string, fallback?: string): string {
  const i = process.argv.indexOf(name);
  const v = i >= 0 ? process.argv[i + 1] : fallback;
  if (v === undefined) throw new Error(`toy-full-finetune: expected ${name}`);
  return v;
}

async function main(): Promise<void> {
  const model = resolve(option('--model', TOY_MODEL_DIR));
  const out = resolve(option('--out'));
  const [steps, lr, seed] = [
    Number(option('--steps', '300')),
    Number(option('--lr', '2e-4')),
    Number(option('--seed', '1')),
  ];
  console.log(
    `toy-full-finetune: backend ${(await initBackend()).name}, ${model} -> ${out}, ${steps} steps, lr ${lr}, seed ${seed}`,
  );
  await cp(model, out, { recursive: true, errorOnExist: true, force: false });
  const vae = await AutoencoderKL.load(join(out, 'vae'));
  const unet = await UNet2DConditionModel.load(join(out, 'unet'));
  const te = await ClipTextModel.load(join(out, 'text_encoder'));
  const tokenizer = await ClipTokenizer.load(join(out, 'tokenizer'));
  const scaling = (JSON.parse(await readFile(join(out, 'vae/config.json'), 'utf8')) as { scaling_factor: number })
    .scaling_factor;
  const scenes = subjectScenes();
  const photos = imagesTensor(
    scenes.map((s) => drawScene(s)),
    TOY_SIZE,
  );
  const latents = encodeMeans(vae, photos, scaling);
  const context = te.forward(tokenizer.call(scenes.map((s) => `a photo of sks ball on a ${s.background} background`)));
  const scheduler = createScheduler('ddpm', await readSchedulerConfig(join(out, 'scheduler/scheduler_config.json')));
  const optimizer = new AdamW(makeTrainable(unet, 'toy-full-finetune'));
  const rng = new Rng(seed, 9);
  for (let step = 0; step < steps; step++) {
    const noise = tf.tensor4d(rng.normal(latents.size), latents.shape as [number, number, number, number]);
    const timesteps = scenes.map(() => rng.int(scheduler.alphasCumprod.length));
    const batch = { latents, noise, timesteps, context: () => context.last_hidden_state };
    const r = await trainStep({ unet, scheduler, optimizer }, [batch], {
      step,
      lr,
      maxGradNorm: 1,
      minSnrGamma: 5,
      priorLossWeight: 1,
      attention: 'plain',
    });
    noise.dispose();
    if (step % 50 === 0 || step === steps - 1) console.log(`step ${step + 1}/${steps}: loss ${r.loss.toFixed(4)}`);
  }
  await saveModule(unet, join(out, 'unet/diffusion_pytorch_model.safetensors'), 'F16', 'scripts/toy-full-finetune.ts');
  console.log(`fine-tuned UNet written to ${out}`);
}

await main();
