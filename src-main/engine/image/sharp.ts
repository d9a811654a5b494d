/**
 * The one file that imports sharp (libvips). Everything else in the engine decodes, resizes, crops
 * and encodes images through the functions here, on plain `RgbImage` values.
 *
 * Design notes:
 * - Every image in the engine is 8-bit RGB, interleaved HWC (`RgbImage`). Decoding applies the EXIF
 *   orientation, converts grey/CMYK/16-bit input to 8-bit sRGB and drops alpha (like Pillow's
 *   `convert("RGB")`, which drops alpha without compositing).
 * - Resizing is centre-aligned on every axis (output pixel x samples input (x + 0.5)·in/out − 0.5,
 *   as Pillow and torchvision do). libvips reduces with the chosen kernel, widened by the scale
 *   factor (antialiased), which is centre-aligned already. It enlarges through an interpolator whose
 *   `resize` placement is half a pixel off, so enlarging goes through `affine` with explicit offsets
 *   on an edge-replicated copy instead. Measured against an exact port of Pillow 9.4's BICUBIC
 *   (`kernel: 'cubic'`): at most 2 levels apart inside the image, 3 at the border.
 * - Errors are `ImageError`s whose message starts with the file (or the buffer's label) and says
 *   what would fix it.
 */
import sharp, { type Interpolators, type Sharp } from 'sharp';
import { open } from 'node:fs/promises';

/** 8-bit RGB pixels, row-major, interleaved: `data[(y * width + x) * 3 + c]`. */
export interface RgbImage {
  readonly data: Uint8Array;
  readonly width: number;
  readonly height: number;
}

/** A file path, or the encoded bytes of an image file. */
export type ImageInput = string | Uint8Array;

export class ImageError extends Error {
  constructor(
    /** The file path or buffer label the error is about. */
    readonly source: string,
    message: string,
  ) {
    super(`${source}: ${message}`);
    this.name = 'ImageError';
  }
}

/** sharp's own default pixel limit (0x3FFF²), about 268 megapixels. */
export const DEFAULT_MAX_PIXELS = 0x3fff * 0x3fff;

export interface DecodeOptions {
  /** Refuse images with more pixels than this (sharp `limitInputPixels`). Default `DEFAULT_MAX_PIXELS`. */
  readonly maxPixels?: number;
  /**
   * Take the stored pixel values as they are instead of converting through an embedded ICC profile.
   * Pillow (and therefore the reference DINO/CLIP evaluations) ignores profiles. Default false.
   */
  readonly ignoreIcc?: boolean;
  /** Name used in error messages for buffer input (a path names itself). */
  readonly label?: string;
}

/** Decodes an image file or buffer to 8-bit RGB, with the EXIF orientation applied. */
export async function decodeImage(input: ImageInput, options: DecodeOptions = {}): Promise<RgbImage> {
  const label = sourceLabel(input, options.label);
  const maxPixels = options.maxPixels ?? DEFAULT_MAX_PIXELS;
  try {
    const { data, info } = await sharp(input, { limitInputPixels: maxPixels, ignoreIcc: options.ignoreIcc ?? false })
      .autoOrient()
      .toColourspace('srgb')
      .removeAlpha()
      .raw({ depth: 'uchar' })
      .toBuffer({ resolveWithObject: true });
    if (info.channels !== 3) throw new ImageError(label, `decoded to ${info.channels} channels, expected 3 (RGB)`);
    return { data: asBytes(data), width: info.width, height: info.height };
  } catch (err) {
    throw await explainError(input, label, err, maxPixels);
  }
}

export interface ImageMetadata {
  /** Decoder name: 'png', 'jpeg', 'webp', 'heif', 'gif', 'tiff', ... */
  readonly format: string;
  /** Stored size, before EXIF orientation. */
  readonly width: number;
  readonly height: number;
  /** EXIF orientation 1..8, or null when absent. */
  readonly orientation: number | null;
  /** Size as displayed, after EXIF orientation (5..8 swap width and height). */
  readonly displayWidth: number;
  readonly displayHeight: number;
  readonly hasAlpha: boolean;
  /** PNG text chunks (tEXt, zTXt, iTXt) as libvips reads them; empty for other formats. */
  readonly pngText: readonly { keyword: string; text: string }[];
}

/** Reads the header only (no pixel decode). */
export async function readImageMetadata(input: ImageInput, options: { label?: string } = {}): Promise<ImageMetadata> {
  const label = sourceLabel(input, options.label);
  try {
    const m = await sharp(input, { limitInputPixels: false }).metadata();
    if (!m.width || !m.height) throw new ImageError(label, `no image size in the header (format ${m.format})`);
    return {
      format: m.format,
      width: m.width,
      height: m.height,
      orientation: m.orientation ?? null,
      displayWidth: m.autoOrient?.width ?? m.width,
      displayHeight: m.autoOrient?.height ?? m.height,
      hasAlpha: m.hasAlpha,
      pngText: (m.comments ?? []).map(({ keyword, text }) => ({ keyword, text })),
    };
  } catch (err) {
    throw await explainError(input, label, err, DEFAULT_MAX_PIXELS);
  }
}

/**
 * Resampling kernel. On reduction libvips applies the kernel widened by the scale factor. On
 * enlargement libvips has interpolators only: 'cubic' and 'lanczos3' both enlarge with bicubic
 * (Catmull-Rom, a = −0.5: Pillow's BICUBIC), 'linear' with bilinear, 'nearest' with nearest.
 */
export type ResizeKernel = 'nearest' | 'linear' | 'cubic' | 'lanczos3';

const ENLARGE_INTERPOLATOR: Record<ResizeKernel, Interpolators[keyof Interpolators]> = {
  nearest: 'nearest',
  linear: 'bilinear',
  cubic: 'bicubic',
  lanczos3: 'bicubic',
};

/** Pixels of edge replication around an image before enlarging: more than the bicubic reach of 2. */
const ENLARGE_PAD = 3;

/** Resizes to exactly `width`×`height` (aspect ratio not kept), centre-aligned. Default kernel lanczos3. */
export async function resize(
  img: RgbImage,
  width: number,
  height: number,
  kernel: ResizeKernel = 'lanczos3',
): Promise<RgbImage> {
  checkImage(img, 'resize');
  checkSize(width, height, 'resize');
  let out = img;
  // 1. Reduce the axes that shrink (kernel widened by the scale: antialiased).
  const reduceW = Math.min(width, img.width);
  const reduceH = Math.min(height, img.height);
  if (reduceW !== img.width || reduceH !== img.height) {
    const { data, info } = await fromRaw(out)
      .resize(reduceW, reduceH, { fit: 'fill', kernel, fastShrinkOnLoad: false })
      .raw()
      .toBuffer({ resolveWithObject: true });
    out = { data: asBytes(data), width: info.width, height: info.height };
  }
  // 2. Enlarge the axes that grow.
  if (width !== out.width || height !== out.height)
    out = await enlarge(out, width, height, ENLARGE_INTERPOLATOR[kernel]);
  return out;
}

/**
 * Enlarges (or keeps) each axis through `affine` on an edge-replicated copy, so border pixels see
 * replicated neighbours rather than black.
 *
 * | symbol | meaning                                    |
 * | ------ | ------------------------------------------ |
 * | s      | scale out/in on one axis (≥ 1)             |
 * | p      | ENLARGE_PAD, replicated pixels on each side |
 * | q      | ceil(s·p): output pixels that come from the pad |
 *
 * We want out + ½ = s·(in + ½) with in = in_p − p (padded input), i.e.
 * out + q = s·(in_p + ½) + (q − s·p − ½). libvips' affine maps X = s·(x + idx) + odx, so
 * idx = ½ and odx = q − s·p − ½; the wanted image starts at output pixel q.
 */
async function enlarge(
  img: RgbImage,
  width: number,
  height: number,
  interpolator: Interpolators[keyof Interpolators],
): Promise<RgbImage> {
  const p = ENLARGE_PAD;
  const sx = width / img.width;
  const sy = height / img.height;
  const qx = Math.ceil(sx * p);
  const qy = Math.ceil(sy * p);
  const padded = await fromRaw(img)
    .extend({ top: p, bottom: p, left: p, right: p, extendWith: 'copy' })
    .raw()
    .toBuffer();
  const { data, info } = await sharp(padded, {
    raw: { width: img.width + 2 * p, height: img.height + 2 * p, channels: 3 },
  })
    .affine([sx, 0, 0, sy], { idx: 0.5, idy: 0.5, odx: qx - sx * p - 0.5, ody: qy - sy * p - 0.5, interpolator })
    .raw()
    .toBuffer({ resolveWithObject: true });
  if (qx + width > info.width || qy + height > info.height) {
    throw new Error(
      `resize: libvips affine gave ${info.width}×${info.height}, too small for a ${width}×${height} window at (${qx}, ${qy}) (enlarging ${img.width}×${img.height})`,
    );
  }
  return crop({ data: asBytes(data), width: info.width, height: info.height }, { left: qx, top: qy, width, height });
}

export interface Region {
  readonly left: number;
  readonly top: number;
  readonly width: number;
  readonly height: number;
}

/** Cuts out `region` (a plain copy, no resampling). */
export function crop(img: RgbImage, region: Region): RgbImage {
  checkImage(img, 'crop');
  const { left, top, width, height } = region;
  checkSize(width, height, 'crop');
  if (
    !Number.isInteger(left) ||
    !Number.isInteger(top) ||
    left < 0 ||
    top < 0 ||
    left + width > img.width ||
    top + height > img.height
  ) {
    throw new Error(
      `crop: region ${width}×${height} at (${left}, ${top}) does not fit in a ${img.width}×${img.height} image`,
    );
  }
  const out = new Uint8Array(width * height * 3);
  const rowBytes = width * 3;
  for (let y = 0; y < height; y++) {
    const from = ((top + y) * img.width + left) * 3;
    out.set(img.data.subarray(from, from + rowBytes), y * rowBytes);
  }
  return { data: out, width, height };
}

/**
 * Centre crop as torchvision's `center_crop`: left = round((W − w) / 2), top = round((H − h) / 2),
 * with Python's round-half-to-even (a 161-pixel margin starts at 80, not 81).
 */
export function centerCrop(img: RgbImage, width: number, height: number): RgbImage {
  return crop(img, {
    left: roundHalfEven((img.width - width) / 2),
    top: roundHalfEven((img.height - height) / 2),
    width,
    height,
  });
}

/** Python 3's `round()` for the halves this module produces. */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * How `fitToSize` reaches the target size:
 * - 'center': scale to cover, then centre crop;
 * - 'attention': scale to cover, then keep the window libvips' attention strategy ranks highest
 *   (luminance frequency, saturation, skin tones);
 * - 'none': no crop: scale to fit inside, then pad the rest with `background`.
 */
export type CropMode = 'center' | 'attention' | 'none';

export interface FitOptions {
  readonly crop?: CropMode;
  readonly kernel?: ResizeKernel;
  /** Pad colour for crop 'none'. Default black. */
  readonly background?: { r: number; g: number; b: number };
}

/** Brings an image to exactly `width`×`height` while keeping its aspect ratio. */
export async function fitToSize(
  img: RgbImage,
  width: number,
  height: number,
  options: FitOptions = {},
): Promise<RgbImage> {
  checkImage(img, 'fitToSize');
  checkSize(width, height, 'fitToSize');
  const mode = options.crop ?? 'center';
  const kernel = options.kernel ?? 'lanczos3';
  if (mode === 'none') {
    const s = Math.min(width / img.width, height / img.height);
    const w = Math.min(width, Math.max(1, Math.round(img.width * s)));
    const h = Math.min(height, Math.max(1, Math.round(img.height * s)));
    const inner = await resize(img, w, h, kernel);
    const left = Math.floor((width - w) / 2);
    const top = Math.floor((height - h) / 2);
    const { data } = await fromRaw(inner)
      .extend({
        left,
        right: width - w - left,
        top,
        bottom: height - h - top,
        background: { ...(options.background ?? { r: 0, g: 0, b: 0 }), alpha: 1 },
      })
      .raw()
      .toBuffer({ resolveWithObject: true });
    return { data: asBytes(data), width, height };
  }
  const s = Math.max(width / img.width, height / img.height);
  const cover = await resize(
    img,
    Math.max(width, Math.round(img.width * s)),
    Math.max(height, Math.round(img.height * s)),
    kernel,
  );
  if (mode === 'center') return centerCrop(cover, width, height);
  // One side already matches, so sharp only picks the window here; it does not resample.
  const { data, info } = await fromRaw(cover)
    .resize(width, height, { fit: 'cover', position: sharp.strategy.attention })
    .raw()
    .toBuffer({ resolveWithObject: true });
  return { data: asBytes(data), width: info.width, height: info.height };
}

/** Mirrors the image: 'horizontal' swaps left and right (the usual training augmentation). */
export async function flip(img: RgbImage, axis: 'horizontal' | 'vertical' = 'horizontal'): Promise<RgbImage> {
  checkImage(img, 'flip');
  const pipeline = axis === 'horizontal' ? fromRaw(img).flop() : fromRaw(img).flip();
  return { data: asBytes(await pipeline.raw().toBuffer()), width: img.width, height: img.height };
}

export type EncodeFormat = 'png' | 'jpeg' | 'webp';

export interface EncodeOptions {
  /** JPEG/WebP quality 1..100 (default 92). */
  readonly quality?: number;
  /** WebP only: lossless. */
  readonly lossless?: boolean;
}

/** Encodes to PNG, JPEG or WebP. PNG text chunks are added afterwards with `pngText.ts`. */
export async function encodeImage(img: RgbImage, format: EncodeFormat, options: EncodeOptions = {}): Promise<Buffer> {
  checkImage(img, 'encodeImage');
  const quality = options.quality ?? 92;
  const pipeline = fromRaw(img);
  switch (format) {
    case 'png':
      return pipeline.png({ compressionLevel: 6 }).toBuffer();
    case 'jpeg':
      return pipeline.jpeg({ quality, chromaSubsampling: '4:4:4' }).toBuffer();
    case 'webp':
      return pipeline.webp({ quality, lossless: options.lossless ?? false }).toBuffer();
  }
}

function fromRaw(img: RgbImage): Sharp {
  return sharp(img.data, { raw: { width: img.width, height: img.height, channels: 3 } });
}

function asBytes(buf: Buffer): Uint8Array {
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
}

function checkImage(img: RgbImage, op: string): void {
  if (
    !Number.isInteger(img.width) ||
    !Number.isInteger(img.height) ||
    img.width < 1 ||
    img.height < 1 ||
    img.data.length !== img.width * img.height * 3
  ) {
    throw new Error(
      `${op}: not an RGB image: ${img.width}×${img.height} needs ${img.width * img.height * 3} bytes, got ${img.data.length}`,
    );
  }
}

function checkSize(width: number, height: number, op: string): void {
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1)
    throw new Error(`${op}: size must be positive integers, got ${width}×${height}`);
}

function sourceLabel(input: ImageInput, label?: string): string {
  return typeof input === 'string' ? input : (label ?? `<buffer of ${input.length} bytes>`);
}

/** ISO-BMFF `ftyp` brands of HEVC-coded HEIF (what phones write as .heic). */
const HEIC_BRANDS = new Set(['heic', 'heix', 'hevc', 'hevx', 'heim', 'heis', 'hevm', 'hevs']);

async function isHeic(input: ImageInput): Promise<boolean> {
  let head: Uint8Array;
  try {
    if (typeof input === 'string') {
      const fh = await open(input, 'r');
      try {
        const buf = Buffer.alloc(64);
        const { bytesRead } = await fh.read(buf, 0, 64, 0);
        head = buf.subarray(0, bytesRead);
      } finally {
        await fh.close();
      }
    } else head = input.subarray(0, 64);
  } catch {
    return false;
  }
  if (head.length < 16 || Buffer.from(head.subarray(4, 8)).toString('latin1') !== 'ftyp') return false;
  const boxSize = Math.min(head.length, Buffer.from(head).readUInt32BE(0));
  const brands = [Buffer.from(head.subarray(8, 12)).toString('latin1')];
  for (let o = 16; o + 4 <= boxSize; o += 4) brands.push(Buffer.from(head.subarray(o, o + 4)).toString('latin1'));
  return !brands.includes('avif') && brands.some((b) => HEIC_BRANDS.has(b));
}

/** Turns a sharp failure into an ImageError that names the file and says what would fix it. */
async function explainError(input: ImageInput, label: string, err: unknown, maxPixels: number): Promise<Error> {
  if (err instanceof ImageError) return err;
  const message = err instanceof Error ? err.message : String(err);
  if (/Input file is missing/i.test(message)) return new ImageError(label, 'file not found');
  if (/exceeds pixel limit/i.test(message)) {
    let size = '';
    try {
      const m = await sharp(input, { limitInputPixels: false }).metadata();
      size = `${m.width}×${m.height} = ${((m.width * m.height) / 1e6).toFixed(1)} MP, `;
    } catch {
      // keep the message without the size
    }
    return new ImageError(
      label,
      `image is ${size}over the ${(maxPixels / 1e6).toFixed(1)} MP limit (maxPixels / sharp limitInputPixels); downscale the file or raise the limit`,
    );
  }
  if (await isHeic(input)) {
    return new ImageError(
      label,
      `HEIC (HEVC-coded HEIF) images cannot be decoded by this sharp build (its libvips has no HEVC decoder; heif input here: ${sharp.format.heif.input.fileSuffix?.join(', ') ?? 'none'}); convert the photo to JPEG or PNG. (libvips: ${firstLine(message)})`,
    );
  }
  if (/unsupported image format/i.test(message)) {
    return new ImageError(
      label,
      `not an image, or a format this build cannot read (supported: PNG, JPEG, WebP, AVIF, GIF, TIFF, SVG) (libvips: ${firstLine(message)})`,
    );
  }
  return new ImageError(
    label,
    `cannot decode image: the file is corrupt or truncated (libvips: ${firstLine(message)})`,
  );
}

function firstLine(s: string): string {
  const lines = s
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);
  return lines.length > 1 ? `${lines[0]} … ${lines[lines.length - 1]}` : (lines[0] ?? s);
}

/** Labels of a grid image (image/grid.ts): one per row, left of it, and one per column, above it. */
export interface GridLabels {
  readonly rows: readonly string[];
  readonly cols?: readonly string[];
  /** Height of one grid row (cell + gap) and width of one column, in the grid's pixels. */
  readonly rowHeight: number;
  readonly colWidth: number;
  /** Pixels before the first cell (the grid's gap). */
  readonly offset?: number;
}

/**
 * The grid with a white margin on the left (row labels) and on top (column labels), written by
 * libvips' SVG text renderer in the system's sans-serif font. Text is escaped for SVG; a label
 * longer than its space is cut with an ellipsis.
 */
export async function labelGrid(grid: RgbImage, labels: GridLabels): Promise<RgbImage> {
  checkImage(grid, 'labelGrid');
  const left = Math.max(60, 8 + 7 * Math.max(...labels.rows.map((l) => l.length)));
  const top = labels.cols?.length ? 22 : 0;
  const offset = labels.offset ?? 0;
  const ellipsize = (s: string, px: number) => {
    const n = Math.max(4, Math.floor(px / 7));
    return s.length > n ? `${s.slice(0, n - 1)}…` : s;
  };
  const text = (x: number, y: number, s: string, anchor: 'start' | 'middle') =>
    `<text x="${x}" y="${y}" text-anchor="${anchor}" font-family="sans-serif" font-size="12" fill="#222">${escapeXml(s)}</text>`;
  const parts = [
    ...labels.rows.map((l, i) => text(4, top + offset + i * labels.rowHeight + labels.rowHeight / 2 + 4, l, 'start')),
    ...(labels.cols ?? []).map((l, j) =>
      text(left + offset + j * labels.colWidth + labels.colWidth / 2, 15, ellipsize(l, labels.colWidth), 'middle'),
    ),
  ];
  const width = grid.width + left;
  const height = grid.height + top;
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}">${parts.join('')}</svg>`;
  const { data, info } = await sharp({ create: { width, height, channels: 3, background: '#ffffff' } })
    .composite([
      { input: Buffer.from(grid.data), raw: { width: grid.width, height: grid.height, channels: 3 }, left, top },
      { input: Buffer.from(svg), left: 0, top: 0 },
    ])
    .removeAlpha()
    .raw()
    .toBuffer({ resolveWithObject: true });
  return {
    data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
    width: info.width,
    height: info.height,
  };
}

function escapeXml(s: string): string {
  return s.replace(/[<>&"']/g, (c) => `&#${c.charCodeAt(0)};`);
}
