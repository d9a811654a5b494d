/**
 * A base model's singlora-defaults.json: read and validated (a bad file names the file and the
 * field), layered under what the user set, and the committed toy model's own file.
 */
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { trainSettingsSchema } from '../../src-main/api/schemas.ts';
import { demoTraining } from '../../src-main/cli/demo.ts';
import { readModelDefaults, withModelDefaults } from '../../src-main/engine/io/modelDefaults.ts';
import { TOY_MODEL_DIR } from '../../src-main/engine/toy/toyModel.ts';

function modelWith(content: string | null): string {
  const dir = mkdtempSync(join(tmpdir(), 'model-defaults-'));
  mkdirSync(join(dir, 'unet'));
  if (content !== null) writeFileSync(join(dir, 'singlora-defaults.json'), content);
  return dir;
}

describe('readModelDefaults', () => {
  it("reads the toy model's file: valid training and sampling settings", () => {
    const d = readModelDefaults(TOY_MODEL_DIR);
    expect(d?.training?.learningRate).toBeGreaterThan(0);
    expect(d?.training?.steps).toBeGreaterThan(0);
    expect(d?.sampling?.width).toBe(64);
    // Every training field is one the API takes.
    expect(trainSettingsSchema.safeParse(d?.training).success).toBe(true);
  });

  it('is null for a folder without the file and for a single-file checkpoint', () => {
    expect(readModelDefaults(modelWith(null))).toBeNull();
    const file = join(modelWith(null), 'model.safetensors');
    writeFileSync(file, '');
    expect(readModelDefaults(file)).toBeNull();
  });

  it('a bad file is an error naming the file and the field, and what was expected', () => {
    const bad = modelWith(JSON.stringify({ training: { learningRate: 5, stpes: 100 } }));
    expect(() => readModelDefaults(bad)).toThrow(/singlora-defaults\.json: training\.learningRate: .*<=1/);
    expect(() => readModelDefaults(bad)).toThrow(/training: Unrecognized key: "stpes"/);
    expect(() => readModelDefaults(modelWith(JSON.stringify({ train: {} })))).toThrow(
      /singlora-defaults\.json: \(top level\): Unrecognized key: "train".*expected \{"training"/,
    );
    expect(() => readModelDefaults(modelWith('{ not json'))).toThrow(/singlora-defaults\.json: not valid JSON/);
    expect(() => readModelDefaults(modelWith(JSON.stringify({ sampling: { scheduler: 'nope' } })))).toThrow(
      /sampling\.scheduler/,
    );
  });
});

describe('withModelDefaults', () => {
  it('fills the fields the model names unless the user gave them', () => {
    const r = withModelDefaults(
      { steps: 800, learningRate: 1e-4, rank: 4 },
      { steps: 200, learningRate: 2e-3 },
      (f) => f === 'steps',
    );
    expect(r.settings).toEqual({ steps: 800, learningRate: 2e-3, rank: 4 });
    expect(r.fromModel).toEqual(['learningRate']);
    expect(withModelDefaults({ steps: 800 }, undefined, () => false)).toEqual({
      settings: { steps: 800 },
      fromModel: [],
    });
  });
});

describe('the demo starts from the model defaults', () => {
  it("takes the toy model's training settings; --steps wins and the ramp and checkpoints follow it", () => {
    const d = readModelDefaults(TOY_MODEL_DIR)!.training!;
    const plan = demoTraining(TOY_MODEL_DIR, true, 64, undefined);
    expect(plan.settings).toMatchObject({ ...d, sampleEvery: 0, triggerToken: 'sks', classWord: 'ball' });
    expect(plan.from).toMatch(/toy-sd\/singlora-defaults\.json$/);
    const short = demoTraining(TOY_MODEL_DIR, true, 64, 40);
    expect(short.settings).toMatchObject({
      steps: 40,
      rampSteps: 10,
      checkpointEvery: 10,
      learningRate: d.learningRate,
    });
    // A model without defaults: the demo's own fallback for SD 1.5.
    const sd = demoTraining(modelWith(null), false, 512, undefined);
    expect(sd.settings).toMatchObject({ steps: 40, learningRate: 1e-4, resolution: 512 });
    expect(sd.from).toBeNull();
  });
});
