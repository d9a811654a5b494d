/**
 * Subject photos in: checks every file, keeps going past bad ones with a per-file reason, and
 * brings the good ones to the training resolution (images through engine/image/sharp.ts only).
 *
 * | check                                   | verdict                                  |
 * | --------------------------------------- | ---------------------------------------- |
 * | not decodable (not an image, truncated) | rejected, with the decoder's reason      |
 * | more pixels than `maxPixels`            | rejected (decompression-bomb guard)      |
 * | short side < resolution / 2             | rejected (too small to train on)         |
 * | short side < resolution                 | warning (upscaled)                       |
 * | same bytes as an earlier photo          | rejected (exact duplicate of <file>)     |
 *
 * Captions: the instance prompt, unless a `.txt` with the photo's name sits beside it.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';
import { basename, extname, join } from 'node:path';
import { decodeImage, fitToSize, flip, type CropMode, type RgbImage } from '../image/sharp.ts';

import { IMAGE_EXTENSIONS, isImageExtension } from '../../api/schemas.ts';

export { IMAGE_EXTENSIONS };

/** 64 megapixels: a 50 MP camera photo passes, a decompression bomb does not. */
export const DEFAULT_MAX_PIXELS = 64_000_000;

export interface PhotoCheck {
  file: string;
  status: 'ok' | 'warning' | 'rejected';
  reason?: string;
  width?: number;
  height?: number;
}

export interface TrainImage {
  file: string;
  caption: string;
  image: RgbImage;
}

export interface DatasetOptions {
  resolution: number;
  crop: CropMode;
  /** Also yield a horizontally flipped copy of each photo. */
  flip: boolean;
  instancePrompt: string;
  /** Words for a photo's context, appended to the instance prompt of photos without a caption .txt. */
  contextCaption?: (image: RgbImage) => string;
  maxPixels?: number;
}

export interface Dataset {
  images: TrainImage[];
  checks: PhotoCheck[];
  warnings: string[];
}

/** Image files in a folder (sorted by name), or the given files as they are. */
export async function listPhotos(input: string | readonly string[]): Promise<string[]> {
  if (typeof input !== 'string') return [...input];
  let info: Awaited<ReturnType<typeof stat>>;
  try {
    info = await stat(input);
  } catch {
    throw new Error(`photos: ${input} does not exist`);
  }
  if (!info.isDirectory()) return [input];
  const names = (await readdir(input))
    .filter((n) => !n.startsWith('.') && extname(n).toLowerCase() !== '.txt' && extname(n).toLowerCase() !== '.json')
    .sort();
  return names.map((n) => join(input, n));
}

/** Checks one photo: decodes it (with EXIF orientation) and applies the size rules. */
export async function checkPhoto(
  file: string,
  resolution: number,
  maxPixels = DEFAULT_MAX_PIXELS,
): Promise<{ check: PhotoCheck; image?: RgbImage; bytes?: Buffer }> {
  let bytes: Buffer;
  try {
    bytes = await readFile(file);
  } catch (err) {
    return { check: { file, status: 'rejected', reason: `cannot read the file (${(err as Error).message})` } };
  }
  let image: RgbImage;
  try {
    image = await decodeImage(bytes, { label: basename(file), maxPixels });
  } catch (err) {
    const msg = (err as Error).message.replace(`${basename(file)}: `, '');
    const ext = extname(file).toLowerCase();
    if (ext === '.heic' || ext === '.heif') {
      return {
        check: {
          file,
          status: 'rejected',
          reason: `HEIC/HEIF photos cannot be read by this build of sharp (${msg}); export the photo as JPEG or PNG`,
        },
      };
    }
    const hint = isImageExtension(ext) ? '' : ` (expected a JPEG, PNG, WebP, AVIF, TIFF or HEIC photo)`;
    return { check: { file, status: 'rejected', reason: `not a readable image: ${msg}${hint}` } };
  }
  const { width, height } = image;
  const short = Math.min(width, height);
  if (short < resolution / 2) {
    return {
      check: {
        file,
        status: 'rejected',
        width,
        height,
        reason: `too small: ${width}x${height}; the short side must be at least ${resolution / 2} px to train at ${resolution}`,
      },
    };
  }
  if (short < resolution) {
    return {
      check: {
        file,
        status: 'warning',
        width,
        height,
        reason: `smaller than the training resolution (${width}x${height} < ${resolution}); it will be upscaled`,
      },
      image,
      bytes,
    };
  }
  return { check: { file, status: 'ok', width, height }, image, bytes };
}

/** Loads and checks every photo, and prepares the usable ones. Throws when none is usable. */
export async function loadDataset(input: string | readonly string[], opts: DatasetOptions): Promise<Dataset> {
  if (opts.resolution % 64 !== 0) throw new Error(`resolution must be a multiple of 64, got ${opts.resolution}`);
  const files = await listPhotos(input);
  const checks: PhotoCheck[] = [];
  const images: TrainImage[] = [];
  const seen = new Map<string, string>();
  for (const file of files) {
    const { check, image, bytes } = await checkPhoto(file, opts.resolution, opts.maxPixels);
    if (image && bytes) {
      const hash = createHash('sha256').update(bytes).digest('hex');
      const first = seen.get(hash);
      if (first) {
        checks.push({
          file,
          status: 'rejected',
          width: check.width,
          height: check.height,
          reason: `exact duplicate of ${basename(first)}`,
        });
        continue;
      }
      seen.set(hash, file);
      const prompt = opts.contextCaption ? `${opts.instancePrompt} ${opts.contextCaption(image)}` : opts.instancePrompt;
      const caption = await captionFor(file, prompt);
      const fitted = await fitToSize(image, opts.resolution, opts.resolution, { crop: opts.crop });
      images.push({ file, caption, image: fitted });
      if (opts.flip) images.push({ file: `${file}#flip`, caption, image: await flip(fitted) });
    }
    checks.push(check);
  }
  const usable = checks.filter((c) => c.status !== 'rejected').length;
  const warnings: string[] = [];
  if (usable === 0) {
    const why = checks.length ? checks.map((c) => `  ${basename(c.file)}: ${c.reason}`).join('\n') : '  (no files)';
    throw new Error(`no usable subject photos in ${typeof input === 'string' ? input : 'the given files'}:\n${why}`);
  }
  if (usable < 3)
    warnings.push(
      `only ${usable} usable photo${usable === 1 ? '' : 's'}; 3 to 20 photos of the subject give much better results`,
    );
  return { images, checks, warnings };
}

/** The caption in `<photo>.txt` beside the photo, if any, else the instance prompt. */
export async function captionFor(file: string, instancePrompt: string): Promise<string> {
  const txt = join(file, '..', `${basename(file, extname(file))}.txt`);
  if (!existsSync(txt)) return instancePrompt;
  const text = (await readFile(txt, 'utf8')).trim();
  return text || instancePrompt;
}

/** RGB uint8 HWC -> float32 in [-1, 1] (the VAE's input range). */
export function toModelRange(img: RgbImage): Float32Array {
  const out = new Float32Array(img.data.length);
  for (let i = 0; i < out.length; i++) out[i] = img.data[i] / 127.5 - 1;
  return out;
}
