/**
 * Generation to files: runs text-to-image and writes each image as a PNG whose `parameters`
 * text chunk carries the settings in A1111's format, plus a JSON sidecar (api/schemas.ts:
 * imageSidecarSchema). Files are named like A1111's, `<00012>-<seed>.png`, and written atomically.
 */
import { randomInt } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { basename, join } from 'node:path';
import {
  generateSettingsSchema,
  SCHEMA_VERSION,
  type GenerateSettings,
  type GenerateSettingsInput,
  type ImageSidecar,
} from '../../api/schemas.ts';
import { atomicWriteFile, atomicWriteJson } from '../io/atomic.ts';
import { hashFile } from '../io/download.ts';
import { encodeImage } from '../image/sharp.ts';
import { writePngText } from '../image/pngText.ts';
import { appVersion } from '../paths.ts';
import { schedulerDisplayName } from '../schedulers/index.ts';
import { formatA1111Parameters } from './generationParams.ts';
import { checkAdapterBase, strictProblem, type AdapterCheck } from '../adapters/import.ts';
import type { OpenBaseModelOptions } from '../io/modelFiles.ts';
import { StableDiffusion, type InferenceOptions } from './stableDiffusion.ts';
import { textToImage, type AdapterUse, type StepInfo } from './textToImage.ts';

export interface GenerateJob {
  /** Base model path; ignored when `sd` is given. */
  base: string;
  /** How to open a single-file base (its `configDir`); ignored when `sd` is given. */
  baseOptions?: OpenBaseModelOptions;
  /** An already loaded pipeline to reuse (the service keeps one warm). */
  sd?: StableDiffusion;
  /** Engine and provider when `sd` is not given (default: ONNX Runtime, auto provider). */
  inference?: InferenceOptions;
  settings: GenerateSettingsInput;
  adapters?: readonly AdapterUse[];
  outDir: string;
  /** Refuse adapters made for another base model, or with tensors that cannot be used. */
  strict?: boolean;
}

export interface GeneratedFile {
  file: string;
  sidecar: ImageSidecar;
}

export interface GenerateHooks {
  onStep?: (info: StepInfo) => void;
  onImage?: (image: GeneratedFile) => void;
  onAdapters?: (summaries: string[]) => void;
  /** Each adapter's full report, checked against the base model (unused tensors, base mismatch). */
  onAdapterChecks?: (checks: AdapterCheck[]) => void;
  signal?: AbortSignal;
}

export async function generateImages(job: GenerateJob, hooks: GenerateHooks = {}): Promise<GeneratedFile[]> {
  const parsed = generateSettingsSchema.safeParse(job.settings);
  if (!parsed.success)
    throw new Error(
      `invalid generation settings: ${parsed.error.issues.map((i) => `${i.path.join('.') || 'settings'}: ${i.message}`).join('; ')}`,
    );
  const seed = parsed.data.seed < 0 ? randomInt(0, 2 ** 32) : parsed.data.seed;
  const sd = job.sd ?? (await StableDiffusion.load(job.base, { ...job.baseOptions, ...job.inference }));
  try {
    // A size left out is the model's native one (512 for SD 1.5), not the schema's default.
    const settings = {
      ...parsed.data,
      width: job.settings.width ?? sd.defaultResolution,
      height: job.settings.height ?? sd.defaultResolution,
    };
    const adapters = job.adapters ?? [];
    const adapterHashes = await Promise.all(
      adapters.map(async (a) => ({ file: a.path, sha256: await hashFile(a.path), strength: a.strength })),
    );
    const modelSha = await sd.unetSha256();
    let index = await nextIndex(job.outDir);
    const out: GeneratedFile[] = [];
    let imageStart = performance.now();
    await textToImage(
      sd,
      { ...settings, seed, adapters },
      {
        signal: hooks.signal,
        onAdapters: (reports) => {
          const checks = reports.map((r) => checkAdapterBase(r, { name: sd.name, unetSha256: modelSha }));
          const refused = job.strict ? checks.map(strictProblem).filter((p) => p !== null) : [];
          if (refused.length) throw new Error(`refused under strict checking: ${refused.join('; ')}`);
          hooks.onAdapterChecks?.(checks);
          hooks.onAdapters?.(reports.map((r) => r.summary));
        },
        onStep: (info) => hooks.onStep?.(info),
        onImage: async (img) => {
          const parameters = a1111Parameters(settings, img, { name: sd.name, sha256: modelSha }, adapterHashes);
          const name = `${String(index++).padStart(5, '0')}-${img.seed}.png`;
          const file = join(job.outDir, name);
          const png = writePngText(
            await encodeImage({ data: img.pixels, width: img.width, height: img.height }, 'png'),
            { parameters },
          );
          await atomicWriteFile(file, png);
          const now = performance.now();
          const sidecar: ImageSidecar = {
            schemaVersion: SCHEMA_VERSION,
            file: name,
            createdAt: new Date().toISOString(),
            settings: { ...settings, seed: img.seed },
            baseModel: { path: sd.path, name: sd.name, unetSha256: modelSha },
            adapters: adapterHashes,
            parameters,
            ...(await sd.execution()),
            ms: now - imageStart,
          };
          imageStart = now;
          await atomicWriteJson(file.replace(/\.png$/, '.json'), sidecar);
          const generated = { file, sidecar };
          out.push(generated);
          hooks.onImage?.(generated);
        },
      },
    );
    return out;
  } finally {
    if (!job.sd) sd.dispose();
  }
}

/** The PNG's `parameters` text, as A1111 writes it (the image's own seed and size). */
function a1111Parameters(
  settings: GenerateSettings,
  img: { seed: number; width: number; height: number },
  model: { name: string; sha256: string },
  adapters: ReadonlyArray<{ file: string; sha256: string; strength: number }>,
): string {
  return formatA1111Parameters({
    prompt: settings.prompt,
    negativePrompt: settings.negativePrompt,
    steps: settings.steps,
    sampler: schedulerDisplayName(settings.scheduler),
    guidanceScale: settings.guidanceScale,
    seed: img.seed,
    width: img.width,
    height: img.height,
    modelName: model.name,
    modelSha256: model.sha256,
    clipSkip: settings.clipSkip,
    adapters: adapters.map((a) => ({
      name: basename(a.file).replace(/\.safetensors$/, ''),
      sha256: a.sha256,
      strength: a.strength,
    })),
    version: `SingLoRA Studio ${appVersion()}`,
  });
}

/** The next free A1111-style index in `dir` (00000 when empty or missing). */
async function nextIndex(dir: string): Promise<number> {
  let names: string[] = [];
  try {
    names = await readdir(dir);
  } catch {
    return 0;
  }
  let max = -1;
  for (const n of names) {
    const m = /^(\d{5,})-\d+\.png$/.exec(n);
    if (m) max = Math.max(max, Number(m[1]));
  }
  return max + 1;
}
