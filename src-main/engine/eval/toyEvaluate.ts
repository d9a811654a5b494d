/**
 * Scores a model of the toy world (scripts/build-toy-model.ts), with or without an adapter:
 * generates each probe prompt ("a photo of <token> <class> on a green background", made from the
 * run: `toyProbes`) at fixed seeds and reads subject fidelity and prompt fidelity off the pixels
 * (toyFidelity.ts). The demo, the experiment and the toy-model test share it, so "base" and
 * "adapter" rows are made the same way.
 */
import { decodeImage } from '../image/sharp.ts';
import type { StableDiffusion } from '../pipeline/stableDiffusion.ts';
import { textToImage, type GeneratedImage } from '../pipeline/textToImage.ts';
import { Rng } from '../random.ts';
import { caption, COLOUR_NAMES, randomScene, type ColourName, type Scene, type ToyImage } from '../toy/toyWorld.ts';
import {
  backgroundColour,
  foregroundColours,
  foregroundMask,
  objectColour,
  promptFidelity,
  subjectScores,
} from './toyFidelity.ts';
import { hasShape } from './toyShape.ts';

export interface ToyProbe {
  readonly prompt: string;
  /** The background colour the prompt asks for (prompt fidelity). */
  readonly background: ColourName;
}

/** The order in which probe backgrounds are tried (the first ones the photos and the subject do not show). */
export const PROBE_BACKGROUNDS: readonly ColourName[] = ['green', 'gray', 'white', 'black', 'blue', 'red', 'yellow'];

/**
 * The probes for a subject: "a photo of <token> <class> on a <colour> background" for the first
 * `count` colours of PROBE_BACKGROUNDS that no photo has as its background and that are not the
 * subject's own colours (a background of the subject's colour would hide it): new contexts.
 * For the toy subject (photos on white, blue, black; red and yellow): green and gray.
 */
export function toyProbes(token: string, classWord: string, photos: readonly ToyImage[], count = 2): ToyProbe[] {
  if (!photos.length) throw new Error('toyProbes: no subject photos to choose the backgrounds from');
  const shown = new Set<ColourName>(photos.map(backgroundColour));
  for (const p of photos) for (const c of foregroundColours(p)) shown.add(c);
  const fresh = PROBE_BACKGROUNDS.filter((c) => !shown.has(c)).slice(0, count);
  if (!fresh.length)
    throw new Error(
      `toyProbes: the photos and the subject show every background colour (${[...shown].join(', ')}); none is left for a new context`,
    );
  return fresh.map((background) => ({
    prompt: `a photo of ${token.trim()} ${classWord.trim()} on a ${background} background`,
    background,
  }));
}

/** The background colour a prompt asks for ("... on a green background"), or null when it names none. */
export function requestedBackground(prompt: string): ColourName | null {
  const m = /\bon an? (\w+) background\b/i.exec(prompt);
  const c = m?.[1].toLowerCase();
  return c !== undefined && (COLOUR_NAMES as readonly string[]).includes(c) ? (c as ColourName) : null;
}

/** Sampling settings for the toy model (64x64, 8x8 latents). */
export const TOY_SAMPLING = { steps: 20, guidanceScale: 2, scheduler: 'ddim', width: 64, height: 64 } as const;

export interface ToyScoredImage {
  readonly probe: ToyProbe;
  readonly seed: number;
  readonly image: ToyImage;
  readonly background: ColourName;
}

export interface ToyScore {
  /** Mean subject fidelity over every image (0..1). */
  readonly subject: number;
  /** Each image's subject fidelity, in the order of `images` (for the noise band). */
  readonly scores: number[];
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
    probes: readonly ToyProbe[];
    seeds: readonly number[];
    steps?: number;
    guidanceScale?: number;
  },
): Promise<ToyScore> {
  const images: ToyScoredImage[] = [];
  for (const probe of o.probes) {
    for (const seed of o.seeds) {
      const image = await drawToy(sd, probe.prompt, seed, o);
      images.push({ probe, seed, image, background: backgroundColour(image) });
    }
  }
  const scores = subjectScores(
    images.map((i) => i.image),
    o.photos,
  );
  return {
    subject: scores.reduce((a, b) => a + b, 0) / scores.length,
    scores,
    prompt: promptFidelity(images.map((i) => ({ image: i.image, background: i.probe.background }))),
    images,
  };
}

export interface WorldScore {
  /** Share of images whose background is the colour the caption names (chance: 1/7). */
  readonly background: number;
  /** Share of images whose object is the colour the caption names (chance: 1/4). */
  readonly object: number;
  /** Share of images whose object has the shape the caption names (toyShape.ts `hasShape`: IoU >= 0.8, best kind). */
  readonly shape: number;
  /** Share of images with all three right: background, object colour and shape. */
  readonly all: number;
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
 * background") at seed `seed + i`, and read back: is the background, is the object the colour,
 * is it the shape asked for.
 */
export async function scoreWorld(
  sd: StableDiffusion,
  o: { count: number; seed: number; steps?: number; guidanceScale?: number },
): Promise<WorldScore> {
  const rng = new Rng(o.seed, 3);
  const images: Array<WorldScore['images'][number]> = [];
  const n = { background: 0, object: 0, shape: 0, all: 0 };
  for (let i = 0; i < o.count; i++) {
    const scene = randomScene(rng);
    const prompt = caption(scene);
    const image = await drawToy(sd, prompt, o.seed + i, o);
    const right = {
      background: backgroundColour(image) === scene.background,
      object: objectColour(image) === scene.colour,
      shape: hasShape(foregroundMask(image), scene.kind),
    };
    for (const k of ['background', 'object', 'shape'] as const) if (right[k]) n[k]++;
    if (right.background && right.object && right.shape) n.all++;
    images.push({ scene, prompt, seed: o.seed + i, image });
  }
  return {
    background: n.background / o.count,
    object: n.object / o.count,
    shape: n.shape / o.count,
    all: n.all / o.count,
    images,
  };
}
