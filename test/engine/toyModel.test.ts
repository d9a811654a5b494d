/**
 * The toy world (wasm): the full-training pieces (the conv filter gradient, trainable embeddings),
 * the pixel fidelity scores, and the end-to-end claim of issue 17: a short SingLoRA adapter
 * trained on the subject photos makes the committed toy model draw the subject, so subject
 * fidelity rises from base to adapter at the same seeds.
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { tf, type Tensor4D } from '../../src-main/engine/backend/tf.ts';
import { readToyPhotos, requestedBackground, TOY_SAMPLING, toyProbes } from '../../src-main/engine/eval/toyEvaluate.ts';
import {
  backgroundColour,
  colourFidelity,
  foregroundMask,
  objectColour,
  subjectFidelity,
} from '../../src-main/engine/eval/toyFidelity.ts';
import { fitShapes, hasShape, SHAPE_IOU, subjectKind } from '../../src-main/engine/eval/toyShape.ts';
import { AutoencoderKL } from '../../src-main/engine/models/autoencoderKL.ts';
import { conv2dTrainable } from '../../src-main/engine/models/ops/conv2dTrainable.ts';
import { TOY_MODEL_DIR, TOY_SUBJECT_DIR } from '../../src-main/engine/toy/toyModel.ts';
import { Rng } from '../../src-main/engine/random.ts';
import {
  drawScene,
  KINDS,
  PALETTE,
  subjectScenes,
  type Scene,
  type ToyImage,
} from '../../src-main/engine/toy/toyWorld.ts';
import { toModelRange } from '../../src-main/engine/train/dataset.ts';
import { collapsePosterior, initFromScratch, LOGVAR_FLOOR } from '../../src-main/engine/train/fullTrain.ts';
import { train } from '../../src-main/engine/train/trainer.ts';
import { demoTraining } from '../../src-main/cli/demo.ts';
import { listImageFiles } from '../../src-main/cli/eval.ts';
import { evaluateRun } from '../../src-main/engine/eval/evaluateRun.ts';
import { maxAbsDiff, useBackend } from '../helpers/backend.ts';

useBackend('wasm');

/** dL/dw of L = sum(conv(x, w) * dy), by the definition: a plain loop. */
function bruteFilterGrad(
  x: Float32Array,
  xs: number[],
  dy: Float32Array,
  ys: number[],
  k: number,
  stride: number,
  pad: [[number, number], [number, number]],
): Float32Array {
  const [n, h, w, cin] = xs;
  const [, ho, wo, cout] = ys;
  const dw = new Float32Array(k * k * cin * cout);
  for (let b = 0; b < n; b++)
    for (let oy = 0; oy < ho; oy++)
      for (let ox = 0; ox < wo; ox++)
        for (let i = 0; i < k; i++)
          for (let j = 0; j < k; j++) {
            const iy = oy * stride + i - pad[0][0];
            const ix = ox * stride + j - pad[1][0];
            if (iy < 0 || ix < 0 || iy >= h || ix >= w) continue;
            for (let c = 0; c < cin; c++)
              for (let o = 0; o < cout; o++)
                dw[((i * k + j) * cin + c) * cout + o] +=
                  x[((b * h + iy) * w + ix) * cin + c] * dy[((b * ho + oy) * wo + ox) * cout + o];
          }
  return dw;
}

describe('full-parameter training pieces', () => {
  for (const [stride, pad] of [
    [
      1,
      [
        [1, 1],
        [1, 1],
      ],
    ],
    [
      2,
      [
        [0, 1],
        [0, 1],
      ],
    ],
  ] as const) {
    it(`conv2dTrainable: the im2col filter gradient equals the definition, and the input gradient tf's own (stride ${stride}, pad ${JSON.stringify(pad)})`, async () => {
      const start = tf.memory().numTensors;
      const x = tf.randomNormal([2, 7, 6, 3], 0, 1, 'float32', 1) as Tensor4D;
      const w = tf.randomNormal([3, 3, 3, 5], 0, 1, 'float32', 2) as Tensor4D;
      const explicit = [[0, 0], [...pad[0]], [...pad[1]], [0, 0]] as never;
      const y = tf.conv2d(x, w, stride, explicit);
      const dy = tf.randomNormal(y.shape, 0, 1, 'float32', 3);
      const [gx, gw] = tf.grads((a: tf.Tensor, b: tf.Tensor) =>
        tf.sum(tf.mul(conv2dTrainable(a as Tensor4D, b as Tensor4D, stride, [[...pad[0]], [...pad[1]]]), dy)),
      )([x, w]);
      const refX = tf.grad((a: tf.Tensor) => tf.sum(tf.mul(tf.conv2d(a as Tensor4D, w, stride, explicit), dy)))(x);
      const brute = bruteFilterGrad(
        (await x.data()) as Float32Array,
        x.shape,
        (await dy.data()) as Float32Array,
        y.shape,
        3,
        stride,
        [[...pad[0]], [...pad[1]]],
      );
      expect(maxAbsDiff(await gw.data(), brute).rel).toBeLessThan(1e-5);
      expect(maxAbsDiff(await gx.data(), await refX.data()).rel).toBeLessThan(1e-5);
      tf.dispose([x, w, y, dy, gx, gw, refX]);
      expect(tf.memory().numTensors, 'tensors left behind').toBe(start);
    });
  }
});

describe('collapsePosterior', () => {
  it("sets a VAE's log-variance to the floor and leaves its means alone, without leaking tensors", async () => {
    const vae = AutoencoderKL.fromConfig({
      in_channels: 3,
      out_channels: 3,
      latent_channels: 4,
      block_out_channels: [8, 8],
      down_block_types: ['DownEncoderBlock2D', 'DownEncoderBlock2D'],
      up_block_types: ['UpDecoderBlock2D', 'UpDecoderBlock2D'],
      layers_per_block: 1,
      norm_num_groups: 4,
      sample_size: 16,
    });
    initFromScratch(vae, 5);
    const x = tf.randomUniform([2, 16, 16, 3], -1, 1, 'float32', 9);
    const before = vae.encode(x);
    const start = tf.memory().numTensors;
    await collapsePosterior(vae);
    expect(tf.memory().numTensors, 'tensors left behind').toBe(start);
    const after = vae.encode(x);
    expect(maxAbsDiff(await after.mean.data(), await before.mean.data()).maxAbs).toBe(0);
    expect(
      Math.max(...(await before.logvar.data()).map(Math.abs)),
      'a fresh VAE has a log-variance near 0',
    ).toBeLessThan(5);
    expect([...new Set(await after.logvar.data())]).toEqual([LOGVAR_FLOOR]);
    tf.dispose([x, before.mean, before.logvar, before.std, after.mean, after.logvar, after.std]);
    vae.dispose();
  });
});

const photos = subjectScenes().map((s) => drawScene(s));
const scene = (kind: Scene['kind']): Scene => ({ kind, colour: 'red', background: 'green', cx: 0.5, cy: 0.5, r: 0.25 });

describe('toy fidelity scores', () => {
  const ball = (colour: Scene['colour'], background: Scene['background']): Scene => ({
    kind: 'ball',
    colour,
    background,
    cx: 0.5,
    cy: 0.5,
    r: 0.25,
  });

  it('scores the subject near 1, a one-colour ball of one of its colours near 0.5, another colour near 0', () => {
    expect(subjectFidelity(photos, photos)).toBeGreaterThan(0.95);
    expect(
      subjectFidelity([drawScene({ ...ball('red', 'green'), pattern: ['red', 'yellow'] })], photos),
    ).toBeGreaterThan(0.95);
    const red = subjectFidelity([drawScene(ball('red', 'green'))], photos);
    expect(red).toBeGreaterThan(0.4);
    expect(red).toBeLessThan(0.6);
    expect(subjectFidelity([drawScene(ball('blue', 'green'))], photos)).toBeLessThan(0.05);
    // An empty picture (background only) has no foreground: 0.
    expect(subjectFidelity([drawScene({ ...ball('green', 'green'), r: 0 })], photos)).toBe(0);
  });

  it('reads the object colour off the pixels (most foreground pixels), and none from a plain background', () => {
    expect(objectColour(drawScene(ball('red', 'green')))).toBe('red');
    expect(objectColour(drawScene({ ...ball('blue', 'white'), kind: 'triangle' }))).toBe('blue');
    // The subject is half red, half yellow, and a ball's lower half is no bigger: either may win, never a third colour.
    expect(['red', 'yellow']).toContain(objectColour(photos[0]));
    expect(objectColour(drawScene({ ...ball('green', 'green'), r: 0 }))).toBeNull();
  });

  it('reads the background colour off the border', () => {
    for (const bg of ['green', 'gray', 'white', 'black', 'blue'] as const)
      expect(backgroundColour(drawScene(ball('red', bg)))).toBe(bg);
  });

  it('multiplies the colour score by the shape: a red-over-yellow square or blob is not a full match', () => {
    const square = drawScene({ ...ball('red', 'green'), kind: 'square', pattern: ['red', 'yellow'] });
    // The colour score alone cannot tell the square from the ball.
    expect(colourFidelity([square], photos)).toBeGreaterThan(0.95);
    // The shape: a square's best-fitting ideal ball covers it with IoU ~0.84 (measured; not the ball's ~1).
    const s = subjectFidelity([square], photos);
    expect(s).toBeLessThan(0.9);
    expect(s).toBeGreaterThan(0.75);
    const blob = paint(
      (x, y) => ((x - 32) / 20) ** 2 + ((y - 32) / 10) ** 2 <= 1,
      (_x, y) => (y < 32 ? 'red' : 'yellow'),
    );
    expect(colourFidelity([blob], photos)).toBeGreaterThan(0.95);
    expect(subjectFidelity([blob], photos)).toBeLessThan(0.7);
  });
});

/** A 64x64 picture on green: `colour(x, y)` where `inside(x, y)` (pixel centres). */
function paint(
  inside: (x: number, y: number) => boolean,
  colour: (x: number, y: number) => Scene['colour'] = () => 'red',
): ToyImage {
  const data = new Uint8Array(64 * 64 * 3);
  for (let y = 0; y < 64; y++)
    for (let x = 0; x < 64; x++)
      data.set(PALETTE[inside(x + 0.5, y + 0.5) ? colour(x + 0.5, y + 0.5) : 'green'], (y * 64 + x) * 3);
  return { data, width: 64, height: 64 };
}

describe('toy shape fit', () => {
  const places: Array<[number, number, number]> = [
    [0.5, 0.5, 0.25],
    [0.3, 0.6, 0.18],
    [0.68, 0.68, 0.3],
  ];
  it('finds each drawn ideal shape (position and size fitted) with IoU near 1, and it fits best', () => {
    for (const kind of KINDS)
      for (const [cx, cy, r] of places) {
        const mask = foregroundMask(drawScene({ kind, colour: 'blue', background: 'white', cx, cy, r }));
        const [best, ...others] = fitShapes(mask);
        expect(best.kind, `${kind} at ${cx},${cy} r ${r}`).toBe(kind);
        // Anti-aliased edges (4x4 supersampling) move a pixel or two in or out of the mask.
        expect(best.iou).toBeGreaterThan(0.97);
        expect(Math.abs(best.r - r * 64), 'fitted size in pixels').toBeLessThan(1);
        for (const o of others) expect(o.iou).toBeLessThan(0.87);
        expect(hasShape(mask, kind)).toBe(true);
        for (const other of KINDS.filter((k) => k !== kind)) expect(hasShape(mask, other)).toBe(false);
      }
  });

  it('finds no shape in blobs: an ellipse, two merged balls, a wobbly outline, scattered spots', () => {
    const rng = new Rng(5);
    const spots = Array.from({ length: 6 }, () => [16 + 32 * rng.uniform(), 16 + 32 * rng.uniform()]);
    const blobs = {
      ellipse: paint((x, y) => ((x - 32) / 20) ** 2 + ((y - 32) / 10) ** 2 <= 1),
      peanut: paint((x, y) => (x - 24) ** 2 + (y - 32) ** 2 <= 100 || (x - 40) ** 2 + (y - 30) ** 2 <= 100),
      wobbly: paint((x, y) => {
        const a = Math.atan2(y - 32, x - 32);
        return Math.hypot(x - 32, y - 32) <= 13 * (1 + 0.35 * Math.sin(3 * a) + 0.2 * Math.cos(5 * a));
      }),
      scatter: paint((x, y) => spots.some(([px, py]) => (x - px) ** 2 + (y - py) ** 2 <= 36)),
    };
    for (const [name, img] of Object.entries(blobs)) {
      const mask = foregroundMask(img);
      for (const f of fitShapes(mask)) expect(f.iou, `${name} as a ${f.kind}`).toBeLessThan(SHAPE_IOU);
      for (const kind of KINDS) expect(hasShape(mask, kind)).toBe(false);
    }
  });

  it("reads the subject's kind off its photos, and an empty picture fits nothing", () => {
    expect(subjectKind(photos.map(foregroundMask))).toBe('ball');
    const squares = subjectScenes().map((sc) => drawScene({ ...sc, kind: 'square' }));
    expect(subjectKind(squares.map(foregroundMask))).toBe('square');
    const empty = foregroundMask(drawScene({ ...scene('ball'), r: 0 }));
    expect(fitShapes(empty).map((f) => f.iou)).toEqual([0, 0, 0]);
  });
});

describe('toy probes', () => {
  it("asks for the run's token and class word on backgrounds no photo shows and not in the subject's colours", () => {
    expect(toyProbes('zwx', 'square', photos).map((p) => p.prompt)).toEqual([
      'a photo of zwx square on a green background',
      'a photo of zwx square on a gray background',
    ]);
    // Photos on green and gray, a blue-over-white subject: the next backgrounds in line.
    const other = subjectScenes().map((sc, i) =>
      drawScene({ ...sc, pattern: ['blue', 'white'], background: i % 2 ? 'green' : 'gray' }),
    );
    expect(toyProbes('sks', 'ball', other).map((p) => p.background)).toEqual(['black', 'red']);
    expect(requestedBackground('a photo of sks ball on a gray background')).toBe('gray');
    expect(requestedBackground('a photo of sks ball')).toBeNull();
  });
});

const haveToyModel =
  existsSync(join(TOY_MODEL_DIR, 'unet/diffusion_pytorch_model.safetensors')) && existsSync(TOY_SUBJECT_DIR);

// Named by what it checks; the skip reason is in the name only when it is skipped.
describe.skipIf(!haveToyModel)(
  `the toy model learns the subject${haveToyModel ? '' : ' (skipped: models/toy-sd is missing; npm run build:toy-model)'}`,
  () => {
    const dir = mkdtempSync(join(tmpdir(), 'toy-model-test-'));
    afterAll(() => rmSync(dir, { recursive: true, force: true }));

    it('its VAE encodes to a point mass (trained on its means, it was saved with its log-variance at the floor)', async () => {
      const vae = await AutoencoderKL.load(join(TOY_MODEL_DIR, 'vae'));
      const x = tf.tensor4d(toModelRange((await readToyPhotos(listImageFiles(TOY_SUBJECT_DIR)))[0]), [1, 64, 64, 3]);
      const { mean, logvar, std } = vae.encode(x);
      expect([...new Set(await logvar.data())]).toEqual([LOGVAR_FLOOR]);
      tf.dispose([x, mean, logvar, std]);
      vae.dispose();
    });

    it("the demo's run fits its photos: the loss at fixed noise and timesteps falls, without leaking tensors", async () => {
      const before = tf.memory().numTensors;
      // The demo's run (npm run demo): the toy model's defaults, the same seed.
      const { settings } = demoTraining(TOY_MODEL_DIR, true, 64, undefined);
      const { manifest, fixedLoss } = await train({
        base: TOY_MODEL_DIR,
        photos: TOY_SUBJECT_DIR,
        runDir: join(dir, 'demo-run'),
        settings: { ...settings, checkpointEvery: settings.steps, sampleEvery: 0 },
      });
      expect(manifest.status).toBe('completed');
      expect(fixedLoss!.end).toBeLessThan(fixedLoss!.start);
      expect(tf.memory().numTensors).toBe(before);
    }, 240_000);

    it("learns the demo's subject with the model's defaults and the demo's seed (issue 26's goal): picked at +0.25 over the base with the background kept", async () => {
      // docs/experiments.md, "the toy model's training defaults": with them the triangle and the
      // blue-over-green square clear +0.25 in seeds 1-3, the ball in two of three (+0.246 to +0.276:
      // it is learned as a one-colour ball, at the threshold). This run, measured: 0.189 -> 0.448 at
      // step 125 (+0.259), background 100%; on 40 held-out images the ball's gain is about +0.2.
      const photos = TOY_SUBJECT_DIR;
      const { settings } = demoTraining(TOY_MODEL_DIR, true, 64, undefined);
      const runDir = join(dir, 'ball-run');
      await train({ base: TOY_MODEL_DIR, photos, runDir, settings: { ...settings, sampleEvery: 0 } });
      const e = await evaluateRun({
        runDir,
        photos,
        imagesPerPrompt: 6,
        steps: TOY_SAMPLING.steps,
        scorer: 'toy',
        modelsDir: join(dir, 'no-models'),
        clip: false,
      });
      const pick = e.rows.find((r) => r.step === e.best);
      console.log(
        `toy model, the demo's sks ball: base ${e.baseline.dino.toFixed(3)}; ${e.rows.map((r) => `step ${r.step} ${r.dino.toFixed(3)} (bg ${r.prompt})`).join(', ')}; pick ${e.best}`,
      );
      expect(pick, e.reason ?? '').toBeDefined();
      expect(pick!.dino - e.baseline.dino).toBeGreaterThanOrEqual(0.25);
      expect(pick!.prompt).toBeGreaterThanOrEqual(0.8);
    }, 240_000);
  },
);
