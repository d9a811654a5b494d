/**
 * What runs the Stable Diffusion components for inference: one interface, one implementation per
 * engine (`tfjsExecutor.ts`: TensorFlow.js, the engine training uses; `onnxExecutor.ts`: ONNX
 * Runtime over graphs emitted from the same model definitions). `StableDiffusion` holds one and
 * does not branch on the engine; the sampling loop (textToImage.ts) and the schedulers work on
 * plain Float32Arrays, so the ONNX Runtime path never touches TensorFlow.js.
 *
 * Arrays are row-major, latents and images NHWC. The text context of a sampling run stays on the
 * executor's side: `holdContext` takes the prompt embeddings once per image batch and every
 * `predictNoise` of the run reuses them (a tensor on TensorFlow.js, the same feed on ONNX Runtime).
 */
import { ENGINES, type EngineChoice } from '../../api/schemas.ts';
import type { ImportReport } from '../adapters/import.ts';

/** The inference engines: the API's list (api/schemas.ts ENGINES). */
export const INFERENCE_ENGINES = ENGINES;
export type InferenceEngine = EngineChoice;

/** A float32 row-major array with its dims. */
export interface HostArray {
  readonly data: Float32Array;
  readonly dims: readonly number[];
}

/** Prompt embeddings [B, S, D] held by an executor for the steps of a run; `dispose` frees them. */
export interface TextContext {
  readonly dims: readonly number[];
  dispose(): void;
}

export interface LatentDistributionArrays {
  readonly mean: HostArray;
  readonly logvar: HostArray;
  readonly std: HostArray;
}

export interface ExecutionInfo {
  engine: InferenceEngine;
  /** ONNX Runtime execution providers (e.g. 'cpu', 'webgpu+cpu') or the TensorFlow.js backend. */
  provider: string;
  dtype: 'float32' | 'float16';
}

export interface AdapterRequest {
  readonly path: string;
  readonly strength: number;
  readonly allowPartial?: boolean;
}

export type ComponentKind = 'unet' | 'vae' | 'textEncoder';

export interface InferenceExecutor {
  readonly engine: InferenceEngine;
  /** Prompt embeddings [B, chunks * 77, hidden] (A1111 chunks and emphasis; diffusers' clip_skip). */
  encodeText(prompts: readonly string[], clipSkip?: number): Promise<HostArray>;
  /** Keeps prompt embeddings [B, S, D] on the executor's side for the steps of a run. */
  holdContext(embeds: HostArray): TextContext;
  /** The UNet's noise prediction for NHWC latents [B, h, w, c] at timestep t over a held context. */
  predictNoise(sample: HostArray, t: number, context: TextContext): Promise<HostArray>;
  /** Unscaled latents NHWC -> the VAE's image NHWC (not clamped). */
  decodeLatents(z: HostArray): Promise<HostArray>;
  /** Image NHWC in [-1, 1] -> the unscaled latent distribution. */
  encodeImage(x: HostArray): Promise<LatentDistributionArrays>;
  /** Applies adapter files, replacing any applied before; returns what each file applied. */
  setAdapters(uses: readonly AdapterRequest[]): Promise<ImportReport[]>;
  /** Removes every applied adapter (patched weights restored exactly). */
  clearAdapters(): void;
  /** What computes the images (on ONNX Runtime: known once the UNet has run, before that the request). */
  describe(): Promise<ExecutionInfo>;
  /** Frees the engine's sessions (all, or one component's); they reopen on next use. */
  release(kind?: ComponentKind): Promise<void>;
  dispose(): void;
}
