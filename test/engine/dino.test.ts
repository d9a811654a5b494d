/**
 * DINO evaluation against test/fixtures/dino-tiny (see REFERENCE.md, `dino-tiny`):
 * - the ONNX run exactly: fixture `pixel_values` in, CLS within 1e-5 of torch's `cls`;
 * - the normalisation exactly: fixture `crops_uint8` -> `pixel_values` bit for bit;
 * - the image path (sharp decode + resize + crop) against Pillow's `crops_uint8`, with a stated
 *   tolerance, and the resulting cosine matrix within 1e-3 of `cls_cosine_matrix`;
 * - interface validation and load errors on a hand-assembled ONNX graph and on random bytes;
 * - the similarity math on hand-checkable vectors.
 */
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLIP_PREPROCESS, clipCrop, ClipModels, clipScores } from '../../src-main/engine/eval/clip.ts';
import {
  DINO_INTERFACE,
  DinoEmbedder,
  dinoCrop,
  dinoPixelValues,
  dinoResizeSize,
  normalizeNchw,
} from '../../src-main/engine/eval/dino.ts';
import { listModels, locateClip, locateDino } from '../../src-main/engine/eval/modelRegistry.ts';
import {
  EVAL_PROMPTS,
  EVAL_SEEDS,
  evalJobs,
  fillPrompt,
  IMAGES_PER_PROMPT,
  quickEvalPrompts,
} from '../../src-main/engine/eval/prompts.ts';
import { defaultModelsDir, REPO_ROOT } from '../../src-main/engine/paths.ts';
import { OnnxModel, OnnxModelError } from '../../src-main/engine/backend/onnxRuntime.ts';
import { cosine, cosineMatrix, subjectFidelity } from '../../src-main/engine/eval/similarity.ts';
import type { RgbImage } from '../../src-main/engine/image/sharp.ts';
import { SafetensorsFile } from '../../src-main/engine/io/safetensors.ts';
import { FIXTURES } from '../helpers/fixtures.ts';

const DIR = join(FIXTURES, 'dino-tiny');
const MODEL = join(DIR, 'model.onnx');
const PLANE = 3 * 224 * 224;

interface CaseImage {
  file: string;
  size_wh: [number, number];
  resized_wh: [number, number];
  crop_left_top: [number, number];
}
interface CasesJson {
  images: CaseImage[];
  cls_cosine_matrix: number[][];
}

let cases: CasesJson;
let pixelValues: Float32Array;
let cls: Float32Array;
let lastHidden: Float32Array;
let crops: Uint8Array;
let embedder: DinoEmbedder;
const scratch = mkdtempSync(join(tmpdir(), 'singlora-dino-'));

beforeAll(async () => {
  cases = JSON.parse(await readFile(join(DIR, 'cases.json'), 'utf8')) as CasesJson;
  const st = await SafetensorsFile.open(join(DIR, 'cases.safetensors'));
  pixelValues = await st.readFloat32('pixel_values');
  cls = await st.readFloat32('cls');
  lastHidden = await st.readFloat32('last_hidden_state');
  crops = new Uint8Array(await st.readBytes('crops_uint8'));
  expect(st.info('crops_uint8').dtype).toBe('U8');
  await st.close();
  embedder = await DinoEmbedder.load(MODEL, { batchSize: 4, intraOpNumThreads: 2 });
});

afterAll(async () => {
  await embedder?.release();
  rmSync(scratch, { recursive: true, force: true });
});

function maxAbs(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

describe('DINO ONNX model (fixture pixel_values in)', () => {
  it('CLS embeddings match torch within 1e-5 absolute', async () => {
    const out = await embedder.embedPixelValues(pixelValues, 4);
    expect(out).toHaveLength(4);
    let worst = 0;
    out.forEach((e, i) => {
      expect(e).toHaveLength(48);
      worst = Math.max(worst, maxAbs(e, cls.subarray(i * 48, (i + 1) * 48)));
    });
    console.log(`[dino] CLS max abs error vs torch: ${worst.toExponential(2)}`);
    expect(worst).toBeLessThan(1e-5);
  });

  it('the whole last_hidden_state matches within 1e-4·max|ref| (REFERENCE.md single-pass tolerance)', async () => {
    const model = await OnnxModel.load(MODEL, DINO_INTERFACE);
    try {
      const { last_hidden_state: h } = await model.run({
        pixel_values: { type: 'float32', data: pixelValues, dims: [4, 3, 224, 224] },
      });
      expect(h.dims).toEqual([4, 197, 48]);
      const ref = Math.max(...Array.from(lastHidden, Math.abs));
      const err = maxAbs(h.data as Float32Array, lastHidden);
      console.log(`[dino] last_hidden_state max abs error ${err.toExponential(2)} (max|ref| ${ref.toFixed(2)})`);
      expect(err).toBeLessThan(1e-4 * ref);
    } finally {
      await model.release();
    }
  });

  it('batching does not change results: batch size 3 (runs of 3 and 1) equals batch size 4', async () => {
    const small = await DinoEmbedder.load(MODEL, { batchSize: 3, intraOpNumThreads: 2 });
    try {
      const a = await small.embedPixelValues(pixelValues, 4);
      const b = await embedder.embedPixelValues(pixelValues, 4);
      for (let i = 0; i < 4; i++) expect(maxAbs(a[i], b[i])).toBeLessThan(1e-6);
    } finally {
      await small.release();
    }
  });

  it('rejects a pixel buffer of the wrong length', async () => {
    await expect(embedder.embedPixelValues(pixelValues.subarray(0, PLANE * 2 - 1), 2)).rejects.toThrow(
      /expected 2×3×224×224/,
    );
  });
});

describe('DINO preprocessing', () => {
  it('resize sizes and crop offsets follow torchvision (fixture resized_wh, crop_left_top)', () => {
    for (const c of cases.images) {
      const s = dinoResizeSize(c.size_wh[0], c.size_wh[1]);
      expect([s.width, s.height]).toEqual(c.resized_wh);
      expect([Math.round((s.width - 224) / 2), Math.round((s.height - 224) / 2)]).toEqual(c.crop_left_top);
    }
  });

  it('normalisation of the fixture crops reproduces pixel_values bit for bit', () => {
    const imgs: RgbImage[] = [0, 1, 2, 3].map((i) => ({
      data: crops.subarray(i * 224 * 224 * 3, (i + 1) * 224 * 224 * 3),
      width: 224,
      height: 224,
    }));
    const px = dinoPixelValues(imgs);
    expect(maxAbs(px, pixelValues)).toBe(0);
  });

  // Tolerance for the image path. Pillow (the reference) rounds and clamps to uint8 after its
  // horizontal pass and uses 22-bit fixed-point weights; libvips interpolates in 2-D with its own
  // fixed point. Near hard, saturated edges (the sun in landscape, the ring in small) that gives up
  // to ~18 levels on a handful of pixels; elsewhere 0 or 1 (rounding). Measured (max / mean levels /
  // exact): landscape 13 / 0.005 / 99.7%, portrait 2 / 0.062 / 93.9%, blocks 0 / 0 / 100% (no
  // resize), small 18 / 0.116 / 93.3%.
  const TOL = { max: 24, mean: 0.25, exactFraction: 0.9 };

  it(`sharp decode+resize+crop matches Pillow's crops_uint8 (max ≤ ${TOL.max}, mean ≤ ${TOL.mean} levels, ≥ ${TOL.exactFraction * 100}% exact)`, async () => {
    const report: string[] = [];
    const results: { file: string; max: number; mean: number; exact: number; noResize: boolean }[] = [];
    for (let i = 0; i < 4; i++) {
      const c = cases.images[i];
      const crop = await dinoCrop(join(DIR, c.file));
      expect([crop.width, crop.height]).toEqual([224, 224]);
      const ref = crops.subarray(i * 224 * 224 * 3, (i + 1) * 224 * 224 * 3);
      let max = 0;
      let sum = 0;
      let exact = 0;
      for (let j = 0; j < ref.length; j++) {
        const d = Math.abs(crop.data[j] - ref[j]);
        max = Math.max(max, d);
        sum += d;
        if (d === 0) exact++;
      }
      const mean = sum / ref.length;
      report.push(`${c.file}: max ${max}, mean ${mean.toFixed(3)}, exact ${((100 * exact) / ref.length).toFixed(2)}%`);
      results.push({
        file: c.file,
        max,
        mean,
        exact: exact / ref.length,
        noResize: c.size_wh[0] === 256 && c.size_wh[1] === 256,
      });
    }
    console.log(`[dino] crop level differences vs Pillow:\n  ${report.join('\n  ')}`);
    for (const { file, max, mean, exact, noResize } of results) {
      expect(max, file).toBeLessThanOrEqual(TOL.max);
      expect(mean, file).toBeLessThanOrEqual(TOL.mean);
      expect(exact, file).toBeGreaterThanOrEqual(TOL.exactFraction);
      if (noResize) expect(max, `${file}: no resize, so the crop must be exact`).toBe(0);
    }
  });

  it('embeddings from the image path give the fixture cosine matrix within 1e-3', async () => {
    const files = cases.images.map((c) => join(DIR, c.file));
    const t0 = performance.now();
    const emb = await embedder.embed(files);
    const ms = (performance.now() - t0) / files.length;
    const m = cosineMatrix(emb);
    let worst = 0;
    for (let i = 0; i < 4; i++)
      for (let j = 0; j < 4; j++) worst = Math.max(worst, Math.abs(m[i][j] - cases.cls_cosine_matrix[i][j]));
    let clsErr = 0;
    emb.forEach((e, i) => (clsErr = Math.max(clsErr, maxAbs(e, cls.subarray(i * 48, (i + 1) * 48)))));
    console.log(
      `[dino] image path: cosine matrix max abs error ${worst.toExponential(2)}, CLS max abs error ${clsErr.toExponential(2)}, ${ms.toFixed(1)} ms/image (tiny model, decode+resize+run)`,
    );
    expect(worst).toBeLessThan(1e-3);
  });

  it('embed() keeps input order across batches and reports progress', async () => {
    const files = cases.images.map((c) => join(DIR, c.file));
    const two = await DinoEmbedder.load(MODEL, { batchSize: 3, intraOpNumThreads: 2 });
    try {
      const progress: number[] = [];
      const reversed = await two.embed([...files].reverse(), (done, total) => {
        expect(total).toBe(4);
        progress.push(done);
      });
      const forward = await embedder.embed(files);
      expect(progress).toEqual([3, 4]);
      for (let i = 0; i < 4; i++) expect(maxAbs(reversed[3 - i], forward[i])).toBeLessThan(1e-6);
    } finally {
      await two.release();
    }
  });

  it('an undecodable input fails naming the file', async () => {
    const bad = join(scratch, 'not-an-image.png');
    writeFileSync(bad, 'this is text, not a PNG\n');
    await expect(embedder.embed([join(DIR, cases.images[0].file), bad])).rejects.toThrow(bad);
  });
});

// ---- a minimal ONNX protobuf writer: enough for small graphs with declared shapes ----
// ModelProto{1 ir_version, 2 producer, 7 graph, 8 opset_import}; GraphProto{1 node, 2 name,
// 11 input, 12 output}; NodeProto{1 input, 2 output, 3 name, 4 op_type, 5 attribute};
// AttributeProto{1 name, 3 i, 8 ints, 20 type (INT 2, INTS 7)}; ValueInfoProto{1 name, 2 type};
// TypeProto{1 tensor_type{1 elem_type (FLOAT 1, INT64 7), 2 shape{1 dim{1 value | 2 param}}}}.

function varint(n: number): number[] {
  const out: number[] = [];
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n = Math.floor(n / 128);
  }
  out.push(n);
  return out;
}
const field = {
  int: (no: number, v: number) => [...varint(no << 3), ...varint(v)],
  bytes: (no: number, b: number[]) => [...varint((no << 3) | 2), ...varint(b.length), ...b],
  str: (no: number, s: string) => field.bytes(no, [...Buffer.from(s, 'utf8')]),
};
type Io = [name: string, shape: (number | string)[], elemType?: number];
function valueInfo([name, shape, elemType = 1]: Io): number[] {
  const dims = shape.flatMap((d) => field.bytes(1, typeof d === 'number' ? field.int(1, d) : field.str(2, d)));
  const tensorType = [...field.int(1, elemType), ...field.bytes(2, dims)];
  return [...field.str(1, name), ...field.bytes(2, field.bytes(1, tensorType))];
}
function node(
  op: string,
  inputs: string[],
  outputs: string[],
  attrs: Record<string, number | number[]> = {},
): number[] {
  const attributes = Object.entries(attrs).flatMap(([name, v]) =>
    field.bytes(5, [
      ...field.str(1, name),
      ...(Array.isArray(v)
        ? [...v.flatMap((x) => field.int(8, x)), ...field.int(20, 7)]
        : [...field.int(3, v), ...field.int(20, 2)]),
    ]),
  );
  return [
    ...inputs.flatMap((i) => field.str(1, i)),
    ...outputs.flatMap((o) => field.str(2, o)),
    ...field.str(3, `${op}_${outputs[0]}`),
    ...field.str(4, op),
    ...attributes,
  ];
}
function onnxModel(nodes: number[][], inputs: Io[], outputs: Io[]): Buffer {
  const graph = [
    ...nodes.flatMap((n) => field.bytes(1, n)),
    ...field.str(2, 'g'),
    ...inputs.flatMap((i) => field.bytes(11, valueInfo(i))),
    ...outputs.flatMap((o) => field.bytes(12, valueInfo(o))),
  ];
  const opset = [...field.str(1, ''), ...field.int(2, 14)];
  return Buffer.from([
    ...field.int(1, 8),
    ...field.str(2, 'singlora-test'),
    ...field.bytes(7, graph),
    ...field.bytes(8, opset),
  ]);
}
function identityModel(input: Io, output: Io): Buffer {
  return onnxModel([node('Identity', [input[0]], [output[0]])], [input], [output]);
}

describe('ONNX loading errors', () => {
  it('a hand-assembled model with another input is rejected with both interfaces in the message', async () => {
    const file = join(scratch, 'model.onnx');
    writeFileSync(file, identityModel(['input', [1, 3, 256, 256]], ['output', [1, 3, 256, 256]]));
    const err = await OnnxModel.load(file, DINO_INTERFACE).catch((e: Error) => e);
    expect(err).toBeInstanceOf(OnnxModelError);
    expect((err as Error).message).toContain(`${file}: not a DINO ViT-S/16 image embedder`);
    expect((err as Error).message).toContain(
      `expected input 'pixel_values' [N,3,224,224], found 'input' [1,3,256,256]`,
    );
    expect((err as Error).message).toContain(
      `expected output 'last_hidden_state' [N,197,D], found 'output' [1,3,256,256]`,
    );
  });

  it('a model with the right names but the wrong output shape is rejected', async () => {
    const file = join(scratch, 'wrong-shape.onnx');
    writeFileSync(
      file,
      identityModel(['pixel_values', ['batch', 3, 224, 224]], ['last_hidden_state', ['batch', 3, 224, 224]]),
    );
    await expect(DinoEmbedder.load(file)).rejects.toThrow(
      `expected output 'last_hidden_state' [N,197,D], found 'last_hidden_state' [batch,3,224,224]`,
    );
  });

  it('the hand-assembled model itself is valid ONNX: it loads and runs against its own interface', async () => {
    const file = join(scratch, 'identity.onnx');
    writeFileSync(file, identityModel(['x', ['n', 2]], ['y', ['n', 2]]));
    const model = await OnnxModel.load(file, {
      what: 'identity',
      inputs: [{ name: 'x', type: 'float32', shape: ['N', 2] }],
      outputs: [{ name: 'y', type: 'float32', shape: ['N', 2] }],
    });
    const { y } = await model.run({ x: { type: 'float32', data: Float32Array.of(1, 2, 3, 4), dims: [2, 2] } });
    expect(Array.from(y.data as Float32Array)).toEqual([1, 2, 3, 4]);
    await model.release();
  });

  it('random bytes give a clear error naming the file', async () => {
    const file = join(scratch, 'corrupt.onnx');
    const bytes = Buffer.alloc(4096);
    let s = 12345;
    for (let i = 0; i < bytes.length; i++) bytes[i] = (s = (s * 1103515245 + 12345) >>> 0) >>> 24;
    writeFileSync(file, bytes);
    await expect(OnnxModel.load(file, DINO_INTERFACE)).rejects.toThrow(
      `${file}: not a loadable ONNX model (4096 bytes)`,
    );
  });

  it('a missing file says so', async () => {
    const file = join(scratch, 'nope.onnx');
    await expect(DinoEmbedder.load(file)).rejects.toThrow(`${file}: no such file`);
  });
});

describe('similarity math', () => {
  it('cosine on hand-checkable vectors', () => {
    expect(cosine([1, 0], [0, 1])).toBe(0);
    expect(cosine([1, 0], [1, 0])).toBe(1);
    expect(cosine([1, 0], [-2, 0])).toBe(-1);
    expect(cosine([3, 4], [4, 3])).toBeCloseTo(24 / 25, 15);
    expect(cosine([1, 1], [1, 0])).toBeCloseTo(Math.SQRT1_2, 15);
    expect(() => cosine([0, 0], [1, 0])).toThrow(/zero vector/);
    expect(() => cosine([1, 0, 0], [1, 0])).toThrow(/lengths 3 and 2/);
  });

  it('subject fidelity is the mean over all generated × subject pairs, with per-image means', () => {
    // generated: g1 = (1,0), g2 = (0,1); subject: r1 = (1,0), r2 = (1,1)/√2 direction, r3 = (-1,0)
    // cos(g1, r) = 1, √½, -1  -> m1 = √½ / 3
    // cos(g2, r) = 0, √½,  0  -> m2 = √½ / 3
    const r = subjectFidelity(
      [
        { file: 'g1.png', embedding: [1, 0] },
        { file: 'g2.png', embedding: [0, 1] },
      ],
      [
        { file: 'r1.jpg', embedding: [1, 0] },
        { file: 'r2.jpg', embedding: [2, 2] },
        { file: 'r3.jpg', embedding: [-5, 0] },
      ],
    );
    expect(r.pairs).toBe(6);
    expect(r.perImage.map((p) => p.file)).toEqual(['g1.png', 'g2.png']);
    expect(r.perImage[0].meanCosine).toBeCloseTo(Math.SQRT1_2 / 3, 12);
    expect(r.perImage[1].meanCosine).toBeCloseTo(Math.SQRT1_2 / 3, 12);
    expect(r.dino).toBeCloseTo(Math.SQRT1_2 / 3, 12);

    const s = subjectFidelity(
      [
        { file: 'a', embedding: [1, 0] },
        { file: 'b', embedding: [-1, 0] },
      ],
      [{ file: 'r', embedding: [3, 0] }],
    );
    expect(s.perImage.map((p) => p.meanCosine)).toEqual([1, -1]);
    expect(s.dino).toBe(0);
    expect(() => subjectFidelity([], [{ file: 'r', embedding: [1] }])).toThrow(/no generated images/);
  });
});

describe('CLIP scores (wiring, with stand-in towers)', () => {
  // Stand-in towers with the HF export interface, built here:
  //   vision: image_embeds = per-channel mean of pixel_values            -> [N,3]
  //   text:   text_embeds  = (m, m, m), m = mean of float(input_ids)     -> [N,3]
  // so CLIP-T = cos(image_embeds, (1,1,1)) whatever the prompt, and CLIP-I is checkable from the crops.
  function installClip(dir: string): void {
    mkdirSync(dir, { recursive: true });
    writeFileSync(
      join(dir, 'vision_model.onnx'),
      onnxModel(
        [node('ReduceMean', ['pixel_values'], ['image_embeds'], { axes: [2, 3], keepdims: 0 })],
        [['pixel_values', ['batch', 3, 224, 224]]],
        [['image_embeds', ['batch', 3]]],
      ),
    );
    writeFileSync(
      join(dir, 'text_model.onnx'),
      onnxModel(
        [
          node('Cast', ['input_ids'], ['f'], { to: 1 }),
          node('ReduceMean', ['f'], ['m'], { axes: [1], keepdims: 1 }),
          node('Concat', ['m', 'm', 'm'], ['text_embeds'], { axis: 1 }),
        ],
        [['input_ids', ['batch', 'seq'], 7]],
        [['text_embeds', ['batch', 3]]],
      ),
    );
    for (const f of ['vocab.json', 'merges.txt'])
      copyFileSync(join(FIXTURES, 'tiny-a/model/tokenizer', f), join(dir, f));
  }

  it('is skipped with a message naming the missing files when CLIP is not installed', () => {
    const r = locateClip(join(scratch, 'no-models'));
    expect('missing' in r && r.missing).toMatch(
      /CLIP model files missing: .*no-models\/clip\/vision_model\.onnx.*singlora models download clip/,
    );
  });

  it('computes CLIP-I as the pairwise mean and CLIP-T against the prompt embedding', async () => {
    const modelsDir = join(scratch, 'models');
    installClip(join(modelsDir, 'clip'));
    const located = locateClip(modelsDir);
    if (!('files' in located)) throw new Error(located.missing);
    const clip = await ClipModels.load(located.files, { batchSize: 3 });
    try {
      const files = cases.images.map((c) => join(DIR, c.file));
      const generated = [
        { file: files[0], prompt: 'a photo of sks dog' },
        { file: files[1] },
        { file: files[3], prompt: 'a painting of a castle on a hill' },
      ];
      const photos = [files[2], files[3]];
      const r = await clipScores(clip, generated, photos);
      // Expected embeddings: channel means of the normalised CLIP crops.
      const emb = async (f: string) => {
        const px = normalizeNchw([await clipCrop(f)], 224, CLIP_PREPROCESS.mean, CLIP_PREPROCESS.std);
        const plane = 224 * 224;
        return [0, 1, 2].map((c) => px.subarray(c * plane, (c + 1) * plane).reduce((a, b) => a + b, 0) / plane);
      };
      const g = await Promise.all(generated.map((x) => emb(x.file)));
      const p = await Promise.all(photos.map(emb));
      const perImage = g.map((e) => (cosine(e, p[0]) + cosine(e, p[1])) / 2);
      r.perImage.forEach((x, i) => expect(x.clipI).toBeCloseTo(perImage[i], 4));
      expect(r.clipI).toBeCloseTo(perImage.reduce((a, b) => a + b, 0) / 3, 4);
      const ones = [1, 1, 1];
      expect(r.perImage[0].clipT).toBeCloseTo(cosine(g[0], ones), 4);
      expect(r.perImage[1].clipT).toBeNull();
      expect(r.perImage[2].clipT).toBeCloseTo(cosine(g[2], ones), 4);
      expect(r.clipT).toBeCloseTo((cosine(g[0], ones) + cosine(g[2], ones)) / 2, 4);
      // The text tower really received the tokenizer's 77 ids: m = mean(ids) > 0 differs per prompt.
      const [a, b] = await clip.embedTexts(['a photo of sks dog', 'a painting of a castle on a hill']);
      expect(a[0]).toBeGreaterThan(0);
      expect(a[0]).not.toBeCloseTo(b[0], 3);
    } finally {
      await clip.release();
    }
  });
});

describe('model registry and paths', () => {
  it('the models folder is SINGLORA_MODELS_DIR or <repo>/models', () => {
    expect(defaultModelsDir({})).toBe(join(REPO_ROOT, 'models'));
    expect(defaultModelsDir({ SINGLORA_MODELS_DIR: '/data/m' })).toBe('/data/m');
    expect(defaultModelsDir({ SINGLORA_MODELS_DIR: '  ' })).toBe(join(REPO_ROOT, 'models'));
  });

  it('locateDino says where to put the model when it is missing', () => {
    const dir = join(scratch, 'empty-models');
    expect(() => locateDino(dir)).toThrow(
      `DINO model not found: place model.onnx at ${join(dir, 'dino/model.onnx')} or run \`singlora models download dino\``,
    );
    expect(() => locateDino(dir, join(dir, 'x.onnx'))).toThrow(/x\.onnx does not exist/);
    expect(locateDino(dir, MODEL)).toBe(MODEL);
  });

  it('listModels reports present and missing files, and that no checksum is known yet', async () => {
    const dir = join(scratch, 'listed');
    mkdirSync(join(dir, 'dino'), { recursive: true });
    copyFileSync(MODEL, join(dir, 'dino/model.onnx'));
    const [dino, clip] = await listModels(dir);
    expect(dino).toMatchObject({ id: 'dino', present: true, required: true });
    expect(dino.files[0]).toMatchObject({
      present: true,
      bytes: 459125,
      verified: null,
      note: 'present, not verified (no known sha256)',
    });
    expect(locateDino(dir)).toBe(join(dir, 'dino/model.onnx'));
    expect(clip).toMatchObject({ id: 'clip', present: false, required: false });
    expect(clip.files[0].note).toBe(
      `missing: place vision_model.onnx at ${join(dir, 'clip/vision_model.onnx')} (from ${clip.files[0].url}) or run \`singlora models download clip\``,
    );
  });
});

describe('evaluation prompt set', () => {
  it('is fixed: 25 prompts per subject kind, every category, IMAGES_PER_PROMPT seeded images each', () => {
    for (const kind of ['object', 'live'] as const) {
      const jobs = evalJobs(kind, 'sks', kind === 'object' ? 'backpack' : 'dog');
      expect(EVAL_PROMPTS[kind]).toHaveLength(25);
      expect(jobs).toHaveLength(25 * IMAGES_PER_PROMPT);
      expect(new Set(jobs.map((j) => j.category))).toEqual(
        new Set(['recontextualization', 'accessorization', 'property']),
      );
      expect(jobs.slice(0, IMAGES_PER_PROMPT).map((j) => j.seed)).toEqual(EVAL_SEEDS.slice(0, IMAGES_PER_PROMPT));
      for (const j of jobs) {
        expect(j.prompt).toContain(`sks ${kind === 'object' ? 'backpack' : 'dog'}`);
        expect(j.prompt).not.toMatch(/[{}]/);
      }
      expect(new Set(jobs.map((j) => j.prompt)).size).toBe(25);
    }
    expect(() => fillPrompt('a {token} {class}', '', 'dog')).toThrow(/token must be non-empty/);
  });

  it('the quick check is the first prompt of each category, filled in', () => {
    for (const kind of ['object', 'live'] as const) {
      const quick = quickEvalPrompts(kind, 'sks', 'dog');
      const jobs = evalJobs(kind, 'sks', 'dog');
      expect(quick).toEqual(
        ['recontextualization', 'accessorization', 'property'].map((c) => jobs.find((j) => j.category === c)!.prompt),
      );
    }
    expect(() => quickEvalPrompts('plant' as never, 'sks', 'dog')).toThrow(/subject kind/);
  });
});
