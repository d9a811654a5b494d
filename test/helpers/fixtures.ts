/**
 * The parity suite runs over every reference folder in PARITY_FIXTURES (colon-separated; default
 * the bundled tiny-a). A folder has the layout of test/fixtures/tiny-a: `model/`,
 * `cases.safetensors`, `tokenizer_cases.json`, `scheduler_cases.safetensors`,
 * `train_step_cases.safetensors`. A test that finds no case for its component in a folder is
 * reported as skipped, with the reason in its name or skip note; a folder with none of the case
 * files is an error, so a wrong path cannot turn the suite into a row of skips.
 */
import { existsSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { SafetensorsFile } from '../../src-main/engine/io/safetensors.ts';

export const FIXTURES = resolve(import.meta.dirname, '../fixtures');

/** The reference files a parity folder may hold; it must hold at least one. */
export const CASE_FILES = [
  'cases.safetensors',
  'tokenizer_cases.json',
  'scheduler_cases.safetensors',
  'train_step_cases.safetensors',
] as const;

export function parityFolders(): string[] {
  const env = process.env.PARITY_FIXTURES;
  const list = env ? env.split(':').filter(Boolean) : [join(FIXTURES, 'tiny-a')];
  const folders = list.map((p) => resolve(p));
  for (const folder of folders) {
    if (!existsSync(folder) || !statSync(folder).isDirectory())
      throw new Error(
        `PARITY_FIXTURES names ${folder}, which is not a folder; fix the path or drop it from PARITY_FIXTURES`,
      );
    if (!CASE_FILES.some((f) => existsSync(join(folder, f)))) {
      throw new Error(
        `PARITY_FIXTURES names ${folder}, which has none of the reference cases (${CASE_FILES.join(', ')}); add them or drop the folder from PARITY_FIXTURES`,
      );
    }
  }
  return folders;
}

/** Reads fixture tensors from `<folder>/<file>`; null when the file or key is absent. */
export class Cases {
  private constructor(private readonly file: SafetensorsFile | null) {}

  static async open(folder: string, file = 'cases.safetensors'): Promise<Cases> {
    const path = join(folder, file);
    return new Cases(existsSync(path) ? await SafetensorsFile.open(path) : null);
  }

  get present(): boolean {
    return this.file !== null;
  }

  has(key: string): boolean {
    return this.file?.tensors.has(key) ?? false;
  }

  get metadata(): Record<string, string> {
    return { ...(this.file?.metadata ?? {}) };
  }

  async get(key: string): Promise<{ shape: number[]; data: Float32Array }> {
    if (!this.file) throw new Error(`no cases file`);
    return { shape: [...this.file.info(key).shape], data: await this.file.readFloat32(key) };
  }

  async getInt(key: string): Promise<{ shape: number[]; data: Int32Array }> {
    if (!this.file) throw new Error(`no cases file`);
    return { shape: [...this.file.info(key).shape], data: await this.file.readInt32(key) };
  }

  async close(): Promise<void> {
    await this.file?.close();
  }
}

/** Prints why a parity case is skipped, so skips are never silent. */
export function skipNote(folder: string, what: string): string {
  const msg = `[parity] ${folder}: no ${what}; skipped`;
  console.log(msg);
  return msg;
}
