/**
 * The shape of what a toy-world picture shows: the foreground mask's intersection over union with
 * the best-fitting ideal ball, square or triangle (toy/toyWorld.ts `inside`), upright, with its
 * position and size fitted. A crisp ball scores about 0.95 as a ball; a shapeless blob of the same
 * area scores well below; the threshold for "has the shape" is SHAPE_IOU (issue 26).
 *
 * The fit, per kind:
 *   1. start from the mask's moments: the centroid, and the size whose ideal area equals the mask's
 *      (ball: area pi r^2; square: (2 * 0.85 r)^2; triangle: 2 r^2, centroid r/3 below its centre)
 *   2. coordinate ascent on (cx, cy, r) in pixels with steps 2, 1, 0.5, 0.25: take a move while it
 *      raises the IoU
 * Pixels are tested at their centres, as drawScene's supersamples are, at one sample per pixel.
 */
import { KINDS, type Kind, type Scene } from '../toy/toyWorld.ts';

/** The IoU at or above which a picture "has" a shape (the goal). */
export const SHAPE_IOU = 0.8;

/** A foreground mask: 1 where a pixel stands out from the background. */
export interface Mask {
  readonly data: Uint8Array;
  readonly width: number;
  readonly height: number;
}

export interface ShapeFit {
  readonly kind: Kind;
  /** Centre and half-size in pixels (Scene's cx, cy, r times the side). */
  readonly cx: number;
  readonly cy: number;
  readonly r: number;
  readonly iou: number;
}

/** Scene's `inside`, in pixels: is (x, y) inside the ideal `kind` at (cx, cy) of half-size r? */
function insideShape(kind: Kind, cx: number, cy: number, r: number, x: number, y: number): boolean {
  const dx = x - cx;
  const dy = y - cy;
  if (kind === 'ball') return dx * dx + dy * dy <= r * r;
  if (kind === 'square') return Math.abs(dx) <= r * 0.85 && Math.abs(dy) <= r * 0.85;
  if (dy < -r || dy > r) return false;
  return Math.abs(dx) <= (dy + r) / 2;
}

/** IoU of the mask with the ideal shape, over the bounding box of both. */
export function shapeIoU(mask: Mask, kind: Kind, cx: number, cy: number, r: number): number {
  const { data, width: w, height: h } = mask;
  let inter = 0;
  let union = 0;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const m = data[y * w + x] === 1;
      const s = insideShape(kind, cx, cy, r, x + 0.5, y + 0.5);
      if (m && s) inter++;
      if (m || s) union++;
    }
  }
  return union ? inter / union : 0;
}

/** Step 1: the start from the mask's moments (area, centroid). */
function initialFit(mask: Mask, kind: Kind): { cx: number; cy: number; r: number } {
  let n = 0;
  let sx = 0;
  let sy = 0;
  for (let y = 0; y < mask.height; y++)
    for (let x = 0; x < mask.width; x++)
      if (mask.data[y * mask.width + x]) {
        n++;
        sx += x + 0.5;
        sy += y + 0.5;
      }
  const cx = sx / n;
  const cy = sy / n;
  if (kind === 'ball') return { cx, cy, r: Math.sqrt(n / Math.PI) };
  if (kind === 'square') return { cx, cy, r: Math.sqrt(n) / 1.7 };
  const r = Math.sqrt(n / 2);
  return { cx, cy: cy - r / 3, r };
}

/** The best fit of one kind (steps 1 and 2 above); IoU 0 for an empty mask. */
export function fitShape(mask: Mask, kind: Kind): ShapeFit {
  if (!mask.data.some((v) => v === 1)) return { kind, cx: 0, cy: 0, r: 0, iou: 0 };
  const p = initialFit(mask, kind);
  let iou = shapeIoU(mask, kind, p.cx, p.cy, p.r);
  for (const step of [2, 1, 0.5, 0.25]) {
    let moved = true;
    while (moved) {
      moved = false;
      for (const key of ['cx', 'cy', 'r'] as const) {
        for (const sign of [1, -1]) {
          const q = { ...p, [key]: p[key] + sign * step };
          if (q.r <= 0) continue;
          const v = shapeIoU(mask, kind, q.cx, q.cy, q.r);
          if (v > iou) {
            iou = v;
            p[key] = q[key];
            moved = true;
          }
        }
      }
    }
  }
  return { kind, ...p, iou };
}

/** The best fit of every kind, best first. */
export function fitShapes(mask: Mask): ShapeFit[] {
  return KINDS.map((k) => fitShape(mask, k)).sort((a, b) => b.iou - a.iou);
}

/**
 * Does the picture show `kind`: its IoU with the ideal `kind` is at least SHAPE_IOU and no other
 * kind fits better (a square's IoU with a ball can reach about 0.8 too).
 */
export function hasShape(mask: Mask, kind: Kind): boolean {
  const [best] = fitShapes(mask);
  return best.kind === kind && best.iou >= SHAPE_IOU;
}

/** The kind of the subject: the kind that fits the photos best on average. */
export function subjectKind(masks: readonly Mask[]): Kind {
  if (!masks.length) throw new Error('subjectKind: no photos to read the shape from');
  const mean = KINDS.map((k) => masks.reduce((s, m) => s + fitShape(m, k).iou, 0) / masks.length);
  return KINDS[mean.indexOf(Math.max(...mean))];
}

/** The ideal shape of a scene, as a mask (for tests and for reading off a drawn scene). */
export function sceneMask(s: Scene, size: number): Mask {
  const data = new Uint8Array(size * size);
  for (let y = 0; y < size; y++)
    for (let x = 0; x < size; x++)
      data[y * size + x] = insideShape(s.kind, s.cx * size, s.cy * size, s.r * size, x + 0.5, y + 0.5) ? 1 : 0;
  return { data, width: size, height: size };
}
