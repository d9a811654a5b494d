/**
 * WeightSources over safetensors files: what `loadParams` walks. A source may rename keys (a
 * single-file checkpoint's `first_stage_model.*` keys seen under their diffusers names) and may
 * draw from several files.
 */
import type { WeightSource } from '../models/layers/module.ts';
import type { SafetensorsFile } from './safetensors.ts';

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
