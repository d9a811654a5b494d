/**
 * Scoring a run: the base model and two checkpoints of a tiny training run, DINO through the
 * tiny ONNX model, the pick by the rule stored in run.json, and the user's own choice.
 */
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { makeSubjectPhotos } from '../../scripts/make-tiny-model.ts';
import { evaluateRun } from '../../src-main/engine/eval/evaluateRun.ts';
import { noiseBand, pickBest } from '../../src-main/engine/eval/pickBest.ts';
import { readToyPhotos } from '../../src-main/engine/eval/toyEvaluate.ts';
import {
  backgroundColour,
  subjectScores,
  subjectFidelity as toySubjectFidelity,
} from '../../src-main/engine/eval/toyFidelity.ts';
import { TOY_MODEL_DIR, TOY_SUBJECT_DIR } from '../../src-main/engine/toy/toyModel.ts';
import { readRunManifest } from '../../src-main/engine/train/runFiles.ts';
import { train } from '../../src-main/engine/train/trainer.ts';
import { useBackend } from '../helpers/backend.ts';
import { FIXTURES } from '../helpers/fixtures.ts';
import { testTempDir } from '../helpers/tempDir.ts';

useBackend('wasm');

describe('noiseBand', () => {
  it('is twice the standard error of the mean of the base per-image scores, and unmeasured from one image', () => {
    // mean 0.35; squared deviations 0.0225 + 0.0025 + 0.0025 + 0.0225 = 0.05; sample variance 0.05 / 3.
    expect(noiseBand([0.2, 0.4, 0.3, 0.5])).toBeCloseTo(2 * Math.sqrt(0.05 / 3 / 4), 12);
    expect(noiseBand([0.3, 0.3, 0.3])).toBe(0);
    expect(noiseBand([0.3])).toBeNull();
  });
});

describe('pickBest', () => {
  const row = (step: number | null, dino: number, clipT: number | null) => ({ step, dino, clipT, images: 4 });
  const noBand = { noiseBand: 0 };
  it('takes the highest DINO without CLIP', () => {
    const r = pickBest(row(null, 0.3, null), [row(100, 0.5, null), row(200, 0.7, null), row(300, 0.6, null)], noBand);
    expect(r.best).toBe(200);
    expect(r.reason).toBeNull();
  });
  it('with CLIP-T, skips checkpoints that fell more than the margin below the baseline', () => {
    const r = pickBest(row(null, 0.3, 0.3), [row(100, 0.5, 0.295), row(200, 0.8, 0.25), row(300, 0.6, 0.29)], {
      noiseBand: 0,
      clipMargin: 0.02,
    });
    expect(r.best).toBe(300);
    expect(r.rule).toMatch(/within 0.02 of the base model's \(0\.3000\)/);
  });
  it('falls back to all checkpoints when none keeps CLIP-T', () => {
    const r = pickBest(row(null, 0.3, 0.3), [row(100, 0.5, 0.1), row(200, 0.8, 0.2)], {
      noiseBand: 0,
      clipMargin: 0.02,
    });
    expect(r.best).toBe(200);
    expect(r.rule).toMatch(/none was, so all competed/);
  });
  it('keeps the earlier checkpoint on a DINO tie, and picks nothing without checkpoints', () => {
    expect(pickBest(row(null, 0.3, null), [row(100, 0.6, null), row(200, 0.6, null)], noBand).best).toBe(100);
    expect(pickBest(row(null, 0.3, null), [], noBand).best).toBeNull();
  });
  it('picks none when no checkpoint beats the base model by more than the noise band, says why and what to try', () => {
    // Issue 26: nine checkpoints at 0.323..0.328 against 0.327 for the base model; step 600 was crowned at +0.0013.
    const rows = [0.323, 0.325, 0.326, 0.327, 0.325, 0.324, 0.3283, 0.326, 0.325].map((d, i) =>
      row(100 * (i + 1), d, null),
    );
    const r = pickBest(row(null, 0.327, null), rows, { noiseBand: 0.02 });
    expect(r.best).toBeNull();
    expect(r.reason).toMatch(
      /^no checkpoint beats the base model by more than the noise: the best, step 700, scores 0\.3283 against the base model's 0\.3270 \(\+0\.0013; noise band 0\.0200\)/,
    );
    expect(r.suggestion).toMatch(/more steps/);
    expect(r.suggestion).toMatch(/higher learning rate/);
    expect(r.suggestion).toMatch(/more or better photos/);
    expect(r.rule).toMatch(/by more than the noise band \(0\.0200\)$/);
    // Just above the band, the same checkpoint is the pick; a checkpoint below the base never is.
    expect(pickBest(row(null, 0.327, null), rows, { noiseBand: 0.001 }).best).toBe(700);
    expect(pickBest(row(null, 0.5, null), [row(100, 0.4, null)], noBand).best).toBeNull();
  });
  it('picks none when the noise could not be measured (one image of the base model)', () => {
    const r = pickBest(row(null, 0.3, null), [row(100, 0.9, null)], { noiseBand: null });
    expect(r.best).toBeNull();
    expect(r.reason).toMatch(/cannot be measured/);
  });
  it('the same rule with CLIP-T: the eligible winner must still clear the band', () => {
    const r = pickBest(row(null, 0.3, 0.3), [row(100, 0.31, 0.3), row(200, 0.9, 0.1)], { noiseBand: 0.05 });
    expect(r.best).toBeNull();
    expect(r.reason).toMatch(/step 100/);
  });
  describe('the toy rule: the requested background must be kept', () => {
    const toyRow = (step: number | null, score: number, prompt: number) => ({
      step,
      dino: score,
      clipT: null,
      images: 12,
      prompt,
    });
    const toy = { noiseBand: 0.05, metric: 'toy' as const };
    it('skips a checkpoint that loses the background, however high its score', () => {
      // The square runs of docs/experiments.md: the top score came with the background kept in half the images.
      const base = toyRow(null, 0.3, 1);
      const r = pickBest(base, [toyRow(50, 0.5, 11 / 12), toyRow(100, 0.7, 0.5)], toy);
      expect(r.best).toBe(50);
      expect(r.rule).toMatch(/keep the requested background in at least 80% of their images/);
    });
    it('picks none, and says why, when every checkpoint that beats the base loses the background', () => {
      const base = toyRow(null, 0.3, 1);
      const r = pickBest(base, [toyRow(50, 0.32, 1), toyRow(100, 0.7, 0.75), toyRow(150, 0.6, 0.5)], toy);
      expect(r.best).toBeNull();
      expect(r.reason).toMatch(
        /^no checkpoint beats the base model and keeps the requested background: the best, step 100, scores 0\.7000 .* keeps the background in 75% of its images \(at least 80% needed\)$/,
      );
      expect(r.suggestion).toMatch(/lower learning rate/);
    });
    it('asks no more than the base model keeps when that is under 80%', () => {
      const base = toyRow(null, 0.3, 0.5);
      expect(pickBest(base, [toyRow(50, 0.6, 0.5)], toy).best).toBe(50);
      expect(pickBest(base, [toyRow(50, 0.6, 5 / 12)], toy).best).toBeNull();
    });
    it('still needs the gain to clear the noise band', () => {
      const r = pickBest(toyRow(null, 0.3, 1), [toyRow(50, 0.34, 1)], toy);
      expect(r.best).toBeNull();
      expect(r.reason).toMatch(/^no checkpoint beats the base model by more than the noise: the best, step 50/);
      expect(pickBest(toyRow(null, 0.3, 1), [toyRow(50, 0.34, 1)], { ...toy, noiseBand: null }).best).toBeNull();
    });
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
    // and only above the base model by more than the noise band (2 images: the band is their difference).
    const [at2, at4] = evaluation.rows;
    const top = at4.dino > at2.dino ? at4 : at2;
    expect(evaluation.noiseBand).toBeGreaterThanOrEqual(0);
    const expected = top.dino - evaluation.baseline.dino > evaluation.noiseBand! ? top.step : null;
    console.log(
      `[evaluateRun] DINO: base ${evaluation.baseline.dino.toFixed(4)}, step 2 ${at2.dino.toFixed(4)}, step 4 ${at4.dino.toFixed(4)}; picked ${evaluation.best}`,
    );
    expect(evaluation.best).toBe(expected);
    expect(evaluation.rule).toMatch(/highest DINO \(CLIP models not installed/);
    if (expected === null) expect(evaluation.reason).toMatch(/^no checkpoint beats the base model/);
    else expect(evaluation.reason).toBeNull();
    expect(existsSync(join(runDir, 'eval/step-000004/00001-1001.png'))).toBe(true);
    const m = await readRunManifest(runDir);
    expect(m.evaluation?.rows, 'run.json keeps the scores it reported').toEqual(evaluation.rows);
    expect(m.evaluation?.best).toBe(expected);
  });

  it("scores a toy-model run with the toy world's pixel score when asked ('toy'), on probes from the run, and picks nothing an adapter did not learn", async () => {
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
      imagesPerPrompt: 2,
      steps: 3,
      scorer: 'toy',
      modelsDir: join(root, 'no-models'),
    });
    expect(evaluation.metric).toBe('toy');
    // The photos are on white, blue and black; the subject is red and yellow: new contexts are green and gray.
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
    expect(generated.length).toBe(4);
    expect(generated[0].width).toBe(64);
    expect(evaluation.baseline.dino).toBeCloseTo(toySubjectFidelity(generated, photos), 6);
    // The band from the base images' own scores; the background share from the images in prompt order (green, green, gray, gray).
    const perImage = subjectScores(generated, photos);
    const mean = perImage.reduce((a, b) => a + b, 0) / 4;
    const sd = Math.sqrt(perImage.reduce((a, b) => a + (b - mean) ** 2, 0) / 3);
    expect(evaluation.noiseBand).toBeCloseTo((2 * sd) / 2, 6);
    const asked = ['green', 'green', 'gray', 'gray'];
    expect(evaluation.baseline.prompt).toBe(generated.filter((g, i) => backgroundColour(g) === asked[i]).length / 4);
    for (const r of [evaluation.baseline, ...evaluation.rows]) {
      expect(r.dino).toBeGreaterThanOrEqual(0);
      expect(r.dino).toBeLessThanOrEqual(1);
      expect(r.clipT).toBeNull();
      expect(r.prompt).toBeGreaterThanOrEqual(0);
    }
    // Two steps at 1e-3 teach nothing: no checkpoint is presented as the pick.
    console.log(
      `[evaluateRun toy] base ${evaluation.baseline.dino.toFixed(4)}, step 2 ${evaluation.rows[0].dino.toFixed(4)}, band ${evaluation.noiseBand?.toFixed(4)}`,
    );
    expect(evaluation.best).toBeNull();
    expect(evaluation.reason).toMatch(/^no checkpoint beats the base model by more than the noise/);
    expect(evaluation.suggestion).toMatch(/more steps/);
    expect((await readRunManifest(runDir)).evaluation?.metric).toBe('toy');
  });
});
