/**
 * DINO ViT-S/16 image embedder (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision
 * Transformers"), the backbone of the DreamBooth paper's DINO subject-fidelity metric.
 *
 * Model: the public ONNX export of `facebook/dino-vits16` (e.g. `Xenova/dino-vits16`,
 * `onnx/model.onnx`): input `pixel_values` float32 [N,3,224,224], output `last_hidden_state`
 * float32 [N,197,D] (D = 384 for ViT-S). The embedding is the CLS token, `last_hidden_state[:, 0]`,
 * after the final LayerNorm.
 *
 * Preprocessing, as DINO's evaluation (torchvision) does it:
 *   1. decode to RGB (EXIF orientation applied; ICC profiles ignored, as Pillow does);
 *   2. resize the short side to 256, long side int(256·long/short) (truncation), bicubic with
 *      antialias (sharp 'cubic', centre-aligned: see image/sharp.ts);
 *   3. centre crop 224 at round((W−224)/2), round((H−224)/2) (round half to even);
 *   4. x = u8 / 255, then (x − mean[c]) / std[c] with ImageNet mean/std, float32, NCHW.
 * Steps 1–2 differ from Pillow by a few levels on a few pixels (measured in test/engine/dino.test.ts);
 * step 4 is bit-exact with torch.
 */
import { centerCrop, decodeImage, resize, type DecodeOptions, type ImageInput, type RgbImage } from '../image/sharp.ts';
import { OnnxModel, type ModelInterface, type OnnxLoadOptions } from '../backend/onnxRuntime.ts';

export const DINO_INTERFACE: ModelInterface = {
  what: 'DINO ViT-S/16 image embedder (pixel_values [N,3,224,224] -> last_hidden_state [N,197,D])',
  inputs: [{ name: 'pixel_values', type: 'float32', shape: ['N', 3, 224, 224] }],
  outputs: [{ name: 'last_hidden_state', type: 'float32', shape: ['N', 197, 'D'] }],
};

export const DINO_PREPROCESS = {
  resizeShortSide: 256,
  cropSize: 224,
  kernel: 'cubic',
  mean: [0.485, 0.456, 0.406],
  std: [0.229, 0.224, 0.225],
} as const;

/** A path or encoded image bytes (decoded here), or an already decoded image. */
export type DinoInput = ImageInput | RgbImage;

/** torchvision `Resize(short)`: the short side becomes `short`, the long side int(short·long/short_in). */
export function dinoResizeSize(
  width: number,
  height: number,
  short: number = DINO_PREPROCESS.resizeShortSide,
): { width: number; height: number } {
  if (width <= height) return { width: short, height: Math.trunc((short * height) / width) };
  return { width: Math.trunc((short * width) / height), height: short };
}

/** Steps 1–3: the 224×224 uint8 crop the model sees. */
export async function dinoCrop(input: DinoInput, decode: DecodeOptions = {}): Promise<RgbImage> {
  const img = isRgbImage(input) ? input : await decodeImage(input, { ignoreIcc: true, ...decode });
  const size = dinoResizeSize(img.width, img.height);
  const resized = await resize(img, size.width, size.height, DINO_PREPROCESS.kernel);
  return centerCrop(resized, DINO_PREPROCESS.cropSize, DINO_PREPROCESS.cropSize);
}

/** Step 4: crops → `pixel_values` [N,3,224,224], float32 arithmetic as torch does it. */
export function dinoPixelValues(crops: readonly RgbImage[]): Float32Array {
  return normalizeNchw(crops, DINO_PREPROCESS.cropSize, DINO_PREPROCESS.mean, DINO_PREPROCESS.std);
}

/**
 * HWC uint8 crops → NCHW float32 `(u8/255 − mean[c]) / std[c]`. Each operation is rounded to
 * float32 (a double result of one +,−,× or ÷ rounded to float32 is the float32 result).
 */
export function normalizeNchw(
  crops: readonly RgbImage[],
  size: number,
  mean: readonly number[],
  std: readonly number[],
): Float32Array {
  const plane = size * size;
  const out = new Float32Array(crops.length * 3 * plane);
  const m = mean.map(Math.fround);
  const s = std.map(Math.fround);
  crops.forEach((img, n) => {
    if (img.width !== size || img.height !== size)
      throw new Error(`normalizeNchw: crop ${n} is ${img.width}×${img.height}, expected ${size}×${size}`);
    for (let c = 0; c < 3; c++) {
      const base = (n * 3 + c) * plane; // [N, C, H, W]
      for (let i = 0; i < plane; i++) out[base + i] = Math.fround(Math.fround(img.data[i * 3 + c] / 255) - m[c]) / s[c];
    }
  });
  return out;
}

export interface DinoOptions extends OnnxLoadOptions {
  /** Images per ONNX run (default 8). A model with a fixed batch size overrides it. */
  readonly batchSize?: number;
  readonly decode?: DecodeOptions;
}

export class DinoEmbedder {
  private constructor(
    private readonly model: OnnxModel,
    /** Images per run. */
    readonly batchSize: number,
    /** True when the model's batch dim is fixed: short batches are padded with zeros. */
    private readonly padBatch: boolean,
    private readonly decode: DecodeOptions,
  ) {}

  static async load(file: string, options: DinoOptions = {}): Promise<DinoEmbedder> {
    const model = await OnnxModel.load(file, DINO_INTERFACE, options);
    const fixed = model.fixedDim('pixel_values', 0);
    const batchSize = fixed ?? options.batchSize ?? 8;
    if (!Number.isInteger(batchSize) || batchSize < 1)
      throw new Error(`DinoEmbedder: batchSize must be a positive integer, got ${batchSize}`);
    return new DinoEmbedder(model, batchSize, fixed !== null, options.decode ?? {});
  }

  get file(): string {
    return this.model.file;
  }

  /**
   * CLS embeddings of `n` preprocessed images, `pixelValues` [n,3,224,224]. Runs in batches.
   * Returns one Float32Array(D) per image.
   */
  async embedPixelValues(pixelValues: Float32Array, n: number): Promise<Float32Array[]> {
    const per = 3 * DINO_PREPROCESS.cropSize * DINO_PREPROCESS.cropSize;
    if (pixelValues.length !== n * per)
      throw new Error(
        `DinoEmbedder: pixelValues has ${pixelValues.length} values, expected ${n}×3×224×224 = ${n * per}`,
      );
    const out: Float32Array[] = [];
    for (let start = 0; start < n; start += this.batchSize) {
      const count = Math.min(this.batchSize, n - start);
      out.push(...(await this.runBatch(pixelValues.subarray(start * per, (start + count) * per), count)));
    }
    return out;
  }

  /**
   * CLS embeddings of images (paths, bytes or decoded images), in input order. Decoding and
   * resizing of the next batch overlap the current ONNX run. `onProgress(done, total)` after each batch.
   */
  async embed(
    inputs: readonly DinoInput[],
    onProgress?: (done: number, total: number) => void,
  ): Promise<Float32Array[]> {
    const prepare = (start: number) => {
      const p = Promise.all(inputs.slice(start, start + this.batchSize).map((x) => dinoCrop(x, this.decode)));
      p.catch(() => {}); // awaited below; this only stops an early failure counting as unhandled
      return p;
    };
    const out: Float32Array[] = [];
    let next = inputs.length ? prepare(0) : null;
    for (let start = 0; next; start += this.batchSize) {
      const crops = await next;
      next = start + this.batchSize < inputs.length ? prepare(start + this.batchSize) : null;
      out.push(...(await this.runBatch(dinoPixelValues(crops), crops.length)));
      onProgress?.(out.length, inputs.length);
    }
    return out;
  }

  private async runBatch(pixels: Float32Array, count: number): Promise<Float32Array[]> {
    const per = 3 * DINO_PREPROCESS.cropSize * DINO_PREPROCESS.cropSize;
    let feed = pixels;
    let n = count;
    if (this.padBatch && count < this.batchSize) {
      feed = new Float32Array(this.batchSize * per);
      feed.set(pixels);
      n = this.batchSize;
    }
    const { last_hidden_state: h } = await this.model.run({
      pixel_values: { type: 'float32', data: feed, dims: [n, 3, 224, 224] },
    });
    if (h.type !== 'float32') throw new Error(`${this.file}: last_hidden_state is ${h.type}, expected float32`);
    const [, tokens, dim] = h.dims; // [N, 197, D]
    const out: Float32Array[] = [];
    for (let i = 0; i < count; i++) out.push(h.data.slice(i * tokens * dim, i * tokens * dim + dim)); // CLS = token 0
    return out;
  }

  async release(): Promise<void> {
    await this.model.release();
  }
}

function isRgbImage(x: DinoInput): x is RgbImage {
  return typeof x === 'object' && 'width' in x && 'height' in x && 'data' in x;
}
