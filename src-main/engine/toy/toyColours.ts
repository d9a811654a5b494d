/**
 * The toy world's colours read off pixels: the palette colour nearest to an RGB value, and an
 * image's background (the median of its border). Used by the toy scores (eval/toyFidelity.ts) and
 * by training's `captionBackground` (a photo's caption "on a <colour> background").
 */
import { COLOUR_NAMES, PALETTE, type ColourName, type ToyImage } from './toyWorld.ts';

/** The index in COLOUR_NAMES of the palette colour nearest to (r, g, b). */
export function nearestColour(r: number, g: number, b: number): number {
  let best = 0;
  let bestD = Infinity;
  COLOUR_NAMES.forEach((name, k) => {
    const c = PALETTE[name];
    const d = (r - c[0]) ** 2 + (g - c[1]) ** 2 + (b - c[2]) ** 2;
    if (d < bestD) {
      bestD = d;
      best = k;
    }
  });
  return best;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** The median colour of the image's one-pixel border, RGB 0-255. */
export function borderColour(img: ToyImage): [number, number, number] {
  const { data, width: w, height: h } = img;
  const ch: number[][] = [[], [], []];
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      if (x !== 0 && y !== 0 && x !== w - 1 && y !== h - 1) continue;
      for (let k = 0; k < 3; k++) ch[k].push(data[(y * w + x) * 3 + k]);
    }
  }
  return [median(ch[0]), median(ch[1]), median(ch[2])];
}

/** The palette colour of the background (prompt fidelity: compare with the requested one). */
export function backgroundColour(img: ToyImage): ColourName {
  const [r, g, b] = borderColour(img);
  return COLOUR_NAMES[nearestColour(r, g, b)];
}

/** A toy photo's context as caption words, "on a <colour> background" (training's `captionBackground`). */
export function toyBackgroundCaption(img: ToyImage): string {
  return `on a ${backgroundColour(img)} background`;
}
