/**
 * Scores a model of the toy world (scripts/build-toy-model.ts), with or without an adapter:
 * generates each probe prompt ("a photo of sks ball on a green background") at fixed seeds and
 * reads subject fidelity and prompt fidelity off the pixels (toyFidelity.ts). The demo, the
 * experiment and the toy-model test share it, so "base" and "adapter" rows are made the same way.
 */
import { decodeImage } from '../image/sharp.ts';
import type { StableDiffusion } from '../pipeline/stableDiffusion.ts';
import { textToImage, type GeneratedImage } from '../pipeline/textToImage.ts';
import { Rng } from '../random.ts';
import { caption, randomScene, type ColourName, type Scene, type ToyImage } from '../toy/toyWorld.ts';
import { backgroundColour, objectColour, promptFidelity, subjectFidelity } from './toyFidelity.ts';

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

/** One toy-model picture of `prompt` at `seed`, with the toy sampling (and `adapter`, a file at strength 1). */
async function drawToy(
  sd: StableDiffusion,
  prompt: string,
  seed: number,
  o: { steps?: number; guidanceScale?: number; adapter?: string },
): Promise<ToyImage> {
  const [img]: GeneratedImage[] = await textToImage(sd, {
    ...TOY_SAMPLING,
    steps: o.steps ?? TOY_SAMPLING.steps,
    guidanceScale: o.guidanceScale ?? TOY_SAMPLING.guidanceScale,
    prompt,
    negativePrompt: '',
    seed,
    count: 1,
    adapters: o.adapter ? [{ path: o.adapter, strength: 1 }] : [],
  });
  return { data: img.pixels, width: img.width, height: img.height };
}

export async function readToyPhotos(files: readonly string[]): Promise<ToyImage[]> {
  return Promise.all(files.map(async (f) => decodeImage(f)));
}

/**
 * Generates `seeds.length` images per probe (image i of a probe uses seeds[i]) with `adapter`
 * (a file, strength 1) or none, and scores them against `photos`.
 */
export async function scoreToyModel(
  sd: StableDiffusion,
  o: {
    photos: readonly ToyImage[];
    adapter?: string;
    probes?: readonly ToyProbe[];
    seeds: readonly number[];
    steps?: number;
    guidanceScale?: number;
  },
): Promise<ToyScore> {
  const images: ToyScoredImage[] = [];
  for (const probe of o.probes ?? TOY_PROBES) {
    for (const seed of o.seeds) {
      const image = await drawToy(sd, probe.prompt, seed, o);
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

export interface WorldScore {
  /** Share of images whose background is the colour the caption names (chance: 1/7). */
  readonly background: number;
  /** Share of images whose object is the colour the caption names (chance: 1/4). */
  readonly object: number;
  readonly images: Array<{
    readonly scene: Scene;
    readonly prompt: string;
    readonly seed: number;
    readonly image: ToyImage;
  }>;
}

/**
 * How well a toy model (no adapter) follows its own world's captions: `count` random scenes of
 * the base world (seeded), each generated from its caption ("a photo of a red ball on a blue
 * background") at seed `seed + i`, and read back: is the background, is the object the colour asked for.
 */
export async function scoreWorld(
  sd: StableDiffusion,
  o: { count: number; seed: number; steps?: number },
): Promise<WorldScore> {
  const rng = new Rng(o.seed, 3);
  const images: Array<WorldScore['images'][number]> = [];
  let background = 0;
  let object = 0;
  for (let i = 0; i < o.count; i++) {
    const scene = randomScene(rng);
    const prompt = caption(scene);
    const image = await drawToy(sd, prompt, o.seed + i, o);
    if (backgroundColour(image) === scene.background) background++;
    if (objectColour(image) === scene.colour) object++;
    images.push({ scene, prompt, seed: o.seed + i, image });
  }
  return { background: background / o.count, object: object / o.count, images };
}
