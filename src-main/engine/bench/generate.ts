/**
 * Generation benchmark: seconds per image and UNet iterations per second for a base model on
 * the current backend (classifier-free guidance, so one iteration is a batch-2 UNet call).
 */
import { initBackend, type BackendName } from '../backend/tf.ts';
import { StableDiffusion, type InferenceOptions } from '../pipeline/stableDiffusion.ts';
import { textToImage } from '../pipeline/textToImage.ts';

export interface BenchGenerateOptions {
  base: string;
  steps?: number;
  images?: number;
  width?: number;
  height?: number;
  scheduler?: 'ddim' | 'dpmpp-2m-karras' | 'euler-a' | 'pndm';
  backend?: BackendName | 'auto';
  /** Default: ONNX Runtime, auto provider. */
  inference?: InferenceOptions;
}

export interface BenchGenerateReport {
  bench: 'generate';
  engine: string;
  /** ONNX Runtime providers used (onnx engine), e.g. 'cpu'. */
  provider: string | null;
  /** ONNX compute type (onnx engine). */
  dtype: string | null;
  backend: string;
  device: string | null;
  config: {
    base: string;
    steps: number;
    images: number;
    width: number;
    height: number;
    scheduler: string;
    guidance: number;
  };
  load_s: number;
  s_per_image: number;
  unet_its: number;
  decode_s: number;
  /** The process's peak resident memory (getrusage maxRSS). */
  peak_rss_mb: number;
}

export async function benchGenerate(o: BenchGenerateOptions): Promise<BenchGenerateReport> {
  const info = await initBackend(o.backend ?? 'auto');
  const t0 = performance.now();
  const sd = await StableDiffusion.load(o.base, o.inference);
  const loadS = (performance.now() - t0) / 1000;
  try {
    const steps = o.steps ?? 20;
    const images = o.images ?? 2;
    const width = o.width ?? sd.defaultResolution;
    const height = o.height ?? sd.defaultResolution;
    const scheduler = o.scheduler ?? 'dpmpp-2m-karras';
    // One warm-up image, then the timed ones.
    await textToImage(sd, { prompt: 'warm-up', steps: 2, guidanceScale: 7.5, scheduler, seed: 0, width, height });
    let stepStart = 0;
    let unetMs = 0;
    let last = 0;
    const start = performance.now();
    await textToImage(
      sd,
      {
        prompt: 'a photo of sks dog on the beach',
        negativePrompt: 'blurry',
        steps,
        guidanceScale: 7.5,
        scheduler,
        seed: 1,
        width,
        height,
        count: images,
      },
      {
        onStep: (i) => {
          const now = performance.now();
          if (i.step === 1) stepStart = last && i.image > 0 ? last : start;
          unetMs += now - (i.step === 1 ? stepStart : last);
          last = now;
        },
      },
    );
    const total = (performance.now() - start) / 1000;
    const unetS = unetMs / 1000;
    const onnx = sd.engine === 'onnx' ? await sd.onnx() : null;
    return {
      bench: 'generate',
      engine: sd.engine,
      provider: onnx?.activeProviders?.join('+') ?? null,
      dtype: onnx?.computeType ?? null,
      backend: info.name,
      device: info.device ?? null,
      config: { base: o.base, steps, images, width, height, scheduler, guidance: 7.5 },
      load_s: loadS,
      s_per_image: total / images,
      unet_its: (steps * images) / unetS,
      decode_s: Math.max(0, total - unetS) / images,
      peak_rss_mb: process.resourceUsage().maxRSS / 1024,
    };
  } finally {
    sd.dispose();
  }
}
