/**
 * Fidelity in the toy world (toy/toyWorld.ts), where DINO is not installed or means little on
 * 32x32 flat-colour pictures. Two scores, both read off the pixels, no model involved:
 *
 * - **Subject fidelity** (`subjectFidelity`, 0..1): per generated image, a colour score times a
 *   shape score, averaged over the images.
 *   - colour: a 14-number embedding of what is in front of the background: the share of foreground
 *     pixels nearest to each palette colour, separately for the foreground's top and bottom halves
 *     (split at its centroid), L2-normalised; the mean cosine similarity between the image's
 *     embedding and each subject photo's, as DINO scores are means over image pairs. The subject
 *     (red top, yellow bottom) scores 1; a plain red or yellow ball 0.5; anything else ~0.
 *   - shape: the foreground mask's IoU with the best-fitting ideal shape of the subject's own kind
 *     (the kind that fits its photos best; toyShape.ts). A crisp ball ~0.95, a blob less.
 *   An image with no foreground scores 0.
 * - **Prompt fidelity** (`backgroundColour`): the palette colour nearest to the median of the
 *   image's border pixels, compared with the colour the prompt asked for.
 *
 * Limits: colour layout and an upright outline, not texture; it only means something in the toy
 * world's palette and shapes.
 * It is an honest stand-in for DINO here, not a general image metric.
 */
import { COLOUR_NAMES, type ColourName, type ToyImage } from '../toy/toyWorld.ts';
import { backgroundColour, borderColour, nearestColour } from '../toy/toyColours.ts';
import { fitShape, subjectKind, type Mask } from './toyShape.ts';

/** RGB distance beyond which a pixel is foreground (not the background colour). */
const FOREGROUND_DISTANCE = 60;

/** The pixels in front of the background (farther than FOREGROUND_DISTANCE from the border colour): row and palette index. */
function foreground(img: ToyImage): { y: number; k: number }[] {
  const { data, width: w, height: h } = img;
  const [br, bg, bb] = borderColour(img);
  const fg: { y: number; k: number }[] = [];
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = (y * w + x) * 3;
      const d = Math.hypot(data[i] - br, data[i + 1] - bg, data[i + 2] - bb);
      if (d > FOREGROUND_DISTANCE) fg.push({ y, k: nearestColour(data[i], data[i + 1], data[i + 2]) });
    }
  }
  return fg;
}

/** The foreground as a mask (1: the pixel stands out from the border colour), for the shape fit. */
export function foregroundMask(img: ToyImage): Mask {
  const { data, width: w, height: h } = img;
  const [br, bg, bb] = borderColour(img);
  const mask = new Uint8Array(w * h);
  for (let p = 0; p < w * h; p++)
    mask[p] = Math.hypot(data[3 * p] - br, data[3 * p + 1] - bg, data[3 * p + 2] - bb) > FOREGROUND_DISTANCE ? 1 : 0;
  return { data: mask, width: w, height: h };
}

/** The subject embedding described above: 2 x |palette| numbers, unit length (or all zero). */
export function subjectEmbedding(img: ToyImage): Float32Array {
  const fg = foreground(img);
  const n = COLOUR_NAMES.length;
  const e = new Float32Array(2 * n);
  if (fg.length < 4) return e;
  const cy = fg.reduce((s, p) => s + p.y, 0) / fg.length;
  for (const p of fg) e[(p.y < cy ? 0 : n) + p.k] += 1;
  const norm = Math.hypot(...e);
  for (let i = 0; i < e.length; i++) e[i] /= norm;
  return e;
}

function dot(a: Float32Array, b: Float32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

/** Mean cosine similarity of one generated image's colour embedding to the subject photos' (0..1). */
function colourScore(e: Float32Array, refs: readonly Float32Array[]): number {
  return refs.reduce((s, r) => s + dot(e, r), 0) / refs.length;
}

/**
 * Each generated image's subject score: its colour score (the mean cosine of its colour embedding
 * to each photo's) times its foreground mask's IoU with the ideal shape of the subject's kind
 * (toyShape.ts), so a blob in the right colours is not a full match.
 */
export function subjectScores(generated: readonly ToyImage[], photos: readonly ToyImage[]): number[] {
  if (!generated.length || !photos.length)
    throw new Error(`subjectFidelity: need generated images and photos, got ${generated.length} and ${photos.length}`);
  const refs = photos.map(subjectEmbedding);
  const kind = subjectKind(photos.map(foregroundMask));
  return generated.map((g) => colourScore(subjectEmbedding(g), refs) * fitShape(foregroundMask(g), kind).iou);
}

/** The mean subject score over the generated images (0..1): 1 for the subject itself. */
export function subjectFidelity(generated: readonly ToyImage[], photos: readonly ToyImage[]): number {
  const scores = subjectScores(generated, photos);
  return scores.reduce((a, b) => a + b, 0) / scores.length;
}

/** The colour score alone (the subject score before issue 26 added the shape), mean over images. */
export function colourFidelity(generated: readonly ToyImage[], photos: readonly ToyImage[]): number {
  if (!generated.length || !photos.length)
    throw new Error(`colourFidelity: need generated images and photos, got ${generated.length} and ${photos.length}`);
  const refs = photos.map(subjectEmbedding);
  return generated.reduce((s, g) => s + colourScore(subjectEmbedding(g), refs), 0) / generated.length;
}

/** Share of images whose background is the requested colour (0..1). */
export function promptFidelity(generated: readonly { image: ToyImage; background: ColourName }[]): number {
  if (!generated.length) throw new Error('promptFidelity: no images');
  return generated.filter((g) => backgroundColour(g.image) === g.background).length / generated.length;
}

/** The palette colours that make up at least `minShare` of the foreground (the subject's colours). */
export function foregroundColours(img: ToyImage, minShare = 0.1): ColourName[] {
  const fg = foreground(img);
  if (fg.length < 4) return [];
  const counts = new Array<number>(COLOUR_NAMES.length).fill(0);
  for (const p of fg) counts[p.k]++;
  return COLOUR_NAMES.filter((_, k) => counts[k] >= minShare * fg.length);
}

/**
 * The object's colour: the palette colour most pixels in front of the background snap to (the
 * pixels the subject embedding counts), or null when fewer than 4 pixels stand out.
 */
export function objectColour(img: ToyImage): ColourName | null {
  const fg = foreground(img);
  if (fg.length < 4) return null;
  const counts = new Array<number>(COLOUR_NAMES.length).fill(0);
  for (const p of fg) counts[p.k]++;
  return COLOUR_NAMES[counts.indexOf(Math.max(...counts))];
}

export { backgroundColour, borderColour, toyBackgroundCaption } from '../toy/toyColours.ts';
