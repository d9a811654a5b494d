/**
 * Optional CLIP scores (Radford et al. 2021), as the DreamBooth paper reports them next to DINO:
 * - CLIP-I: mean cosine between CLIP image embeddings of generated images and subject photos
 *   (the same pairwise mean as DINO, see similarity.ts);
 * - CLIP-T: mean cosine between each generated image and its prompt's CLIP text embedding.
 *
 * Models: the two towers of the common Hugging Face ONNX exports (e.g. Xenova/clip-vit-base-patch32):
 *   vision_model.onnx: pixel_values float32 [N,3,224,224] -> image_embeds [N,D]
 *   text_model.onnx:   input_ids int64 [N,L] (attention_mask [N,L] when the export has it) -> text_embeds [N,D]
 * Text needs the CLIP BPE tokenizer (`models/clipTokenizer.ts`, vocab.json + merges.txt).
 *
 * Preprocessing as transformers' CLIPImageProcessor: short side to 224 (long side
 * int(224·long/short)), bicubic; centre crop 224 at floor((W−224)/2); x/255; CLIP mean/std.
 */
import { ClipTokenizer } from '../models/clipTokenizer.ts';
import { crop, decodeImage, resize, type DecodeOptions, type RgbImage } from '../image/sharp.ts';
import { dinoResizeSize, normalizeNchw, type DinoInput } from './dino.ts';
import type { ClipFiles } from './modelRegistry.ts';
import { OnnxModel, type ModelInterface, type OnnxLoadOptions, type OnnxTensor } from '../backend/onnxRuntime.ts';
import { cosine, subjectFidelity } from './similarity.ts';

export const CLIP_VISION_INTERFACE: ModelInterface = {
  what: 'CLIP image tower (pixel_values [N,3,224,224] -> image_embeds [N,D])',
  inputs: [{ name: 'pixel_values', type: 'float32', shape: ['N', 3, 224, 224] }],
  outputs: [{ name: 'image_embeds', type: 'float32', shape: ['N', 'D'] }],
};

export const CLIP_TEXT_INTERFACE: ModelInterface = {
  what: 'CLIP text tower (input_ids [N,L] -> text_embeds [N,D])',
  inputs: [
    { name: 'input_ids', type: 'int64', shape: ['N', 'L'] },
    { name: 'attention_mask', type: 'int64', shape: ['N', 'L'], optional: true },
  ],
  outputs: [{ name: 'text_embeds', type: 'float32', shape: ['N', 'D'] }],
};

export const CLIP_PREPROCESS = {
  size: 224,
  mean: [0.48145466, 0.4578275, 0.40821073],
  std: [0.26862954, 0.26130258, 0.27577711],
} as const;

/** Decode, resize the short side to 224 (bicubic), centre crop 224 with floor offsets (transformers). */
export async function clipCrop(input: DinoInput, decode: DecodeOptions = {}): Promise<RgbImage> {
  const img =
    typeof input === 'object' && 'width' in input ? input : await decodeImage(input, { ignoreIcc: true, ...decode });
  const s = CLIP_PREPROCESS.size;
  const size = dinoResizeSize(img.width, img.height, s);
  const resized = await resize(img, size.width, size.height, 'cubic');
  return crop(resized, {
    left: Math.floor((resized.width - s) / 2),
    top: Math.floor((resized.height - s) / 2),
    width: s,
    height: s,
  });
}

export class ClipModels {
  private constructor(
    private readonly vision: OnnxModel,
    private readonly text: OnnxModel,
    private readonly tokenizer: ClipTokenizer,
    readonly batchSize: number,
  ) {}

  /** Loads both towers and the tokenizer. Throws, naming the file, when one cannot be used. */
  static async load(files: ClipFiles, options: OnnxLoadOptions & { batchSize?: number } = {}): Promise<ClipModels> {
    const tokenizer = await ClipTokenizer.load(files.tokenizerDir);
    const vision = await OnnxModel.load(files.vision, CLIP_VISION_INTERFACE, options);
    try {
      const text = await OnnxModel.load(files.text, CLIP_TEXT_INTERFACE, options);
      return new ClipModels(vision, text, tokenizer, options.batchSize ?? 8);
    } catch (err) {
      await vision.release();
      throw err;
    }
  }

  /** CLIP image embeddings (`image_embeds`), in input order. */
  async embed(
    inputs: readonly DinoInput[],
    onProgress?: (done: number, total: number) => void,
  ): Promise<Float32Array[]> {
    const out: Float32Array[] = [];
    for (let start = 0; start < inputs.length; start += this.batchSize) {
      const crops = await Promise.all(inputs.slice(start, start + this.batchSize).map((x) => clipCrop(x)));
      const data = normalizeNchw(crops, CLIP_PREPROCESS.size, CLIP_PREPROCESS.mean, CLIP_PREPROCESS.std);
      const { image_embeds: e } = await this.vision.run({
        pixel_values: { type: 'float32', data, dims: [crops.length, 3, 224, 224] },
      });
      out.push(...rows(e.data as Float32Array, crops.length));
      onProgress?.(out.length, inputs.length);
    }
    return out;
  }

  /** CLIP text embeddings (`text_embeds`) of prompts. */
  async embedTexts(texts: readonly string[]): Promise<Float32Array[]> {
    const out: Float32Array[] = [];
    for (let start = 0; start < texts.length; start += this.batchSize) {
      const batch = texts.slice(start, start + this.batchSize);
      const ids = batch.map((t) => this.tokenizer.call(t)); // [n][77]
      const len = ids[0].length;
      const inputIds = BigInt64Array.from(ids.flat(), BigInt);
      const feeds: Record<string, OnnxTensor> = {
        input_ids: { type: 'int64', data: inputIds, dims: [batch.length, len] },
      };
      if (this.text.hasInput('attention_mask')) {
        // 1 up to and including the first <|endoftext|>, 0 over the padding after it.
        const mask = new BigInt64Array(batch.length * len);
        ids.forEach((row, i) => {
          const end = row.indexOf(this.tokenizer.eosTokenId);
          for (let j = 0; j <= (end < 0 ? len - 1 : end); j++) mask[i * len + j] = 1n;
        });
        feeds.attention_mask = { type: 'int64', data: mask, dims: [batch.length, len] };
      }
      const { text_embeds: e } = await this.text.run(feeds);
      out.push(...rows(e.data as Float32Array, batch.length));
    }
    return out;
  }

  async release(): Promise<void> {
    await this.vision.release();
    await this.text.release();
  }
}

export interface ClipScores {
  /** Mean image-image cosine over generated × subject pairs. */
  readonly clipI: number;
  /** Mean image-prompt cosine over generated images that have a prompt; null when none has. */
  readonly clipT: number | null;
  readonly perImage: readonly { file: string; clipI: number; clipT: number | null }[];
}

/** CLIP-I and CLIP-T for generated images (with their prompts, when known) against subject photos. */
export async function clipScores(
  models: ClipModels,
  generated: readonly { file: string; prompt?: string }[],
  photos: readonly string[],
): Promise<ClipScores> {
  const g = await models.embed(generated.map((x) => x.file));
  const r = await models.embed(photos);
  const fidelity = subjectFidelity(
    generated.map((x, i) => ({ file: x.file, embedding: g[i] })),
    photos.map((file, i) => ({ file, embedding: r[i] })),
  );
  const prompted = generated
    .map((x, i) => ({ i, prompt: x.prompt }))
    .filter((x): x is { i: number; prompt: string } => !!x.prompt);
  const t = await models.embedTexts(prompted.map((x) => x.prompt));
  const clipT = new Map(prompted.map((x, k) => [x.i, cosine(g[x.i], t[k])]));
  const perImage = generated.map((x, i) => ({
    file: x.file,
    clipI: fidelity.perImage[i].meanCosine,
    clipT: clipT.get(i) ?? null,
  }));
  const ts = [...clipT.values()];
  return { clipI: fidelity.dino, clipT: ts.length ? ts.reduce((a, b) => a + b, 0) / ts.length : null, perImage };
}

function rows(data: Float32Array, n: number): Float32Array[] {
  const d = data.length / n;
  return Array.from({ length: n }, (_, i) => data.slice(i * d, (i + 1) * d));
}
