/**
 * Text encoder parity on wasm: ClipTextModel against transformers' CLIPTextModel activations in
 * `cases.safetensors` (`text.*`), for every PARITY_FIXTURES folder. Tolerance: max|a - ref| <=
 * 1e-4 * max|ref| (REFERENCE.md, "single forward passes"). Measured errors are printed.
 * Also: the tokenizer reproduces `text.input_ids`, nothing leaks, and the model built from the
 * real SD-1.5 config has exactly the SD-1.5 text encoder's keys and shapes.
 */
import { readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tf, type Tensor } from '../../src-main/engine/backend/tf.ts';
import { CLIP_TEXT_KEYS, ClipTextModel, parseClipTextConfig } from '../../src-main/engine/models/clipTextModel.ts';
import { ClipTokenizer } from '../../src-main/engine/models/clipTokenizer.ts';
import { tfOps } from '../../src-main/engine/models/ops/tfOps.ts';
import { expectNoLeak, maxAbsDiff, useBackend } from '../helpers/backend.ts';
import { Cases, FIXTURES, parityFolders, skipNote } from '../helpers/fixtures.ts';

useBackend('wasm');

const TOLERANCE = 1e-4; // relative to max|ref|

/** Compares a tensor with a reference array, prints the errors, and checks the tolerance. */
async function expectClose(label: string, actual: Tensor, ref: { shape: number[]; data: Float32Array }): Promise<void> {
  expect(actual.shape, `${label}: shape`).toEqual(ref.shape);
  const { maxAbs, maxRef, rel } = maxAbsDiff(await actual.data(), ref.data);
  console.log(
    `[parity wasm] ${label}: max abs ${maxAbs.toExponential(2)}, max|ref| ${maxRef.toFixed(3)}, rel ${rel.toExponential(2)}`,
  );
  expect(rel, `${label}: max|a - ref| / max|ref|`).toBeLessThanOrEqual(TOLERANCE);
}

/** Slice i of a stacked reference [N, ...rest]. */
function sliceRef(ref: { shape: number[]; data: Float32Array }, i: number): { shape: number[]; data: Float32Array } {
  const shape = ref.shape.slice(1);
  const n = shape.reduce((a, b) => a * b, 1);
  return { shape, data: ref.data.subarray(i * n, (i + 1) * n) };
}

const folders = await Promise.all(
  parityFolders().map(async (folder) => {
    const cases = await Cases.open(folder);
    return { folder, cases, hasText: cases.has('text.input_ids') && cases.has('text.last_hidden_state') };
  }),
);

for (const { folder, cases, hasText } of folders) {
  describe(`text encoder parity (wasm): ${basename(folder)}`, () => {
    let model!: ClipTextModel;
    let ids!: Tensor;
    afterAll(() => {
      model?.dispose();
      ids?.dispose();
      return cases.close();
    });
    if (!hasText) {
      it.skip(skipNote(folder, 'text.* cases in cases.safetensors'), () => {});
      return;
    }
    beforeAll(async () => {
      model = await ClipTextModel.load(join(folder, 'model', 'text_encoder'));
      const input = await cases.getInt('text.input_ids');
      ids = tf.tensor2d(input.data, input.shape as [number, number], 'int32');
    });
    it('the tokenizer turns text.prompts into text.input_ids exactly', async (ctx) => {
      if (!cases.metadata['text.prompts']) ctx.skip(skipNote(folder, 'text.prompts in the cases metadata'));
      const prompts = JSON.parse(cases.metadata['text.prompts']) as string[];
      expect(prompts, 'cases.safetensors __metadata__ text.prompts').toBeInstanceOf(Array);
      const tokenizer = await ClipTokenizer.load(join(folder, 'model', 'tokenizer'));
      const ref = await cases.getInt('text.input_ids');
      expect(tokenizer.call(prompts, { maxLength: ref.shape[1] }).flat()).toEqual(Array.from(ref.data));
    });

    it('last_hidden_state and pooler_output', async () => {
      const out = model.forward(ids);
      try {
        await expectClose('text.last_hidden_state', out.last_hidden_state, await cases.get('text.last_hidden_state'));
        await expectClose('text.pooler_output', out.pooler_output, await cases.get('text.pooler_output'));
      } finally {
        tf.dispose([out.last_hidden_state, out.pooler_output]);
      }
    });

    it('hidden_states: the embeddings and every layer (before the final LayerNorm)', async (ctx) => {
      if (!cases.has('text.hidden_states')) ctx.skip(skipNote(folder, 'text.hidden_states'));
      const ref = await cases.get('text.hidden_states'); // [L+1, B, S, H]
      const out = model.forward(ids, { outputHiddenStates: true });
      try {
        expect(out.hidden_states).toHaveLength(model.numLayers + 1);
        expect(ref.shape[0]).toBe(model.numLayers + 1);
        for (const [i, h] of out.hidden_states!.entries()) {
          await expectClose(`text.hidden_states[${i}]${i === 0 ? ' (embeddings)' : ''}`, h, sliceRef(ref, i));
        }
      } finally {
        tf.dispose([out.last_hidden_state, out.pooler_output, ...(out.hidden_states ?? [])]);
      }
    });

    it('hidden_states.penultimate = final_layer_norm(hidden_states[-2])', async (ctx) => {
      if (!cases.has('text.hidden_states.penultimate')) ctx.skip(skipNote(folder, 'text.hidden_states.penultimate'));
      const out = model.forward(ids, { outputHiddenStates: true });
      const hs = out.hidden_states!;
      const penultimate = model.text_model.final_layer_norm.forward(tfOps, hs[hs.length - 2]);
      try {
        await expectClose(
          'text.hidden_states.penultimate',
          penultimate,
          await cases.get('text.hidden_states.penultimate'),
        );
      } finally {
        tf.dispose([out.last_hidden_state, out.pooler_output, ...hs, penultimate]);
      }
    });

    for (const clipSkip of [1, 2]) {
      it(`encodePrompt with clip_skip ${clipSkip} (diffusers encode_prompt)`, async (ctx) => {
        const key = `text.encode_prompt.clip_skip${clipSkip}`;
        if (!cases.has(key)) ctx.skip(skipNote(folder, key));
        const e = model.encodePrompt(ids, clipSkip);
        try {
          await expectClose(key, e, await cases.get(key));
        } finally {
          e.dispose();
        }
      });
    }

    it('encodePrompt without clip_skip is last_hidden_state; number[][] ids give the same result', async () => {
      const rows = (await ids.array()) as number[][];
      const fromTensor = model.encodePrompt(ids);
      const fromRows = model.encodePrompt(rows);
      try {
        await expectClose(
          'encodePrompt() vs text.last_hidden_state',
          fromTensor,
          await cases.get('text.last_hidden_state'),
        );
        expect(Array.from(await fromRows.data())).toEqual(Array.from(await fromTensor.data()));
      } finally {
        tf.dispose([fromTensor, fromRows]);
      }
    });

    it('does not leak tensors (forward, encodePrompt, load + dispose)', async () => {
      await expectNoLeak(async () => {
        for (const skip of [undefined, 1, 2]) {
          const e = model.encodePrompt(ids, skip);
          await e.data();
          e.dispose();
        }
        const out = model.forward(ids, { outputHiddenStates: true });
        tf.dispose([out.last_hidden_state, out.pooler_output, ...out.hidden_states!]);
      });
      await expectNoLeak(async () => {
        const before = tf.memory().numTensors;
        const m = await ClipTextModel.load(join(folder, 'model', 'text_encoder'));
        expect(tf.memory().numTensors - before, 'one tensor per parameter').toBe([...m.namedParams()].length);
        m.dispose();
      });
    });

    it('rejects clip_skip outside [0, num_hidden_layers] and ids outside the vocabulary', () => {
      expect(() => model.encodePrompt(ids, model.numLayers + 1)).toThrow(/clipSkip must be an integer in \[0, /);
      expect(() => model.encodePrompt(ids, 1.5)).toThrow(/clipSkip/);
      expect(() => model.encodePrompt([[0, model.config.vocabSize]])).toThrow(/outside the vocabulary/);
    });
  });
}

describe('ClipTextConfig', () => {
  const sd15Config = JSON.parse(readFileSync(join(FIXTURES, 'sd15_configs', 'text_encoder', 'config.json'), 'utf8'));

  it('builds the SD-1.5 text encoder with exactly its state-dict keys and shapes (no weights needed)', () => {
    const manifest = JSON.parse(readFileSync(join(FIXTURES, 'sd15_shapes.json'), 'utf8'));
    const model = new ClipTextModel(parseClipTextConfig(sd15Config));
    const shapes = Object.fromEntries([...model.namedParams()].map(([k, p]) => [k, [...p.shape]]));
    expect(shapes).toEqual(manifest.text_encoder);
    expect(model.parameterCount()).toBe(manifest.param_counts.text_encoder.parameters);
  });

  it('fills defaults for keys a hub config omits', () => {
    const { hidden_act, layer_norm_eps, bos_token_id, eos_token_id, ...rest } = sd15Config;
    void [hidden_act, layer_norm_eps, bos_token_id, eos_token_id];
    const config = parseClipTextConfig(rest);
    expect(config.hiddenAct).toBe('quick_gelu');
    expect(config.layerNormEps).toBe(1e-5);
    expect(config.eosTokenId).toBe(49407); // transformers 4.38 default: the non-legacy pooling path
    expect(Object.isFrozen(config)).toBe(true);
  });

  it('names the bad field', () => {
    expect(() => parseClipTextConfig({ ...sd15Config, hidden_size: 'big' })).toThrow(
      /'hidden_size' must be a positive integer/,
    );
    expect(() => parseClipTextConfig({ ...sd15Config, num_attention_heads: 7 })).toThrow(
      /'hidden_size' 768 is not divisible by 'num_attention_heads' 7/,
    );
    expect(() => parseClipTextConfig({ ...sd15Config, hidden_act: 'relu' })).toThrow(
      /'hidden_act' must be one of quick_gelu, gelu/,
    );
    expect(() => parseClipTextConfig({ ...sd15Config, model_type: 'clip' })).toThrow(/'model_type'/);
    expect(() => parseClipTextConfig({ ...sd15Config, eos_token_id: null })).toThrow(/'eos_token_id'/);
  });

  it('reads every field from its config.json key (camelCase in code, the file keys only in the reader)', () => {
    const config = parseClipTextConfig(sd15Config);
    for (const [field, key] of Object.entries(CLIP_TEXT_KEYS)) {
      expect(key, field).toBe(field.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`));
      expect(config[field as keyof typeof config], key).toBe(sd15Config[key]);
    }
  });
});
