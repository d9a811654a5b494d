/**
 * The toy world: a synthetic, captioned image set made by code, small enough that a
 * Stable-Diffusion-1.x-shaped model trained from scratch on a laptop CPU learns it
 * (`scripts/build-toy-model.ts`), and a subject that world never contains (the "sks ball"), to
 * personalise it with.
 *
 * Every image is one flat-coloured object (ball, square or triangle) of one colour on a flat
 * background of another, at a random position and size, drawn with 4x4 supersampling. Captions
 * are SD-style: "a photo of a red ball on a blue background"; some drop the background phrase
 * ("a photo of a red ball") and some are empty (for classifier-free guidance).
 *
 * A data set may also hold compositions: two one-colour objects of different colours, one standing
 * on the other ("a photo of a red ball above a yellow square on a blue background"). Every object
 * stays one colour, but the model sees colour boundaries inside what stands in front of the
 * background, which a two-colour subject needs (docs/experiments.md, the compositions build).
 *
 * The subject is a ball whose top half is red and bottom half yellow: both colours and the shape
 * are known to the base model, the two-colour pattern is not.
 *
 * Everything is a pure function of a seed (the project's Philox generator), so the set, the
 * photos and the model built on them are the same on every machine.
 */
import { Rng } from '../random.ts';

export const TOY_SIZE = 64;

/** Named colours, RGB 0-255: objects take one of OBJECT_COLOURS, backgrounds one of BACKGROUNDS. */
export const PALETTE = {
  red: [220, 40, 40],
  green: [40, 170, 60],
  blue: [50, 80, 220],
  yellow: [240, 210, 40],
  white: [235, 235, 235],
  black: [25, 25, 25],
  gray: [128, 128, 128],
} as const satisfies Record<string, readonly [number, number, number]>;
export type ColourName = keyof typeof PALETTE;
export const COLOUR_NAMES = Object.keys(PALETTE) as ColourName[];

export const OBJECT_COLOURS: readonly ColourName[] = ['red', 'green', 'blue', 'yellow'];
export const BACKGROUNDS: readonly ColourName[] = ['white', 'black', 'gray', 'blue', 'green', 'red', 'yellow'];
export const KINDS = ['ball', 'square', 'triangle'] as const;
export type Kind = (typeof KINDS)[number];

/** What one image shows. `colour` is the whole object's; `pattern` gives a two-colour ball. */
export interface Scene {
  readonly kind: Kind;
  readonly colour: ColourName;
  readonly background: ColourName;
  /** Centre, as a fraction of the image side. */
  readonly cx: number;
  readonly cy: number;
  /** Half-size (radius), as a fraction of the image side. */
  readonly r: number;
  /** Top and bottom half colours (the subject); overrides `colour`. */
  readonly pattern?: readonly [ColourName, ColourName];
  /** A second one-colour object under this one, touching it or partly behind it (a composition). */
  readonly under?: Part;
}

/** One object of a composition: its kind, colour, centre and half-size (fractions of the side). */
export interface Part {
  readonly kind: Kind;
  readonly colour: ColourName;
  readonly cx: number;
  readonly cy: number;
  readonly r: number;
}

/** An RGB image, HWC, 0-255 (the layout engine/image/sharp.ts reads and writes). */
export interface ToyImage {
  readonly data: Uint8Array;
  readonly width: number;
  readonly height: number;
}

/** Does the point (u, v) (fractions of the side) fall inside the object? */
function inside(s: Part, u: number, v: number): boolean {
  const dx = u - s.cx;
  const dy = v - s.cy;
  if (s.kind === 'ball') return dx * dx + dy * dy <= s.r * s.r;
  if (s.kind === 'square') return Math.abs(dx) <= s.r * 0.85 && Math.abs(dy) <= s.r * 0.85;
  // Triangle pointing up: apex at (cx, cy - r), base at cy + r from cx - r to cx + r.
  if (dy < -s.r || dy > s.r) return false;
  return Math.abs(dx) <= (s.r * (dy + s.r)) / (2 * s.r);
}

/** Draws a scene at `size` x `size`, 4x4 supersampled. */
export function drawScene(s: Scene, size = TOY_SIZE): ToyImage {
  const data = new Uint8Array(size * size * 3);
  const bg = PALETTE[s.background];
  const SS = 4;
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const acc = [0, 0, 0];
      for (let sy = 0; sy < SS; sy++) {
        for (let sx = 0; sx < SS; sx++) {
          const u = (x + (sx + 0.5) / SS) / size;
          const v = (y + (sy + 0.5) / SS) / size;
          let c: readonly number[] = bg;
          if (inside(s, u, v)) c = PALETTE[s.pattern ? (v < s.cy ? s.pattern[0] : s.pattern[1]) : s.colour];
          else if (s.under && inside(s.under, u, v)) c = PALETTE[s.under.colour];
          acc[0] += c[0];
          acc[1] += c[1];
          acc[2] += c[2];
        }
      }
      const i = (y * size + x) * 3;
      for (let k = 0; k < 3; k++) data[i + k] = Math.round(acc[k] / (SS * SS));
    }
  }
  return { data, width: size, height: size };
}

/** The SD-style caption of a scene. `withBackground` false drops "on a ... background". */
export function caption(s: Scene, withBackground = true): string {
  const under = s.under ? ` above a ${s.under.colour} ${s.under.kind}` : '';
  const what = s.pattern ? `a photo of sks ${s.kind}` : `a photo of a ${s.colour} ${s.kind}${under}`;
  return withBackground ? `${what} on a ${s.background} background` : what;
}

function pick<T>(rng: Rng, xs: readonly T[]): T {
  return xs[rng.int(xs.length)];
}

/** A random scene of the base world (never the subject's pattern). */
export function randomScene(rng: Rng): Scene {
  const colour = pick(rng, OBJECT_COLOURS);
  const background = pick(
    rng,
    BACKGROUNDS.filter((b) => b !== colour),
  );
  const r = 0.18 + 0.14 * rng.uniform();
  const cx = r + (1 - 2 * r) * rng.uniform();
  const cy = r + (1 - 2 * r) * rng.uniform();
  return { kind: pick(rng, KINDS), colour, background, cx, cy, r };
}

/** How far a part reaches above (`up`) and below its centre, as a fraction of the side. */
function reach(kind: Kind, r: number): { up: number; down: number } {
  return kind === 'square' ? { up: 0.85 * r, down: 0.85 * r } : { up: r, down: r };
}

/**
 * A random composition: two objects of different colours, each 0.15 to 0.23 of the side in
 * half-size, the second under the first, touching it or partly hidden behind it (their centres
 * 70% to 100% of the touching distance apart, and within 0.03 across), on a background of a third
 * colour. Every object is still one colour.
 */
export function randomComposition(rng: Rng): Scene {
  const colour = pick(rng, OBJECT_COLOURS);
  const underColour = pick(
    rng,
    OBJECT_COLOURS.filter((c) => c !== colour),
  );
  const background = pick(
    rng,
    BACKGROUNDS.filter((b) => b !== colour && b !== underColour),
  );
  const kind = pick(rng, KINDS);
  const underKind = pick(rng, KINDS);
  const r = 0.15 + 0.08 * rng.uniform();
  const ru = 0.15 + 0.08 * rng.uniform();
  const top = reach(kind, r);
  const bottom = reach(underKind, ru);
  const apart = (0.7 + 0.3 * rng.uniform()) * (top.down + bottom.up);
  const height = top.up + apart + bottom.down;
  const margin = Math.max(r, ru) + 0.03;
  const cx = margin + (1 - 2 * margin) * rng.uniform();
  const cy = top.up + (1 - height) * rng.uniform();
  const under: Part = {
    kind: underKind,
    colour: underColour,
    cx: cx + 0.06 * (rng.uniform() - 0.5),
    cy: cy + apart,
    r: ru,
  };
  return { kind, colour, background, cx, cy, r, under };
}

export interface ToyExample {
  readonly image: ToyImage;
  readonly caption: string;
  readonly scene: Scene;
}

/**
 * `n` examples of the base world from `seed`: captions name object and background (80%), the
 * object only (10%), or nothing (10%, the unconditional caption classifier-free guidance uses).
 * With `compositions` > 0, that share of the scenes are compositions (randomComposition); at 0
 * the set is the one the committed model's first stages were built on, draw for draw.
 */
export function toyDataset(n: number, seed: number, size = TOY_SIZE, compositions = 0): ToyExample[] {
  const rng = new Rng(seed);
  const out: ToyExample[] = [];
  for (let i = 0; i < n; i++) {
    const scene = compositions > 0 && rng.uniform() < compositions ? randomComposition(rng) : randomScene(rng);
    const p = rng.uniform();
    out.push({
      image: drawScene(scene, size),
      scene,
      caption: p < 0.8 ? caption(scene) : p < 0.9 ? caption(scene, false) : '',
    });
  }
  return out;
}

/** The subject's pattern: a ball, red on top, yellow below. */
export const SUBJECT_PATTERN: readonly [ColourName, ColourName] = ['red', 'yellow'];
/** Backgrounds of the subject photos; the demo asks for others (green, gray). */
export const SUBJECT_PHOTO_BACKGROUNDS: readonly ColourName[] = ['white', 'blue', 'black'];

/** A two-colour subject: its kind, its top and bottom colours, and the backgrounds of its photos. */
export interface ToySubject {
  readonly kind: Kind;
  readonly pattern: readonly [ColourName, ColourName];
  readonly backgrounds: readonly ColourName[];
}

/** The demo's subject: a ball, red on top, yellow below, photographed on white, blue and black. */
export const DEMO_SUBJECT: ToySubject = {
  kind: 'ball',
  pattern: SUBJECT_PATTERN,
  backgrounds: SUBJECT_PHOTO_BACKGROUNDS,
};

/**
 * More subjects for the experiments (issue 26: another shape, other colours): a square blue over
 * yellow, a triangle green over blue and a square blue over green, each photographed on white,
 * black and red. The base model already draws yellow-orange squares for "zwx square", so the first
 * square starts high (docs/experiments.md); the second has colours the base model does not draw.
 */
export const OTHER_SUBJECTS: Readonly<Record<string, ToySubject>> = {
  'zwx-square': { kind: 'square', pattern: ['blue', 'yellow'], backgrounds: ['white', 'black', 'red'] },
  'qrv-triangle': { kind: 'triangle', pattern: ['green', 'blue'], backgrounds: ['white', 'black', 'red'] },
  'vkx-square': { kind: 'square', pattern: ['blue', 'green'], backgrounds: ['white', 'black', 'red'] },
};

/** `count` photos of `subject` (the demo's by default) at different positions and sizes, on its photo backgrounds. */
export function subjectScenes(count = 6, seed = 17, subject: ToySubject = DEMO_SUBJECT): Scene[] {
  const rng = new Rng(seed);
  return Array.from({ length: count }, (_, k) => {
    const r = 0.22 + 0.1 * rng.uniform();
    return {
      kind: subject.kind,
      colour: subject.pattern[0],
      pattern: subject.pattern,
      background: subject.backgrounds[k % subject.backgrounds.length],
      cx: r + (1 - 2 * r) * rng.uniform(),
      cy: r + (1 - 2 * r) * rng.uniform(),
      r,
    };
  });
}
