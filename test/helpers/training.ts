/** Shared setup of the training tests: synthetic subject photos, fast settings, run folders. */
import { join } from 'node:path';
import { expect } from 'vitest';
import { makeSubjectPhotos } from '../../scripts/make-tiny-model.ts';
import type { RunManifest, TrainSettingsInput } from '../../src-main/api/schemas.ts';
import { readAdapterFile } from '../../src-main/engine/adapters/adapterFile.ts';
import { readRunManifest } from '../../src-main/engine/train/runFiles.ts';
import { FIXTURES } from './fixtures.ts';
import { tempDir } from './tempDir.ts';

export const TINY_A = join(FIXTURES, 'tiny-a/model');
export const TINY_B = join(FIXTURES, 'tiny-b/model');

/** A training test's folder (photos and runs), removed after the file's tests: call it at a file's top level. */
export function trainingSandbox(name: string) {
  const root = tempDir(name);
  const photos = join(root, 'photos');
  let runs = 0;
  return {
    root,
    photos,
    makePhotos: () => makeSubjectPhotos(photos, 4),
    newRun: () => join(root, `run-${++runs}`),
  };
}

/** Settings for fast runs on tiny-a at 64 px. */
export const fast = (over: TrainSettingsInput = {}): TrainSettingsInput => ({
  steps: 6,
  rank: 4,
  alpha: 8,
  rampSteps: 2,
  learningRate: 1e-2,
  resolution: 64,
  checkpointEvery: 3,
  sampleEvery: 0,
  classWord: 'ball',
  seed: 5,
  ...over,
});

/** The adapter tensors of a run's checkpoint at `step`, by `<path>.<name>`. */
export async function adapterValues(runDir: string, step: number): Promise<Map<string, Float32Array>> {
  const file = await readAdapterFile(
    join(runDir, `checkpoints/step-${String(step).padStart(6, '0')}/adapter.safetensors`),
  );
  const out = new Map<string, Float32Array>();
  for (const [p, entry] of file.targets) for (const [n, t] of Object.entries(entry)) out.set(`${p}.${n}`, t.data);
  return out;
}

/**
 * A resumed run against the straight one: the same adapter tensors at `step`, bit for bit, and
 * the same losses. Returns the straight run's manifest.
 */
export async function expectSameRun(straight: string, resumed: string, step: number): Promise<RunManifest> {
  const a = await adapterValues(straight, step);
  const b = await adapterValues(resumed, step);
  expect([...b.keys()]).toEqual([...a.keys()]);
  for (const [k, v] of a) expect(b.get(k), k).toEqual(v);
  const m1 = await readRunManifest(straight);
  const m2 = await readRunManifest(resumed);
  expect(m2.losses.map((l) => l.loss)).toEqual(m1.losses.map((l) => l.loss));
  return m1;
}
