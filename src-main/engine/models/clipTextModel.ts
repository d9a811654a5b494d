/**
 * CLIP text encoder: transformers `CLIPTextModel`, the `text_encoder` of Stable Diffusion 1.x.
 *
 * Mirrors transformers v4.38 `models/clip/modeling_clip.py` (`CLIPTextEmbeddings`,
 * `CLIPAttention`, `CLIPMLP`, `CLIPEncoderLayer`, `CLIPEncoder`, `CLIPTextTransformer`,
 * `CLIPTextModel`) and `models/clip/configuration_clip.py` (`CLIPTextConfig` defaults), plus
 * diffusers v0.27.2 `StableDiffusionPipeline.encode_prompt` for `clip_skip`.
 * Original: Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
 * Supervision"; openai/CLIP `clip/model.py` (`Transformer`, `ResidualAttentionBlock`).
 *
 * Symbols:
 *   B  batch             S  tokens (77)          H  hidden_size
 *   h  attention heads   d  head size = H / h    I  intermediate_size
 *   L  num_hidden_layers
 *
 * Each encoder layer is pre-LN with a causal mask (token i attends to tokens 0..i):
 *   x = x + out_proj(attend(q_proj(LN1 x), k_proj(LN1 x), v_proj(LN1 x), causal))
 *   x = x + fc2(act(fc1(LN2 x)))
 *
 * Property paths mirror the transformers state dict (`text_model.encoder.layers.0.self_attn.q_proj.weight`),
 * so `loadParams` walks `model.safetensors` directly; only the `position_ids` buffer is skipped.
 */
import { readComponentConfig, TRANSFORMERS_WEIGHT_FILES } from '../io/componentFolder.ts';
import { join } from 'node:path';
import { tf, type Tensor } from '../backend/tf.ts';
import { activation, type Activation } from './layers/activations.ts';
import type { Ops } from './ops/ops.ts';
import { tfOps } from './ops/tfOps.ts';
import { Linear, type LinearSlot } from './layers/linear.ts';
import { Module, Param, loadComponentWeights } from './layers/module.ts';
import { LayerNorm } from './layers/norm.ts';

// ---------------------------------------------------------------------------------------------
// Config

/**
 * The `CLIPTextConfig` fields the text encoder uses, with transformers' defaults filled in. In code
 * the fields are camelCase; `CLIP_TEXT_KEYS` names each one's key in `config.json`, and
 * `parseClipTextConfig` is the one place the file's keys are read.
 */
export interface ClipTextConfig {
  readonly vocabSize: number;
  readonly hiddenSize: number;
  readonly intermediateSize: number;
  readonly numHiddenLayers: number;
  readonly numAttentionHeads: number;
  readonly maxPositionEmbeddings: number;
  readonly hiddenAct: ClipHiddenAct;
  readonly layerNormEps: number;
  readonly bosTokenId: number | null;
  readonly eosTokenId: number;
  readonly padTokenId: number | null;
}

export const CLIP_HIDDEN_ACTS = ['quick_gelu', 'gelu'] as const;
export type ClipHiddenAct = (typeof CLIP_HIDDEN_ACTS)[number];

/** Each field's key in a text encoder's `config.json` (transformers' `CLIPTextConfig` argument names). */
export const CLIP_TEXT_KEYS: { readonly [K in keyof ClipTextConfig]: string } = {
  vocabSize: 'vocab_size',
  hiddenSize: 'hidden_size',
  intermediateSize: 'intermediate_size',
  numHiddenLayers: 'num_hidden_layers',
  numAttentionHeads: 'num_attention_heads',
  maxPositionEmbeddings: 'max_position_embeddings',
  hiddenAct: 'hidden_act',
  layerNormEps: 'layer_norm_eps',
  bosTokenId: 'bos_token_id',
  eosTokenId: 'eos_token_id',
  padTokenId: 'pad_token_id',
};

/** transformers v4.38 `CLIPTextConfig.__init__` defaults (hub configs often omit some keys). */
export const CLIP_TEXT_DEFAULTS: ClipTextConfig = {
  vocabSize: 49408,
  hiddenSize: 512,
  intermediateSize: 2048,
  numHiddenLayers: 12,
  numAttentionHeads: 8,
  maxPositionEmbeddings: 77,
  hiddenAct: 'quick_gelu',
  layerNormEps: 1e-5,
  bosTokenId: 49406,
  eosTokenId: 49407,
  padTokenId: 1,
};

/**
 * Validates a text encoder `config.json` (parsed JSON, the file's keys) and fills in the defaults.
 * Keys the model does not use (dropout, initializer_*, projection_dim, ...) are ignored. Errors
 * name the file's key.
 */
export function parseClipTextConfig(raw: unknown, source = 'text_encoder/config.json'): ClipTextConfig {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw))
    throw new Error(`${source}: expected a JSON object`);
  const r = raw as Record<string, unknown>;
  const fail = (key: string, want: string): never => {
    throw new Error(`${source}: '${key}' must be ${want}, got ${JSON.stringify(r[key])}`);
  };
  if (r.model_type !== undefined && r.model_type !== 'clip_text_model') {
    fail(
      'model_type',
      `'clip_text_model' (a CLIPTextModel config; a full CLIPModel config keeps it under 'text_config')`,
    );
  }
  /** The file's value of `field` (null stays null), else the default. */
  const read = (field: keyof ClipTextConfig): unknown =>
    CLIP_TEXT_KEYS[field] in r ? r[CLIP_TEXT_KEYS[field]] : CLIP_TEXT_DEFAULTS[field];
  const positiveInt = (field: keyof ClipTextConfig): number => {
    const v = read(field) ?? CLIP_TEXT_DEFAULTS[field];
    return Number.isInteger(v) && (v as number) > 0 ? (v as number) : fail(CLIP_TEXT_KEYS[field], 'a positive integer');
  };
  const tokenId = (field: 'bosTokenId' | 'eosTokenId' | 'padTokenId', nullable: boolean): number | null => {
    const v = read(field);
    if (v === null && nullable) return null;
    return Number.isInteger(v) && (v as number) >= 0
      ? (v as number)
      : fail(CLIP_TEXT_KEYS[field], `a non-negative integer${nullable ? ' or null' : ''}`);
  };
  const hiddenAct = (read('hiddenAct') ?? CLIP_TEXT_DEFAULTS.hiddenAct) as ClipHiddenAct;
  if (!CLIP_HIDDEN_ACTS.includes(hiddenAct)) fail('hidden_act', `one of ${CLIP_HIDDEN_ACTS.join(', ')}`);
  const layerNormEps = read('layerNormEps') ?? CLIP_TEXT_DEFAULTS.layerNormEps;
  if (typeof layerNormEps !== 'number' || !(layerNormEps > 0)) fail('layer_norm_eps', 'a positive number');

  const config: ClipTextConfig = {
    vocabSize: positiveInt('vocabSize'),
    hiddenSize: positiveInt('hiddenSize'),
    intermediateSize: positiveInt('intermediateSize'),
    numHiddenLayers: positiveInt('numHiddenLayers'),
    numAttentionHeads: positiveInt('numAttentionHeads'),
    maxPositionEmbeddings: positiveInt('maxPositionEmbeddings'),
    hiddenAct,
    layerNormEps: layerNormEps as number,
    bosTokenId: tokenId('bosTokenId', true),
    eosTokenId: tokenId('eosTokenId', false) as number,
    padTokenId: tokenId('padTokenId', true),
  };
  if (config.hiddenSize % config.numAttentionHeads !== 0) {
    throw new Error(
      `${source}: 'hidden_size' ${config.hiddenSize} is not divisible by 'num_attention_heads' ${config.numAttentionHeads}`,
    );
  }
  return Object.freeze(config);
}

// ---------------------------------------------------------------------------------------------
// Layers

/** `torch.nn.Embedding`: a [num, dim] table looked up by integer ids. */
export class Embedding extends Module {
  weight: Param;

  constructor(
    readonly num: number,
    readonly dim: number,
  ) {
    super();
    this.weight = new Param([num, dim]);
  }

  /** ids int32 [...] -> [..., dim]. */
  forward<T>(o: Ops<T>, ids: T): T {
    return o.embedding(ids, this.weight);
  }
}

/** `CLIPTextEmbeddings`: token embedding + learned position embedding. */
export class ClipTextEmbeddings extends Module {
  token_embedding: Embedding;
  position_embedding: Embedding;

  constructor(config: ClipTextConfig) {
    super();
    this.token_embedding = new Embedding(config.vocabSize, config.hiddenSize);
    this.position_embedding = new Embedding(config.maxPositionEmbeddings, config.hiddenSize);
  }

  /** ids int32 [B, S] (S known to the executor) -> [B, S, H]. */
  forward<T>(o: Ops<T>, ids: T, seq: number): T {
    return o.scope(() => o.add(this.token_embedding.forward(o, ids), o.tableRows(this.position_embedding.weight, seq))); // [B, S, H] + [S, H]
  }
}

/** `CLIPAttention`: multi-head self-attention with q/k/v/out projections (all with bias). */
export class ClipAttention extends Module {
  q_proj: LinearSlot;
  k_proj: LinearSlot;
  v_proj: LinearSlot;
  out_proj: LinearSlot;

  constructor(
    hidden: number,
    readonly heads: number,
  ) {
    super();
    this.q_proj = new Linear(hidden, hidden);
    this.k_proj = new Linear(hidden, hidden);
    this.v_proj = new Linear(hidden, hidden);
    this.out_proj = new Linear(hidden, hidden);
  }

  /** x [B, S, H], mask [1, S, S] (added to the scores) -> [B, S, H]. */
  forward<T>(o: Ops<T>, x: T, mask: T): T {
    return o.scope(() => {
      // transformers scales q before q k^T; the attention op scales the scores (the same up to rounding).
      const attended = o.attention(
        this.q_proj.forward(o, x),
        this.k_proj.forward(o, x),
        this.v_proj.forward(o, x),
        this.heads,
        mask,
      );
      return this.out_proj.forward(o, attended);
    });
  }
}

/** `CLIPMLP`: fc1 -> activation -> fc2. */
export class ClipMlp extends Module {
  fc1: LinearSlot;
  fc2: LinearSlot;
  private readonly act: Activation;

  constructor(hidden: number, intermediate: number, act: ClipHiddenAct) {
    super();
    this.fc1 = new Linear(hidden, intermediate);
    this.fc2 = new Linear(intermediate, hidden);
    this.act = activation(act);
  }

  /** [B, S, H] -> [B, S, H] via [B, S, I]. */
  forward<T>(o: Ops<T>, x: T): T {
    return o.scope(() => this.fc2.forward(o, this.act(o, this.fc1.forward(o, x))));
  }
}

/** `CLIPEncoderLayer`: pre-LN self-attention and MLP, each with a residual connection. */
export class ClipEncoderLayer extends Module {
  self_attn: ClipAttention;
  layer_norm1: LayerNorm;
  mlp: ClipMlp;
  layer_norm2: LayerNorm;

  constructor(config: ClipTextConfig) {
    super();
    this.self_attn = new ClipAttention(config.hiddenSize, config.numAttentionHeads);
    this.layer_norm1 = new LayerNorm(config.hiddenSize, config.layerNormEps);
    this.mlp = new ClipMlp(config.hiddenSize, config.intermediateSize, config.hiddenAct);
    this.layer_norm2 = new LayerNorm(config.hiddenSize, config.layerNormEps);
  }

  /** x [B, S, H], causal mask [1, S, S] -> [B, S, H]. */
  forward<T>(o: Ops<T>, x: T, mask: T): T {
    return o.scope(() => {
      const h = o.add(x, this.self_attn.forward(o, this.layer_norm1.forward(o, x), mask));
      return o.add(h, this.mlp.forward(o, this.layer_norm2.forward(o, h)));
    });
  }
}

export class ClipEncoder extends Module {
  layers: ClipEncoderLayer[];

  constructor(config: ClipTextConfig) {
    super();
    this.layers = Array.from({ length: config.numHiddenLayers }, () => new ClipEncoderLayer(config));
  }
}

/** `CLIPTextTransformer`: embeddings, the encoder layers, final LayerNorm. */
export class ClipTextTransformer extends Module {
  embeddings: ClipTextEmbeddings;
  encoder: ClipEncoder;
  final_layer_norm: LayerNorm;

  constructor(config: ClipTextConfig) {
    super();
    this.embeddings = new ClipTextEmbeddings(config);
    this.encoder = new ClipEncoder(config);
    this.final_layer_norm = new LayerNorm(config.hiddenSize, config.layerNormEps);
  }
}

// ---------------------------------------------------------------------------------------------
// Model

/** Token ids: an int32 tensor [B, S], or rows of ids (S <= max_position_embeddings, usually 77). */
export type TokenIds = Tensor | readonly (readonly number[])[];

// A type alias (not an interface) so that tf.tidy accepts it as a TensorContainer.
export type ClipTextOutput = {
  /** [B, S, H], after final_layer_norm. */
  last_hidden_state: Tensor;
  /** [B, H]: last_hidden_state at the end-of-text token of each row. */
  pooler_output: Tensor;
  /** With `outputHiddenStates`: L + 1 tensors [B, S, H]: the embeddings, then each layer's output (no final LN). */
  hidden_states?: Tensor[];
};

/** torch.finfo(float32).min, the value transformers puts above the diagonal of the causal mask. */
const MASKED = -3.4028234663852886e38;

export class ClipTextModel extends Module {
  text_model: ClipTextTransformer;

  constructor(readonly config: ClipTextConfig) {
    super();
    this.text_model = new ClipTextTransformer(config);
  }

  /**
   * Loads a diffusers `text_encoder/` folder: `config.json` + `model.safetensors` (F32, F16 or
   * BF16; the `position_ids` buffer some files carry is skipped).
   */
  static async load(folder: string): Promise<ClipTextModel> {
    const raw = await readComponentConfig(folder, 'ClipTextModel');
    const model = new ClipTextModel(parseClipTextConfig(raw, join(folder, 'config.json')));
    await loadComponentWeights(model, folder, 'text_encoder', TRANSFORMERS_WEIGHT_FILES, (key) =>
      key.endsWith('position_ids'),
    );
    return model;
  }

  get numLayers(): number {
    return this.text_model.encoder.layers.length;
  }

  /** `CLIPTextModel(input_ids, output_hidden_states=...)` on TensorFlow.js. The caller owns the returned tensors. */
  forward(inputIds: TokenIds, { outputHiddenStates = false }: { outputHiddenStates?: boolean } = {}): ClipTextOutput {
    return tf.tidy(() => {
      const ids = this.toIdsTensor(inputIds); // [B, S]
      const { last, pooled, hidden } = this.run(tfOps, ids, ids.shape[1] as number);
      const out: ClipTextOutput = { last_hidden_state: last, pooler_output: pooled };
      if (outputHiddenStates) out.hidden_states = hidden;
      return out;
    });
  }

  /**
   * diffusers `encode_prompt`: the prompt embeddings the UNet attends to, [B, S, H].
   *   clipSkip undefined -> last_hidden_state
   *   clipSkip = k       -> final_layer_norm(hidden_states[-(k + 1)]), i.e. the output of layer
   *                         L - k (k = 1 is A1111's "CLIP skip 2"); only those layers run.
   * The caller owns the returned tensor.
   */
  encodePrompt(inputIds: TokenIds, clipSkip?: number): Tensor {
    const skip = checkClipSkip(clipSkip, this.numLayers);
    return tf.tidy(() => {
      const ids = this.toIdsTensor(inputIds);
      return this.run(tfOps, ids, ids.shape[1] as number, this.numLayers - skip).last;
    });
  }

  /**
   * The model on any executor: ids int32 [B, S] ->
   *   last    final_layer_norm of the output of the first `numLayers` layers [B, S, H]
   *   pooled  `last` at each row's end-of-text token [B, H]
   *   hidden  the embeddings and every layer's output, before the final LN (L + 1 x [B, S, H])
   */
  run<T>(o: Ops<T>, ids: T, seq: number, numLayers = this.numLayers): { last: T; pooled: T; hidden: T[] } {
    return o.scope(() => {
      const hidden: T[] = [];
      // 1. token + position embeddings.
      let h = this.text_model.embeddings.forward(o, ids, seq); // [B, S, H]
      hidden.push(h);
      // 2. causal mask: token i sees tokens 0..i.
      const mask = o.constant(causalMask(seq), [1, seq, seq]);
      // 3. the encoder layers.
      for (const layer of this.text_model.encoder.layers.slice(0, numLayers)) {
        h = layer.forward(o, h, mask);
        hidden.push(h);
      }
      // 4. final LayerNorm.
      const last = this.text_model.final_layer_norm.forward(o, h);
      return { last, pooled: this.pool(o, last, ids), hidden };
    });
  }

  /**
   * transformers 4.38 pooling: with eos_token_id == 2 (SD 1.x configs) the legacy rule takes the
   * position of the largest id in each row (CLIP's `<|endoftext|>` is the last vocab entry);
   * otherwise the first position holding eos_token_id.
   */
  private pool<T>(o: Ops<T>, last: T, ids: T): T {
    const marker = this.config.eosTokenId === 2 ? ids : o.equalTo(ids, this.config.eosTokenId);
    return o.rowAt(last, o.argMax(marker, 1)); // [B, H]
  }

  /** Checks ids and returns an int32 [B, S] tensor (a new one, or the caller's own). */
  private toIdsTensor(inputIds: TokenIds): Tensor {
    const maxPos = this.config.maxPositionEmbeddings;
    if (inputIds instanceof tf.Tensor) {
      if (inputIds.rank !== 2 || inputIds.dtype !== 'int32') {
        throw new Error(
          `ClipTextModel: input ids must be an int32 tensor [batch, tokens], got ${inputIds.dtype} [${inputIds.shape}]`,
        );
      }
      if ((inputIds.shape[1] as number) > maxPos)
        throw new Error(`ClipTextModel: ${inputIds.shape[1]} tokens exceed max_position_embeddings ${maxPos}`);
      return inputIds;
    }
    const rows = inputIds as readonly (readonly number[])[];
    const seq = rows[0]?.length ?? 0;
    if (rows.length === 0 || seq === 0)
      throw new Error('ClipTextModel: input ids are empty (expected [batch, tokens])');
    if (seq > maxPos) throw new Error(`ClipTextModel: ${seq} tokens exceed max_position_embeddings ${maxPos}`);
    const flat = new Int32Array(rows.length * seq);
    rows.forEach((row, i) => {
      if (row.length !== seq)
        throw new Error(`ClipTextModel: input id rows differ in length (row 0 has ${seq}, row ${i} has ${row.length})`);
      row.forEach((id, j) => {
        if (!Number.isInteger(id) || id < 0 || id >= this.config.vocabSize) {
          throw new Error(
            `ClipTextModel: token id ${id} at [${i}, ${j}] is outside the vocabulary [0, ${this.config.vocabSize})`,
          );
        }
        flat[i * seq + j] = id;
      });
    });
    return tf.tensor2d(flat, [rows.length, seq], 'int32');
  }
}

/** A clip skip (diffusers' meaning) checked against the number of layers; 0 when undefined. */
export function checkClipSkip(clipSkip: number | undefined, numLayers: number): number {
  const skip = clipSkip ?? 0;
  if (!Number.isInteger(skip) || skip < 0 || skip > numLayers) {
    throw new Error(
      `ClipTextModel.encodePrompt: clipSkip must be an integer in [0, ${numLayers}] (the encoder has ${numLayers} layers), got ${clipSkip}`,
    );
  }
  return skip;
}

/** [1, S, S] row-major: 0 on and below the diagonal, float32 min above it. */
function causalMask(seq: number): Float32Array {
  const m = new Float32Array(seq * seq);
  for (let i = 0; i < seq; i++) for (let j = i + 1; j < seq; j++) m[i * seq + j] = MASKED;
  return m;
}
