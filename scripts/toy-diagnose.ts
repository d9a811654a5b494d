/**
 * Where a toy model fails (issue 26; docs/experiments.md): (1) what its VAE reconstructs of
 * held-out scenes, with Gaussian noise of each `--latent-noise` std added to the scaled latents
 * (is the VAE, or its tolerance of a denoiser's errors, the limit?), (2) with `--subjects`, the
 * subject score of the VAE's reconstructions of each two-colour subject's photos (the best an
 * adapter that reproduces the photos' latents can score), and (3) the world check
 * (scripts/toy-world-check.ts) at each `--guidance` scale.
 *
 *   npx tsx scripts/toy-diagnose.ts [--model models/toy-sd] [--scenes 64] [--latent-noise 0,0.1,0.2]
 *     [--subjects] [--guidance 7.5,2 ('': none)] [--count 28] [--steps 20]
 */
import { resolve } from 'node:path';
import { initBackend, tf } from '../src-main/engine/backend/tf.ts';
import { backgroundColour, foregroundMask, objectColour, subjectScores } from '../src-main/engine/eval/toyFidelity.ts';
import { scoreWorld } from '../src-main/engine/eval/toyEvaluate.ts';
import { hasShape } from '../src-main/engine/eval/toyShape.ts';
import { AutoencoderKL } from '../src-main/engine/models/autoencoderKL.ts';
import { StableDiffusion } from '../src-main/engine/pipeline/stableDiffusion.ts';
import { TOY_MODEL_DIR } from '../src-main/engine/toy/toyModel.ts';
import {
  DEMO_SUBJECT,
  drawScene,
  OTHER_SUBJECTS,
  subjectScenes,
  TOY_SIZE,
  type ToyImage,
  toyDataset,
} from '../src-main/engine/toy/toyWorld.ts';
import { WORLD_CHECK } from './toy-world-check.ts';

const pct = (n: number, d: number) => `${n}/${d} (${((100 * n) / d).toFixed(0)}%)`;

/**
 * `img` through the VAE (encode to the posterior mean, add Gaussian noise of std `sigma` to the
 * scaled latents, decode), as 0..255 pixels.
 */
async function roundTrip(vae: AutoencoderKL, img: ToyImage, sigma = 0, seed = 0): Promise<ToyImage> {
  const x = tf.tensor4d(
    Float32Array.from(img.data, (v) => v / 127.5 - 1),
    [1, TOY_SIZE, TOY_SIZE, 3],
  );
  const scaling = vae.config.scalingFactor;
  const y = tf.tidy(() => {
    const z = vae.encode(x).mean;
    const noisy = sigma ? z.add(tf.randomNormal(z.shape, 0, sigma / scaling, 'float32', seed)) : z;
    return vae.decode(noisy).clipByValue(-1, 1).add(1).mul(127.5).round();
  });
  const out = { data: Uint8Array.from(await y.data()), width: TOY_SIZE, height: TOY_SIZE };
  tf.dispose([x, y]);
  return out;
}

/** (2): each subject's photos against themselves (1 but for rounding) and their VAE reconstructions. */
async function subjectCheck(model: string): Promise<void> {
  const vae = await AutoencoderKL.load(resolve(model, 'vae'));
  for (const [name, subject] of Object.entries({ 'sks-ball': DEMO_SUBJECT, ...OTHER_SUBJECTS })) {
    const photos = subjectScenes(6, 17, subject).map((sc) => drawScene(sc));
    const recs: ToyImage[] = [];
    for (const p of photos) recs.push(await roundTrip(vae, p));
    const scores = subjectScores(recs, photos);
    const mean = scores.reduce((a, b) => a + b, 0) / scores.length;
    console.log(
      `VAE round trip of ${name}'s photos (${subject.pattern.join(' over ')} ${subject.kind}; backgrounds ${subject.backgrounds.join(', ')}): subject score ${scores.map((v) => v.toFixed(3)).join(' ')}, mean ${mean.toFixed(3)}`,
    );
  }
  vae.dispose();
}

/** (1): shape, object colour and background of VAE reconstructions with latent noise `sigma`. */
async function vaeCheck(model: string, scenes: number, sigma: number): Promise<string> {
  const vae = await AutoencoderKL.load(resolve(model, 'vae'));
  const n = { shape: 0, colour: 0, background: 0 };
  for (const [k, d] of toyDataset(scenes, 1807).entries()) {
    const img = await roundTrip(vae, d.image, sigma, k + 1);
    if (hasShape(foregroundMask(img), d.scene.kind)) n.shape++;
    if (objectColour(img) === d.scene.colour) n.colour++;
    if (backgroundColour(img) === d.scene.background) n.background++;
  }
  vae.dispose();
  return `VAE, latent noise ${sigma}: shape ${pct(n.shape, scenes)}, object colour ${pct(n.colour, scenes)}, background ${pct(n.background, scenes)}`;
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const arg = (name: string, fallback: string) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : fallback;
  };
  const list = (name: string, fallback: string) => arg(name, fallback).split(',').filter(Boolean).map(Number);
  const model = resolve(arg('--model', TOY_MODEL_DIR));
  await initBackend();
  for (const sigma of list('--latent-noise', '0,0.1,0.2'))
    console.log(await vaeCheck(model, Number(arg('--scenes', '64')), sigma));
  if (args.includes('--subjects')) await subjectCheck(model);
  const sd = await StableDiffusion.load(model);
  const count = Number(arg('--count', String(WORLD_CHECK.count)));
  for (const g of list('--guidance', '7.5,2')) {
    const s = await scoreWorld(sd, {
      count,
      seed: WORLD_CHECK.seed,
      steps: Number(arg('--steps', '20')),
      guidanceScale: g,
    });
    console.log(
      `world check, guidance ${g}, ${count} captions: background ${(100 * s.background).toFixed(0)}%, object colour ${(100 * s.object).toFixed(0)}%, shape ${(100 * s.shape).toFixed(0)}%, all three ${(100 * s.all).toFixed(0)}%`,
    );
  }
  sd.dispose();
}

await main();
