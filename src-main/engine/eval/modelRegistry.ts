/**
 * The evaluation models this app knows, where they live, and whether they are there.
 *
 * Layout inside the models folder (`paths.ts`: `SINGLORA_MODELS_DIR` or `<repo>/models`):
 *
 *   <modelsDir>/dino/model.onnx                     DINO ViT-S/16 (required for `singlora eval`)
 *   <modelsDir>/clip/vision_model.onnx              CLIP ViT-B/32 image tower (optional: CLIP-I, CLIP-T)
 *   <modelsDir>/clip/text_model.onnx                CLIP ViT-B/32 text tower (optional: CLIP-T)
 *   <modelsDir>/clip/vocab.json, merges.txt         its tokenizer
 *
 * Checksums: this registry was written offline, so no sha256 is recorded yet (`sha256: null`) and
 * files are not verified; `listModels` says "not verified (no known sha256)". Sizes are the ones the
 * Hugging Face file pages display (rounded), for information only. Once a sha256 is known, put it
 * here: downloads and `listModels` then verify it.
 */
import { existsSync, realpathSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { hashFile } from '../io/download.ts';
import { REPO_ROOT } from '../paths.ts';
import { isToyModel } from '../toy/toyModel.ts';

/**
 * The tiny DINO-shaped ONNX model that ships beside the tiny demo base model (both made by
 * scripts/make-tiny-model.ts). It only means something for that model: evaluation of the demo run
 * uses it offline when no real DINO is installed; every other base model needs the real one.
 */
export const BUNDLED_TINY_DINO = join(REPO_ROOT, 'models', 'dino-tiny', 'model.onnx');
const DEMO_MODEL_DIR = join(REPO_ROOT, 'models', 'tiny-sd');

/** Whether `baseModel` is the tiny demo model (the repository's, or `<modelsDir>/tiny-sd`), links followed. */
export function isDemoModel(baseModel: string, modelsDir: string): boolean {
  const real = (p: string) => {
    try {
      return realpathSync(p);
    } catch {
      return null;
    }
  };
  const r = real(baseModel);
  return r !== null && [DEMO_MODEL_DIR, join(modelsDir, 'tiny-sd')].some((d) => real(d) === r);
}

export type EvalModelId = 'dino' | 'clip';

export interface ModelFileSpec {
  /** Path inside `<modelsDir>/<id>/`. */
  readonly file: string;
  readonly url: string;
  /** Lowercase hex sha256, or null when not known (then not verified). */
  readonly sha256: string | null;
  /** Approximate size as published, for display; null when unknown. Never checked. */
  readonly approxBytes: number | null;
}

export interface EvalModelSpec {
  readonly id: EvalModelId;
  readonly title: string;
  readonly purpose: string;
  readonly required: boolean;
  readonly files: readonly ModelFileSpec[];
}

const HF = 'https://huggingface.co';

export const EVAL_MODELS: readonly EvalModelSpec[] = [
  {
    id: 'dino',
    title: 'DINO ViT-S/16 (facebook/dino-vits16, ONNX export Xenova/dino-vits16)',
    purpose: 'subject fidelity (DINO score): CLS-embedding cosine between generated images and subject photos',
    required: true,
    files: [
      {
        file: 'model.onnx',
        url: `${HF}/Xenova/dino-vits16/resolve/main/onnx/model.onnx`,
        sha256: null,
        approxBytes: 86_900_000,
      },
    ],
  },
  {
    id: 'clip',
    title: 'CLIP ViT-B/32 (openai/clip-vit-base-patch32, ONNX export Xenova/clip-vit-base-patch32)',
    purpose: 'CLIP-I (image-image) and CLIP-T (image-prompt) scores; optional',
    required: false,
    files: [
      {
        file: 'vision_model.onnx',
        url: `${HF}/Xenova/clip-vit-base-patch32/resolve/main/onnx/vision_model.onnx`,
        sha256: null,
        approxBytes: null,
      },
      {
        file: 'text_model.onnx',
        url: `${HF}/Xenova/clip-vit-base-patch32/resolve/main/onnx/text_model.onnx`,
        sha256: null,
        approxBytes: null,
      },
      {
        file: 'vocab.json',
        url: `${HF}/Xenova/clip-vit-base-patch32/resolve/main/vocab.json`,
        sha256: null,
        approxBytes: null,
      },
      {
        file: 'merges.txt',
        url: `${HF}/Xenova/clip-vit-base-patch32/resolve/main/merges.txt`,
        sha256: null,
        approxBytes: null,
      },
    ],
  },
];

export function modelSpec(id: string): EvalModelSpec {
  const spec = EVAL_MODELS.find((m) => m.id === id);
  if (!spec) throw new Error(`unknown model '${id}'; known: ${EVAL_MODELS.map((m) => m.id).join(', ')}`);
  return spec;
}

/** `<modelsDir>/<id>/<file>`. */
export function modelFilePath(modelsDir: string, id: EvalModelId, file: string): string {
  return join(modelsDir, id, file);
}

export interface ModelFileStatus {
  readonly file: string;
  readonly path: string;
  readonly url: string;
  readonly present: boolean;
  readonly bytes: number | null;
  /** true/false when a sha256 is known and the file is present; null when it could not be checked. */
  readonly verified: boolean | null;
  /** One line for people: 'ok', 'missing: place ... at ...', 'sha256 mismatch ...', 'not verified (no known sha256)'. */
  readonly note: string;
}

export interface ModelStatus {
  readonly id: EvalModelId;
  readonly title: string;
  readonly purpose: string;
  readonly required: boolean;
  readonly present: boolean;
  readonly files: readonly ModelFileStatus[];
}

/** Every known model: present or missing, sizes, sha256 checks where a checksum is known. */
export async function listModels(modelsDir: string): Promise<ModelStatus[]> {
  const out: ModelStatus[] = [];
  for (const spec of EVAL_MODELS) {
    const files: ModelFileStatus[] = [];
    for (const f of spec.files) {
      const path = modelFilePath(modelsDir, spec.id, f.file);
      if (!existsSync(path)) {
        files.push({
          file: f.file,
          path,
          url: f.url,
          present: false,
          bytes: null,
          verified: null,
          note: `missing: place ${f.file} at ${path} (from ${f.url}) or run \`singlora models download ${spec.id}\``,
        });
        continue;
      }
      const bytes = statSync(path).size;
      if (!f.sha256) {
        files.push({
          file: f.file,
          path,
          url: f.url,
          present: true,
          bytes,
          verified: null,
          note: 'present, not verified (no known sha256)',
        });
        continue;
      }
      const sha = await hashFile(path);
      const ok = sha === f.sha256;
      files.push({
        file: f.file,
        path,
        url: f.url,
        present: true,
        bytes,
        verified: ok,
        note: ok
          ? 'present, sha256 ok'
          : `sha256 mismatch: expected ${f.sha256}, found ${sha}; delete it and download again`,
      });
    }
    out.push({
      id: spec.id,
      title: spec.title,
      purpose: spec.purpose,
      required: spec.required,
      present: files.every((f) => f.present),
      files,
    });
  }
  return out;
}

/**
 * The DINO model file: `override` when given (it must exist), else `<modelsDir>/dino/model.onnx`.
 * Throws a clear error saying where to put it.
 */
export function locateDino(modelsDir: string, override?: string): string {
  if (override) {
    if (!existsSync(override)) throw new Error(`DINO model not found: ${override} does not exist`);
    return override;
  }
  const path = modelFilePath(modelsDir, 'dino', 'model.onnx');
  if (!existsSync(path))
    throw new Error(`DINO model not found: place model.onnx at ${path} or run \`singlora models download dino\``);
  return path;
}

/**
 * The DINO model an evaluation of a run on `baseModel` uses: `locateDino`'s, else, for the tiny
 * demo model only, the bundled tiny DINO (`bundled: true`). Throws locateDino's error otherwise.
 */
export function dinoFor(
  baseModel: string | null,
  modelsDir: string,
  override?: string,
): { path: string; bundled: boolean } {
  try {
    return { path: locateDino(modelsDir, override), bundled: false };
  } catch (err) {
    if (!override && baseModel && isDemoModel(baseModel, modelsDir) && existsSync(BUNDLED_TINY_DINO))
      return { path: BUNDLED_TINY_DINO, bundled: true };
    throw err;
  }
}

/**
 * How an evaluation of a run on `baseModel` scores subject fidelity: DINO (`dinoFor`), else, for
 * the toy model (models/toy-sd) only, the toy world's own pixel score (eval/toyFidelity.ts), which
 * needs no model file. Throws dinoFor's error for every other base model.
 */
export type SubjectScorer =
  | { readonly kind: 'dino'; readonly path: string; readonly bundled: boolean }
  | { readonly kind: 'toy' };

export function scorerFor(baseModel: string | null, modelsDir: string, override?: string): SubjectScorer {
  try {
    return { kind: 'dino', ...dinoFor(baseModel, modelsDir, override) };
  } catch (err) {
    if (!override && baseModel && isToyModel(baseModel)) return { kind: 'toy' };
    throw err;
  }
}

export interface ClipFiles {
  readonly vision: string;
  readonly text: string;
  /** Folder with vocab.json and merges.txt. */
  readonly tokenizerDir: string;
}

/** The CLIP files, or the reason they cannot be used (which files are missing, and how to get them). */
export function locateClip(modelsDir: string): { files: ClipFiles } | { missing: string } {
  const dir = join(modelsDir, 'clip');
  const spec = modelSpec('clip');
  const absent = spec.files.map((f) => join(dir, f.file)).filter((p) => !existsSync(p));
  if (absent.length)
    return {
      missing: `CLIP model files missing: ${absent.join(', ')}; run \`singlora models download clip\` or place them there`,
    };
  return { files: { vision: join(dir, 'vision_model.onnx'), text: join(dir, 'text_model.onnx'), tokenizerDir: dir } };
}
