/**
 * Where weights come from (`WeightSource`, what the models' `loadParams` walks), and sources over
 * safetensors files. A source may rename keys (a single-file checkpoint's `first_stage_model.*`
 * keys seen under their diffusers names) and may draw from several files.
 */
import type { SafetensorsFile } from './safetensors.ts';

/** Where weights come from: a checkpoint (already translated to a model's key names), or random. */
export interface WeightSource {
  readonly description: string;
  keys(): Iterable<string>;
  shape(key: string): readonly number[] | undefined;
  read(key: string): Promise<Float32Array>;
  /** Where a tensor's raw bytes sit in a file (sources over files only): ONNX graphs point at them in place. */
  locate?(key: string): TensorLocation | undefined;
}

/** A tensor's raw little-endian bytes inside a weight file. */
export interface TensorLocation {
  readonly file: string;
  readonly begin: number;
  readonly end: number;
  readonly dtype: string;
  /** The file's shape (e.g. [out, in, 1, 1] where the model has a Linear [out, in]). */
  readonly shape: readonly number[];
}

interface Entry {
  file: SafetensorsFile;
  fileKey: string;
}

/**
 * A source over open safetensors files. `rename` maps a file key to the model key, or returns
 * null to leave the key out of this source (it belongs to another component, or is an ignored extra).
 */
export function safetensorsSource(
  files: SafetensorsFile | SafetensorsFile[],
  rename: (fileKey: string) => string | null = (k) => k,
  description?: string,
): WeightSource {
  const list = Array.isArray(files) ? files : [files];
  const entries = new Map<string, Entry>();
  for (const file of list) {
    for (const fileKey of file.keys()) {
      const key = rename(fileKey);
      if (key === null) continue;
      const prev = entries.get(key);
      if (prev)
        throw new Error(`${file.path}: '${fileKey}' and ${prev.file.path}: '${prev.fileKey}' both map to '${key}'`);
      entries.set(key, { file, fileKey });
    }
  }
  return {
    description: description ?? list.map((f) => f.path).join(', '),
    keys: () => entries.keys(),
    shape: (key) => {
      const e = entries.get(key);
      return e ? e.file.info(e.fileKey).shape : undefined;
    },
    read: (key) => {
      const e = entries.get(key);
      if (!e) throw new Error(`no tensor for '${key}'`);
      return e.file.readFloat32(e.fileKey);
    },
    locate: (key) => {
      const e = entries.get(key);
      if (!e) return undefined;
      const { begin, end, dtype, shape } = e.file.info(e.fileKey);
      return { file: e.file.path, begin, end, dtype, shape };
    },
  };
}
