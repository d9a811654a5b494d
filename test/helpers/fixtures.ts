/**
 * The parity suite runs over every reference folder in PARITY_FIXTURES (colon-separated; default
 * the bundled tiny-a). A folder has the layout of test/fixtures/tiny-a: `model/`,
 * `cases.safetensors`, `tokenizer_cases.json`, `scheduler_cases.safetensors`. A test that finds no
 * case for its component in a folder says so and skips.
 */
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { SafetensorsFile } from '../../src-main/engine/io/safetensors.ts';

export const FIXTURES = resolve(import.meta.dirname, '../fixtures');

export function parityFolders(): string[] {
  const env = process.env.PARITY_FIXTURES;
  const list = env ? env.split(':').filter(Boolean) : [join(FIXTURES, 'tiny-a')];
  return list.map((p) => resolve(p));
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
