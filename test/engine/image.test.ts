/**
 * image/sharp.ts: decode (orientation, channels, errors that name the file), metadata, centre-aligned
 * resize measured against an exact port of Pillow's BICUBIC, crops, fit modes, flips and encoders.
 * Fixture images are made through the module itself (only sharp.ts imports sharp).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { deflateSync } from 'node:zlib';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  centerCrop,
  crop,
  decodeImage,
  encodeImage,
  fitToSize,
  flip,
  ImageError,
  labelGrid,
  readImageMetadata,
  resize,
  roundHalfEven,
  type RgbImage,
} from '../../src-main/engine/image/sharp.ts';
import { crc32, writePngText } from '../../src-main/engine/image/pngText.ts';
import { SafetensorsFile } from '../../src-main/engine/io/safetensors.ts';
import { FIXTURES } from '../helpers/fixtures.ts';

const scratch = mkdtempSync(join(tmpdir(), 'singlora-image-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

function image(width: number, height: number, f: (x: number, y: number) => [number, number, number]): RgbImage {
  const data = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) data.set(f(x, y), (y * width + x) * 3);
  return { data, width, height };
}
const px = (img: RgbImage, x: number, y: number) =>
  Array.from(img.data.subarray((y * img.width + x) * 3, (y * img.width + x) * 3 + 3));
function lcg(seed: number) {
  let s = seed >>> 0;
  return () => (s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32;
}
/** Smooth gradients, hard-edged shapes and mild noise: the kind of content where kernels differ. */
function synthetic(width: number, height: number, seed = 7): RgbImage {
  const rnd = lcg(seed);
  return image(width, height, (x, y) => {
    const inDisc = (x - width * 0.6) ** 2 + (y - height * 0.4) ** 2 < (height * 0.2) ** 2;
    const stripe = Math.floor(x / 37) % 2 === 0 && y > height * 0.7;
    return [
      inDisc ? 240 : stripe ? 30 : Math.round((255 * x) / width),
      inDisc ? 200 : stripe ? 90 : Math.round((255 * y) / height),
      Math.min(255, Math.max(0, Math.round(128 + 60 * Math.sin(x / 13) * Math.cos(y / 17) + (rnd() - 0.5) * 20))),
    ];
  });
}

// ---- reference: Pillow 9.4 ImagingResample with BICUBIC, ported line by line (uint8 RGB) ----
// Keys cubic a = -0.5; support 2·max(scale, 1); window clipped to the image and renormalised;
// 22-bit fixed-point weights; horizontal pass first, each pass rounded and clamped to uint8.
function pillowBicubic(src: RgbImage, outW: number, outH: number): RgbImage {
  const PREC = 22;
  const cubic = (x: number) => {
    const a = -0.5;
    x = Math.abs(x);
    if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
    if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
    return 0;
  };
  const coeffs = (inSize: number, outSize: number) => {
    const scale = inSize / outSize;
    const filterscale = Math.max(scale, 1);
    const support = 2 * filterscale;
    return Array.from({ length: outSize }, (_, xx) => {
      const center = (xx + 0.5) * scale;
      const xmin = Math.max(0, Math.trunc(center - support + 0.5));
      const xmax = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
      const w = Array.from({ length: xmax }, (_, x) => cubic((x + xmin - center + 0.5) / filterscale));
      const sum = w.reduce((s, v) => s + v, 0);
      return {
        xmin,
        k: w
          .map((v) => (sum ? v / sum : v))
          .map((v) => (v < 0 ? Math.trunc(-0.5 + v * (1 << PREC)) : Math.trunc(0.5 + v * (1 << PREC)))),
      };
    });
  };
  const clip8 = (v: number) => Math.min(255, Math.max(0, Math.floor(v / (1 << PREC))));
  let cur = src;
  if (outW !== src.width) {
    const cs = coeffs(src.width, outW);
    cur = image(
      outW,
      src.height,
      (xx, y) =>
        [0, 1, 2].map((c) =>
          clip8(
            cs[xx].k.reduce((s, k, x) => s + src.data[(y * src.width + cs[xx].xmin + x) * 3 + c] * k, 1 << (PREC - 1)),
          ),
        ) as [number, number, number],
    );
  }
  if (outH === cur.height) return cur;
  const cs = coeffs(cur.height, outH);
  const tmp = cur;
  return image(
    tmp.width,
    outH,
    (x, yy) =>
      [0, 1, 2].map((c) =>
        clip8(
          cs[yy].k.reduce((s, k, y) => s + tmp.data[((cs[yy].xmin + y) * tmp.width + x) * 3 + c] * k, 1 << (PREC - 1)),
        ),
      ) as [number, number, number],
  );
}

function diff(a: RgbImage, b: RgbImage, border = 0) {
  expect([a.width, a.height]).toEqual([b.width, b.height]);
  let max = 0;
  let sum = 0;
  let n = 0;
  for (let y = border; y < a.height - border; y++)
    for (let x = border; x < a.width - border; x++)
      for (let c = 0; c < 3; c++) {
        const d = Math.abs(a.data[(y * a.width + x) * 3 + c] - b.data[(y * a.width + x) * 3 + c]);
        max = Math.max(max, d);
        sum += d;
        n++;
      }
  return { max, mean: sum / n };
}

describe('decodeImage', () => {
  it('decodes PNG losslessly to RGB', async () => {
    const img = synthetic(37, 23);
    const file = join(scratch, 'plain.png');
    writeFileSync(file, await encodeImage(img, 'png'));
    const back = await decodeImage(file);
    expect([back.width, back.height]).toEqual([37, 23]);
    expect(Buffer.from(back.data).equals(Buffer.from(img.data))).toBe(true);
    const fromBuffer = await decodeImage(await encodeImage(img, 'png'));
    expect(Buffer.from(fromBuffer.data).equals(Buffer.from(img.data))).toBe(true);
  });

  it('applies the EXIF orientation (6: rotate 90° clockwise)', async () => {
    // Stored 8×4: left half red, right half blue. Displayed upright it is 4×8 with red on top.
    const stored = image(8, 4, (x) => (x < 4 ? [255, 0, 0] : [0, 0, 255]));
    const jpeg = withExifOrientation(await encodeImage(stored, 'jpeg', { quality: 100 }), 6);
    const meta = await readImageMetadata(jpeg);
    expect(meta).toMatchObject({
      format: 'jpeg',
      width: 8,
      height: 4,
      orientation: 6,
      displayWidth: 4,
      displayHeight: 8,
    });
    const img = await decodeImage(jpeg);
    expect([img.width, img.height]).toEqual([4, 8]);
    const [r0, , b0] = px(img, 1, 1);
    const [r1, , b1] = px(img, 2, 6);
    expect(r0).toBeGreaterThan(200);
    expect(b0).toBeLessThan(60);
    expect(b1).toBeGreaterThan(200);
    expect(r1).toBeLessThan(60);
  });

  it('turns grey and RGBA input into 3-channel RGB, dropping alpha without compositing', async () => {
    const grey = image(5, 4, (x, y) => [x * 40 + y, x * 40 + y, x * 40 + y]);
    const g = await decodeImage(await encodeImage(grey, 'png'));
    expect(Buffer.from(g.data).equals(Buffer.from(grey.data))).toBe(true);
    const rgba = rgbaPng(3, 2, [10, 20, 30, 0]);
    const a = await decodeImage(rgba, { label: 'rgba.png' });
    expect([a.width, a.height, a.data.length]).toEqual([3, 2, 18]);
    expect(px(a, 2, 1)).toEqual([10, 20, 30]);
  });

  it('a non-image file: error names the file and the problem', async () => {
    const file = join(scratch, 'notes.png');
    writeFileSync(file, 'definitely not a picture\n'.repeat(20));
    const err = await decodeImage(file).catch((e: Error) => e);
    expect(err).toBeInstanceOf(ImageError);
    expect((err as Error).message).toMatch(
      new RegExp(`^${escapeRegExp(file)}: not an image, or a format this build cannot read`),
    );
  });

  it('a truncated PNG: error names the file and says corrupt or truncated', async () => {
    const png = await encodeImage(synthetic(64, 64), 'png');
    const file = join(scratch, 'truncated.png');
    writeFileSync(file, png.subarray(0, Math.floor(png.length / 2)));
    await expect(decodeImage(file)).rejects.toThrow(
      new RegExp(`^${escapeRegExp(file)}: cannot decode image: the file is corrupt or truncated`),
    );
  });

  it('the pixel-count guard names the file, its size and the limit', async () => {
    const file = join(scratch, 'big.png');
    writeFileSync(file, await encodeImage(synthetic(120, 100), 'png'));
    await expect(decodeImage(file, { maxPixels: 10_000 })).rejects.toThrow(
      `${file}: image is 120×100 = 0.0 MP, over the 0.0 MP limit`,
    );
    await expect(decodeImage(file, { maxPixels: 12_000 })).resolves.toMatchObject({ width: 120, height: 100 });
  });

  it('a missing file says so', async () => {
    const file = join(scratch, 'missing.jpg');
    await expect(decodeImage(file)).rejects.toThrow(`${file}: file not found`);
  });

  it('a HEIC file gets a HEIC-specific message when this sharp build cannot read it', async () => {
    // An ISO-BMFF header with the 'heic' brand and no decodable content: sharp fails on it either
    // way; the message must say HEIC and what to do.
    const heic = Buffer.concat([
      Buffer.from([0, 0, 0, 24]),
      Buffer.from('ftypheic\0\0\0\0mif1heic', 'latin1'),
      Buffer.alloc(200),
    ]);
    const file = join(scratch, 'IMG_0001.HEIC');
    writeFileSync(file, heic);
    await expect(decodeImage(file)).rejects.toThrow(
      new RegExp(
        `^${escapeRegExp(file)}: HEIC \\(HEVC-coded HEIF\\) images cannot be decoded.*convert the photo to JPEG or PNG`,
      ),
    );
  });

  it('buffer input is named by its label in errors', async () => {
    await expect(decodeImage(Buffer.from('nope'), { label: 'upload #3' })).rejects.toThrow(/^upload #3: /);
  });
});

describe('readImageMetadata', () => {
  it('reports format, size, orientation and PNG text', async () => {
    const png = writePngText(await encodeImage(synthetic(20, 10), 'png'), { parameters: 'a photo of sks dog' });
    const meta = await readImageMetadata(png);
    expect(meta).toMatchObject({
      format: 'png',
      width: 20,
      height: 10,
      orientation: null,
      displayWidth: 20,
      displayHeight: 10,
      hasAlpha: false,
    });
    expect(meta.pngText).toEqual([{ keyword: 'parameters', text: 'a photo of sks dog' }]);
  });
});

describe('resize (centre-aligned) against an exact port of Pillow BICUBIC', () => {
  it('the Pillow port itself reproduces the dino-tiny crops_uint8 exactly', async () => {
    const st = await SafetensorsFile.open(join(FIXTURES, 'dino-tiny/cases.safetensors'));
    const crops = await st.readBytes('crops_uint8');
    await st.close();
    const files = [
      ['landscape_300x200', 384, 256, 80, 16],
      ['small_100x62', 412, 256, 94, 16],
    ] as const;
    const index = { landscape_300x200: 0, small_100x62: 3 };
    for (const [name, w, h, left, top] of files) {
      const src = await decodeImage(join(FIXTURES, `dino-tiny/images/${name}.png`));
      const ours = crop(pillowBicubic(src, w, h), { left, top, width: 224, height: 224 });
      const i = index[name];
      expect(Buffer.from(ours.data).equals(crops.subarray(i * 224 * 224 * 3, (i + 1) * 224 * 224 * 3)), name).toBe(
        true,
      );
    }
  });

  // Measured: 1200×900 -> 341×256: max 2, mean 0.07; 640×480: max 2, mean 0.10;
  // 60×40 -> 157×113 (enlarge): interior max 2, border max 3.
  it.each([
    [1200, 900, 341, 256, 3, 0.15],
    [640, 480, 341, 256, 3, 0.15],
    [300, 280, 274, 256, 3, 0.15],
  ])('reduce %i×%i -> %i×%i with cubic: max ≤ %i, mean ≤ %f levels', async (w, h, ow, oh, maxTol, meanTol) => {
    const src = synthetic(w, h);
    const d = diff(await resize(src, ow, oh, 'cubic'), pillowBicubic(src, ow, oh));
    console.log(`[image] reduce ${w}x${h}->${ow}x${oh}: max ${d.max}, mean ${d.mean.toFixed(3)}`);
    expect(d.max).toBeLessThanOrEqual(maxTol);
    expect(d.mean).toBeLessThanOrEqual(meanTol);
  });

  it.each([
    [60, 40, 157, 113],
    [20, 10, 57, 29],
    [100, 62, 412, 256],
  ])('enlarge %i×%i -> %i×%i with cubic, borders included: max ≤ 3 levels', async (w, h, ow, oh) => {
    const src = synthetic(w, h, 3);
    const d = diff(await resize(src, ow, oh, 'cubic'), pillowBicubic(src, ow, oh));
    console.log(`[image] enlarge ${w}x${h}->${ow}x${oh}: max ${d.max}, mean ${d.mean.toFixed(3)}`);
    expect(d.max).toBeLessThanOrEqual(3);
  });

  it('mixed: one axis shrinks while the other grows', async () => {
    const src = synthetic(200, 50);
    const d = diff(await resize(src, 120, 90, 'cubic'), pillowBicubic(src, 120, 90));
    expect(d.max).toBeLessThanOrEqual(4);
  });

  it('same size is the identity; lanczos3 and cubic differ when reducing', async () => {
    const src = synthetic(64, 48);
    expect(Buffer.from((await resize(src, 64, 48)).data).equals(Buffer.from(src.data))).toBe(true);
    const big = synthetic(400, 300);
    const l3 = await resize(big, 100, 75, 'lanczos3');
    const cu = await resize(big, 100, 75, 'cubic');
    expect(diff(l3, cu).max).toBeGreaterThan(0);
    await expect(resize(src, 0, 10)).rejects.toThrow(/resize: size must be positive integers, got 0×10/);
  });
});

describe('crops, fits and flips', () => {
  it('centre crop rounds half to even like torchvision (Python round)', () => {
    expect([0.5, 1.5, 2.5, 80.5, 81.5, 3, -0.5].map(roundHalfEven)).toEqual([0, 2, 2, 80, 82, 3, -0]);
    const src = image(224 + 161, 224 + 163, (x, y) => [x & 255, y & 255, (x + y) & 255]);
    const c = centerCrop(src, 224, 224);
    expect(px(c, 0, 0)).toEqual([80, 82, 162]); // left round(80.5) = 80, top round(81.5) = 82
    expect(() => crop(src, { left: 300, top: 0, width: 100, height: 10 })).toThrow(/does not fit in a 385×387 image/);
  });

  it("fitToSize 'center' covers and crops; 'none' pads with the background", async () => {
    const wide = image(200, 100, (x) => (x < 50 || x >= 150 ? [255, 0, 0] : [0, 255, 0]));
    const c = await fitToSize(wide, 64, 64, { crop: 'center' });
    expect([c.width, c.height]).toEqual([64, 64]);
    expect(px(c, 32, 32)).toEqual([0, 255, 0]);
    expect(px(c, 0, 32)[1]).toBeGreaterThan(200); // the red margins were cropped away
    const p = await fitToSize(wide, 64, 64, { crop: 'none', background: { r: 1, g: 2, b: 3 } });
    expect([p.width, p.height]).toEqual([64, 64]);
    expect(px(p, 32, 0)).toEqual([1, 2, 3]);
    expect(px(p, 32, 63)).toEqual([1, 2, 3]);
    expect(px(p, 32, 32)).toEqual([0, 255, 0]);
    expect(px(p, 0, 32)).toEqual([255, 0, 0]);
  });

  it("fitToSize 'attention' keeps the salient part of the frame", async () => {
    // Flat grey everywhere except a saturated, busy patch near the right edge.
    const rnd = lcg(11);
    const src = image(300, 100, (x, y) =>
      x > 220 && x < 290 && y > 20 && y < 80 ? [Math.round(rnd() * 255), 0, 255] : [128, 128, 128],
    );
    const a = await fitToSize(src, 100, 100, { crop: 'attention' });
    const c = await fitToSize(src, 100, 100, { crop: 'center' });
    const colourful = (img: RgbImage) => {
      let n = 0;
      for (let i = 0; i < img.data.length; i += 3) if (img.data[i + 2] > 200 && img.data[i + 1] < 60) n++;
      return n;
    };
    expect(colourful(c)).toBe(0);
    expect(colourful(a)).toBeGreaterThan(2000);
  });

  it('flip mirrors exactly', async () => {
    const src = synthetic(7, 5);
    const h = await flip(src);
    const v = await flip(src, 'vertical');
    for (let y = 0; y < 5; y++)
      for (let x = 0; x < 7; x++) {
        expect(px(h, x, y)).toEqual(px(src, 6 - x, y));
        expect(px(v, x, y)).toEqual(px(src, x, 4 - y));
      }
  });
});

describe('encodeImage', () => {
  it('PNG round-trips exactly; JPEG and WebP are close and carry the right signature', async () => {
    const src = synthetic(48, 32);
    const png = await encodeImage(src, 'png');
    expect(png.subarray(1, 4).toString('latin1')).toBe('PNG');
    expect(diff(await decodeImage(png), src).max).toBe(0);
    const jpg = await encodeImage(src, 'jpeg', { quality: 95 });
    expect([jpg[0], jpg[1]]).toEqual([0xff, 0xd8]);
    expect(diff(await decodeImage(jpg), src).mean).toBeLessThan(4);
    const webp = await encodeImage(src, 'webp', { lossless: true });
    expect(webp.subarray(8, 12).toString('latin1')).toBe('WEBP');
    expect(diff(await decodeImage(webp), src).max).toBe(0);
  });
});

// ---- helpers that build files the encoder cannot ----

/** Inserts an APP1 Exif segment with one IFD0 entry, Orientation (0x0112) = `value`, after SOI. */
function withExifOrientation(jpeg: Buffer, value: number): Buffer {
  const tiff = Buffer.alloc(26);
  tiff.write('II', 0, 'latin1');
  tiff.writeUInt16LE(42, 2);
  tiff.writeUInt32LE(8, 4); // IFD0 offset
  tiff.writeUInt16LE(1, 8); // one entry
  tiff.writeUInt16LE(0x0112, 10); // Orientation
  tiff.writeUInt16LE(3, 12); // SHORT
  tiff.writeUInt32LE(1, 14); // count
  tiff.writeUInt16LE(value, 18);
  tiff.writeUInt32LE(0, 22); // no next IFD
  const payload = Buffer.concat([Buffer.from('Exif\0\0', 'latin1'), tiff]);
  const header = Buffer.from([0xff, 0xe1, 0, 0]);
  header.writeUInt16BE(payload.length + 2, 2);
  return Buffer.concat([jpeg.subarray(0, 2), header, payload, jpeg.subarray(2)]);
}

/** A minimal RGBA PNG (colour type 6) of one colour, written by hand with node:zlib. */
function rgbaPng(width: number, height: number, rgba: [number, number, number, number]): Buffer {
  const chunk = (type: string, data: Buffer) => {
    const out = Buffer.alloc(12 + data.length);
    out.writeUInt32BE(data.length, 0);
    out.write(type, 4, 'latin1');
    data.copy(out, 8);
    out.writeUInt32BE(crc32(Buffer.concat([Buffer.from(type, 'latin1'), data])), 8 + data.length);
    return out;
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr.set([8, 6, 0, 0, 0], 8);
  const raw = Buffer.alloc(height * (1 + width * 4));
  for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) raw.set(rgba, y * (1 + width * 4) + 1 + x * 4);
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(raw)),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

describe("labelGrid (the demo's before/after grid)", () => {
  it('adds a left margin with the row labels and a top one with the column labels, the grid unchanged beside them', async () => {
    const grid = { width: 40, height: 30, data: new Uint8Array(40 * 30 * 3).fill(90) };
    const out = await labelGrid(grid, {
      rows: ['base model', 'adapter'],
      cols: ['a', 'b'],
      rowHeight: 15,
      colWidth: 20,
    });
    const left = out.width - grid.width;
    const top = out.height - grid.height;
    expect(left).toBeGreaterThanOrEqual(60);
    expect(top).toBe(22);
    const px = (x: number, y: number) => out.data[(y * out.width + x) * 3];
    // The grid's pixels are where the margins put them.
    for (const [x, y] of [
      [0, 0],
      [39, 29],
      [17, 11],
    ])
      expect(px(left + x, top + y)).toBe(90);
    // Text was drawn: dark pixels in the row-label margin beside each row, none in the corner.
    const darkIn = (x0: number, x1: number, y0: number, y1: number) => {
      let n = 0;
      for (let y = y0; y < y1; y++) for (let x = x0; x < x1; x++) if (px(x, y) < 128) n++;
      return n;
    };
    expect(darkIn(0, left, top, top + 15)).toBeGreaterThan(5);
    expect(darkIn(0, left, top + 15, top + 30)).toBeGreaterThan(5);
    expect(darkIn(left, out.width, 0, top)).toBeGreaterThan(2);
    expect(darkIn(0, left, 0, 4)).toBe(0);
  });
});
