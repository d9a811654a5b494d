/**
 * Scores a model of the toy world (scripts/build-toy-model.ts), with or without an adapter:
 * generates each probe prompt ("a photo of sks ball on a green background") at fixed seeds and
 * reads subject fidelity and prompt fidelity off the pixels (toyFidelity.ts). The demo, the
 * experiment and the toy-model test share it, so "base" and "adapter" rows are made the same way.
 */
import { decodeImage } from '../image/sharp.ts';
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
