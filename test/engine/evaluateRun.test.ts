/**
 * Scoring a run: the base model and two checkpoints of a tiny training run, DINO through the
 * tiny ONNX model, the pick by the rule stored in run.json, and the user's own choice.
 */
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { makeSubjectPhotos } from '../../scripts/make-tiny-model.ts';
import { evaluateRun, pickBest } from '../../src-main/engine/eval/evaluateRun.ts';
import { readToyPhotos } from '../../src-main/engine/eval/toyEvaluate.ts';
import { subjectFidelity as toySubjectFidelity } from '../../src-main/engine/eval/toyFidelity.ts';
import { TOY_MODEL_DIR, TOY_SUBJECT_DIR } from '../../src-main/engine/toy/toyModel.ts';
import { readRunManifest } from '../../src-main/engine/train/runFiles.ts';
import { train } from '../../src-main/engine/train/trainer.ts';
import { useBackend } from '../helpers/backend.ts';
import { FIXTURES } from '../helpers/fixtures.ts';
import { testTempDir } from '../helpers/tempDir.ts';

useBackend('wasm');

describe('pickBest', () => {
  const row = (step: number | null, dino: number, clipT: number | null) => ({ step, dino, clipT, images: 4 });
  it('takes the highest DINO without CLIP', () => {
    expect(pickBest(row(null, 0.3, null), [row(100, 0.5, null), row(200, 0.7, null), row(300, 0.6, null)]).best).toBe(
      200,
    );
  });
  it('with CLIP-T, skips checkpoints that fell more than the margin below the baseline', () => {
    const r = pickBest(row(null, 0.3, 0.3), [row(100, 0.5, 0.295), row(200, 0.8, 0.25), row(300, 0.6, 0.29)], 0.02);
    expect(r.best).toBe(300);
    expect(r.rule).toMatch(/within 0.02 of the base model's \(0\.3000\)/);
  });
  it('falls back to all checkpoints when none keeps CLIP-T', () => {
    const r = pickBest(row(null, 0.3, 0.3), [row(100, 0.5, 0.1), row(200, 0.8, 0.2)], 0.02);
    expect(r.best).toBe(200);
    expect(r.rule).toMatch(/none was, so all competed/);
  });
  it('keeps the earlier checkpoint on a DINO tie, and picks nothing without checkpoints', () => {
    expect(pickBest(row(null, 0.3, null), [row(100, 0.6, null), row(200, 0.6, null)]).best).toBe(100);
    expect(pickBest(row(null, 0.3, null), []).best).toBeNull();
  });
});

describe('evaluateRun', () => {
  it('scores the base model and two checkpoints and picks one by the rule', async () => {
    const root = testTempDir('eval');
    const photos = join(root, 'photos');
    await makeSubjectPhotos(photos, 3);
    const runDir = join(root, 'run');
    await train({
      base: join(FIXTURES, 'tiny-a/model'),
      photos,
      runDir,
      settings: {
        steps: 4,
        rank: 4,
        alpha: 8,
        rampSteps: 1,
        learningRate: 1e-2,
        resolution: 64,
        checkpointEvery: 2,
        sampleEvery: 0,
        classWord: 'ball',
        seed: 3,
      },
    });
    const progress: string[] = [];
    const evaluation = await evaluateRun(
      {
        runDir,
        photos,
        prompts: ['a photo of sks ball', 'a photo of sks ball in the snow'],
        imagesPerPrompt: 1,
        steps: 3,
        dinoModel: join(FIXTURES, 'dino-tiny/model.onnx'),
        modelsDir: join(root, 'no-models'),
      },
      { onProgress: (done, total, label) => progress.push(`${done}/${total} ${label}`) },
    );
    expect(progress).toEqual([
      '1/6 base',
      '2/6 base',
      '3/6 step-000002',
      '4/6 step-000002',
      '5/6 step-000004',
      '6/6 step-000004',
    ]);
    expect(evaluation.baseline.step).toBeNull();
    expect(evaluation.rows.map((r) => r.step)).toEqual([2, 4]);
    for (const r of [evaluation.baseline, ...evaluation.rows]) {
      expect(r.images).toBe(2);
      expect(r.dino).toBeGreaterThan(-1);
      expect(r.dino).toBeLessThan(1);
      expect(r.clipT).toBeNull();
    }
    // The expected pick, written out for these two rows rather than through a rule like the
    // one under test: without CLIP the higher DINO wins, the earlier step on a tie.
    const [at2, at4] = evaluation.rows;
    const expected = at4.dino > at2.dino ? 4 : 2;
    console.log(
      `[evaluateRun] DINO: base ${evaluation.baseline.dino.toFixed(4)}, step 2 ${at2.dino.toFixed(4)}, step 4 ${at4.dino.toFixed(4)}; picked ${evaluation.best}`,
    );
    expect(evaluation.best).toBe(expected);
    expect(evaluation.rule).toMatch(/highest DINO \(CLIP models not installed/);
    expect(existsSync(join(runDir, 'eval/step-000004/00001-1001.png'))).toBe(true);
    const m = await readRunManifest(runDir);
    expect(m.evaluation?.rows, 'run.json keeps the scores it reported').toEqual(evaluation.rows);
    expect(m.evaluation?.best).toBe(expected);
  });

  it("scores a toy-model run with the toy world's pixel score when asked ('toy'), on the toy probes with the run's trigger", async () => {
    const root = testTempDir('eval-toy');
    const runDir = join(root, 'run');
    await train({
      base: TOY_MODEL_DIR,
      photos: TOY_SUBJECT_DIR,
      runDir,
      settings: {
        steps: 2,
        rank: 4,
        alpha: 4,
        rampSteps: 1,
        learningRate: 1e-3,
        checkpointEvery: 2,
        sampleEvery: 0,
        triggerToken: 'zwx',
        classWord: 'ball',
        seed: 3,
      },
    });
    const evaluation = await evaluateRun({
      runDir,
      photos: TOY_SUBJECT_DIR,
      imagesPerPrompt: 1,
      steps: 3,
      scorer: 'toy',
      modelsDir: join(root, 'no-models'),
    });
    expect(evaluation.metric).toBe('toy');
    expect(evaluation.prompts).toEqual([
      'a photo of zwx ball on a green background',
      'a photo of zwx ball on a gray background',
    ]);
    expect(evaluation.rule).toMatch(/^highest toy subject fidelity/);
    expect(evaluation.rule).toMatch(/; the 2 toy probe prompts$/);
    expect(evaluation.rows.map((r) => r.step)).toEqual([2]);
    // The stored score is the toy score of the images on disk against the photos, recomputed here.
    const photos = await readToyPhotos(readdirSync(TOY_SUBJECT_DIR).map((f) => join(TOY_SUBJECT_DIR, f)));
    const base = join(runDir, 'eval/base');
    const generated = await readToyPhotos(
      readdirSync(base)
        .filter((f) => f.endsWith('.png'))
        .map((f) => join(base, f)),
    );
    expect(generated.length).toBe(2);
    expect(generated[0].width).toBe(64);
    expect(evaluation.baseline.dino).toBeCloseTo(toySubjectFidelity(generated, photos), 6);
    for (const r of [evaluation.baseline, ...evaluation.rows]) {
      expect(r.dino).toBeGreaterThanOrEqual(0);
      expect(r.dino).toBeLessThanOrEqual(1);
      expect(r.clipT).toBeNull();
    }
    expect((await readRunManifest(runDir)).evaluation?.metric).toBe('toy');
  });
});
