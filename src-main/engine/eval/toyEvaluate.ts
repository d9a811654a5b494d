/**
 * Scores a model of the toy world (scripts/build-toy-model.ts), with or without an adapter:
 * generates each probe prompt ("a photo of sks ball on a green background") at fixed seeds and
 * reads subject fidelity and prompt fidelity off the pixels (toyFidelity.ts). The demo, the
 * experiment and the toy-model test share it, so "base" and "adapter" rows are made the same way.
 */
import { join } from 'node:path';
import { tf } from '../backend/tf.ts';
import { decodeImage } from '../image/sharp.ts';
import { AutoencoderKL } from '../models/autoencoderKL.ts';
import type { StableDiffusion } from '../pipeline/stableDiffusion.ts';
import { textToImage, type GeneratedImage } from '../pipeline/textToImage.ts';
import type { ColourName, ToyImage } from '../toy/toyWorld.ts';
import { backgroundColour, promptFidelity, subjectFidelity } from './toyFidelity.ts';

export interface ToyProbe {
  readonly prompt: string;
  /** The background colour the prompt asks for (prompt fidelity). */
  readonly background: ColourName;
}

/** New contexts for the subject: its photos show white, blue and black backgrounds. */
export const TOY_PROBES: readonly ToyProbe[] = [
  { prompt: 'a photo of sks ball on a green background', background: 'green' },
  { prompt: 'a photo of sks ball on a gray background', background: 'gray' },
];

/** Sampling settings for the toy model (64x64, 8x8 latents). */
export const TOY_SAMPLING = { steps: 20, guidanceScale: 7.5, scheduler: 'ddim', width: 64, height: 64 } as const;

export interface ToyScoredImage {
  readonly probe: ToyProbe;
  readonly seed: number;
  readonly image: ToyImage;
  readonly background: ColourName;
}

export interface ToyScore {
  /** Mean subject fidelity over every image (0..1). */
  readonly subject: number;
  /** Share of images with the requested background (0..1). */
  readonly prompt: number;
  readonly images: ToyScoredImage[];
}

export async function readToyPhotos(files: readonly string[]): Promise<ToyImage[]> {
  return Promise.all(files.map(async (f) => decodeImage(f)));
}

/**
 * The photos as the model's VAE draws them: decode(mean(encode(photo))). Subject fidelity is
 * measured against these, not the photos themselves: the toy VAE, trained for minutes, blurs the
 * subject and shifts its colours (its round trip scores 0.38 against the original photos), and an
 * adapter can at best teach the UNet what the VAE can render.
 */
export async function vaeRoundTrip(modelDir: string, photos: readonly ToyImage[]): Promise<ToyImage[]> {
  const vae = await AutoencoderKL.load(join(modelDir, 'vae'));
  try {
    const out: ToyImage[] = [];
    for (const p of photos) {
      const pixels = tf.tidy(() => {
        const x = tf.tensor4d(Float32Array.from(p.data, (v) => v / 127.5 - 1), [1, p.height, p.width, 3]); // [1, H, W, 3] in [-1, 1]
        return tf.clipByValue(tf.round(tf.add(tf.mul(vae.decode(vae.encode(x).mean), 127.5), 127.5)), 0, 255);
      });
      out.push({ data: Uint8Array.from(await pixels.data()), width: p.width, height: p.height });
      pixels.dispose();
    }
    return out;
  } finally {
    vae.dispose();
  }
}

/**
 * Generates `seeds.length` images per probe (image i of a probe uses seeds[i]) with `adapter`
 * (a file, strength 1) or none, and scores them against `photos`.
 */
export async function scoreToyModel(sd: StableDiffusion, o: { photos: readonly ToyImage[]; adapter?: string; probes?: readonly ToyProbe[]; seeds: readonly number[]; steps?: number }): Promise<ToyScore> {
  const images: ToyScoredImage[] = [];
  for (const probe of o.probes ?? TOY_PROBES) {
    for (const seed of o.seeds) {
      const [img]: GeneratedImage[] = await textToImage(sd, {
        ...TOY_SAMPLING,
        steps: o.steps ?? TOY_SAMPLING.steps,
        prompt: probe.prompt,
        negativePrompt: '',
        seed,
        count: 1,
        adapters: o.adapter ? [{ path: o.adapter, strength: 1 }] : [],
      });
      const image = { data: img.pixels, width: img.width, height: img.height };
      images.push({ probe, seed, image, background: backgroundColour(image) });
    }
  }
  return {
    subject: subjectFidelity(
      images.map((i) => i.image),
      o.photos,
    ),
    prompt: promptFidelity(images.map((i) => ({ image: i.image, background: i.probe.background }))),
    images,
  };
}
