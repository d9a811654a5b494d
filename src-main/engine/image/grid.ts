/**
 * Tiles RGB images (HWC, 0-255, all the same size) into one grid image, row by row, with a
 * `gap`-pixel white border between cells and `scale`x nearest-neighbour enlargement (small
 * pictures stay readable). Pure: encode the result with image/sharp.ts.
 */
export interface GridImage {
  readonly data: Uint8Array;
  readonly width: number;
  readonly height: number;
}

export function imageGrid(
  images: readonly GridImage[],
  cols: number,
  o: { scale?: number; gap?: number } = {},
): GridImage {
  if (!images.length) throw new Error('imageGrid: no images');
  const { width: w, height: h } = images[0];
  const bad = images.find((i) => i.width !== w || i.height !== h);
  if (bad) throw new Error(`imageGrid: every image must be ${w}x${h}, got one of ${bad.width}x${bad.height}`);
  const scale = o.scale ?? 1;
  const gap = o.gap ?? 2;
  const rows = Math.ceil(images.length / cols);
  const cw = w * scale;
  const ch = h * scale;
  const width = cols * cw + (cols + 1) * gap;
  const height = rows * ch + (rows + 1) * gap;
  const data = new Uint8Array(width * height * 3).fill(255);
  images.forEach((img, k) => {
    const ox = gap + (k % cols) * (cw + gap);
    const oy = gap + Math.floor(k / cols) * (ch + gap);
    for (let y = 0; y < ch; y++) {
      for (let x = 0; x < cw; x++) {
        const src = (Math.floor(y / scale) * w + Math.floor(x / scale)) * 3;
        const dst = ((oy + y) * width + ox + x) * 3;
        data[dst] = img.data[src];
        data[dst + 1] = img.data[src + 1];
        data[dst + 2] = img.data[src + 2];
      }
    }
  });
  return { data, width, height };
}
