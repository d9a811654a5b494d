/**
 * The ONNX graphs of the SD 1.x components, emitted from the one model definition in
 * `engine/models` by running its forward with the ONNX executor (onnxOps.ts).
 *
 *   graph          inputs (float32 unless noted)                           outputs (float32)
 *   unet           sample [B, H, W, C] NHWC, timestep [B],                 noise_pred [B, H, W, C]
 *                  encoder_hidden_states [B, S, D], adapter side paths
 *   vae_encoder    image [B, H, W, 3] in [-1, 1]                           mean, logvar, std [B, h, w, 4]
 *   vae_decoder    latent [B, h, w, 4] (unscaled)                          image [B, H, W, 3] (not clamped)
 *   text_encoder   input_ids int32 [B, 77], skip_index int64 [],          last_hidden_state, pooler_output,
 *                  adapter side paths                                      hidden_states [L+1, B, 77, H],
 *                                                                          prompt_embeds [B, 77, H]
 *
 * Graph I/O is NHWC, as the rest of the engine; inside the graph images are NCHW.
 * `prompt_embeds` is final_layer_norm(hidden_states[skip_index]), so one session serves every
 * clip skip (skip_index = L - clip_skip).
 *
 * Weights are external-data initializers that name a file (relative to the graph's folder), an
 * offset and a length: the tensors inside the user's safetensors files, read in place.
 */
import { basename } from 'node:path';
import type { AutoencoderKL } from '../models/autoencoderKL.ts';
import type { ClipTextModel } from '../models/clipTextModel.ts';
import { Linear } from '../models/layers/linear.ts';
import { checkParams, type Module, type Param, type WeightSource } from '../models/layers/module.ts';
import type { UNet2DConditionModel } from '../models/unet2dCondition.ts';
import { elemTypeOfSafetensors, GraphBuilder, type Value } from './graphBuilder.ts';
import { OnnxOps, sidePathInputs, type ComputeType } from './onnxOps.ts';

/** Bumped whenever emitted graphs change, so cached graph files are rebuilt. */
export const GRAPH_VERSION = 2;

/** The inference components, and the UNet's training step (trainStepGraph.ts). */
export type GraphKind = 'unet' | 'vae_encoder' | 'vae_decoder' | 'text_encoder' | 'unet_train_step';

/** One weight file a graph reads, under the name the graph gives it. */
export interface WeightFileRef {
  /** The user's file. */
  readonly path: string;
  /** The external-data location written in the graph (a plain file name). */
  readonly location: string;
}

export interface EmittedGraph {
  readonly kind: GraphKind;
  readonly bytes: Uint8Array;
  readonly files: readonly WeightFileRef[];
  /** Side paths: module path -> [in, out]. */
  readonly sidePaths: ReadonlyMap<string, { inFeatures: number; outFeatures: number }>;
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  readonly nodes: number;
}

export interface EmitOptions {
  readonly dtype: ComputeType;
  /** Module paths of the Linears that get adapter side paths (must be Linear layers). */
  readonly sidePaths?: readonly string[];
  /** Attention as ONNX Runtime's fused MultiHeadAttention (default) or plain ops (onnxOps.ts). */
  readonly attention?: 'fused' | 'plain';
}

/**
 * Binds every Param of `model` to an external initializer over `source` (strict: missing,
 * unexpected and mis-shaped keys fail as `loadParams` does). Also used by the training step's
 * graph (trainStepGraph.ts).
 */
export function bindWeights(
  model: Module,
  source: WeightSource,
  component: string,
  builder: GraphBuilder,
): { weight: (p: Param) => Value; files: Map<string, WeightFileRef> } {
  const params = checkParams(model, source, component, (key) => key.endsWith('position_ids'));
  if (!source.locate)
    throw new Error(
      `${component} (${source.description}): these weights are not in files, so an ONNX graph cannot read them in place`,
    );
  const files = new Map<string, WeightFileRef>();
  const keyOf = new Map<Param, string>();
  for (const [key, p] of params) keyOf.set(p, key);
  const made = new Map<Param, Value>();
  const weight = (p: Param): Value => {
    const hit = made.get(p);
    if (hit) return hit;
    const key = keyOf.get(p);
    if (key === undefined)
      throw new Error(`${component}: a parameter of shape [${p.shape}] is not part of the model's state dict`);
    const loc = source.locate!(key)!;
    const type = elemTypeOfSafetensors(loc.dtype);
    if (!type)
      throw new Error(`${component}: ${key} in ${loc.file} is ${loc.dtype}; ONNX graphs read F32, F16 or BF16 weights`);
    let ref = files.get(loc.file);
    if (!ref) {
      ref = { path: loc.file, location: `w${files.size}-${basename(loc.file).replace(/[^A-Za-z0-9._-]/g, '_')}` };
      files.set(loc.file, ref);
    }
    const v = builder.external(`${component}.${key}`, type, p.shape, {
      location: ref.location,
      offset: loc.begin,
      length: loc.end - loc.begin,
    });
    made.set(p, v);
    return v;
  };
  return { weight, files };
}

/** The Linear layers at `paths` (each must be one), keyed by layer. */
export function sidePathMap(model: Module, paths: readonly string[] = []): Map<Linear, string> {
  const byPath = new Map<string, Linear>();
  for (const [p, m] of model.namedModules()) if (m instanceof Linear) byPath.set(p, m);
  const out = new Map<Linear, string>();
  for (const p of paths) {
    const lin = byPath.get(p);
    if (!lin) throw new Error(`adapter side path '${p}': no Linear layer at that path`);
    out.set(lin, p);
  }
  return out;
}

/** A builder for `kind`, with `model`'s weights bound in place and the ONNX executor over them. */
function start(
  kind: GraphKind,
  model: Module,
  source: WeightSource,
  component: string,
  options: EmitOptions,
  side = false,
): { g: GraphBuilder; ops: OnnxOps; files: Map<string, WeightFileRef> } {
  const g = new GraphBuilder(kind);
  const { weight, files } = bindWeights(model, source, component, g);
  const ops = new OnnxOps({
    builder: g,
    dtype: options.dtype,
    weight,
    sidePaths: side ? sidePathMap(model, options.sidePaths) : undefined,
    attention: options.attention,
  });
  return { g, ops, files };
}

function finish(
  kind: GraphKind,
  g: GraphBuilder,
  ops: OnnxOps,
  files: Map<string, WeightFileRef>,
  inputs: string[],
  outputs: string[],
): EmittedGraph {
  const sideNames = [...ops.sideInputs.keys()].flatMap((p) => Object.values(sidePathInputs(p)));
  return {
    kind,
    bytes: g.toBytes(`${kind}, graph version ${GRAPH_VERSION}`),
    files: [...files.values()],
    sidePaths: ops.sideInputs,
    inputNames: [...inputs, ...sideNames],
    outputNames: outputs,
    nodes: g.nodeCount,
  };
}

const toNCHW = (g: GraphBuilder, v: Value) => g.op('Transpose', [v], { perm: [0, 3, 1, 2] });
const toNHWC = (g: GraphBuilder, v: Value) => g.op('Transpose', [v], { perm: [0, 2, 3, 1] });

export function emitUNet(unet: UNet2DConditionModel, source: WeightSource, options: EmitOptions): EmittedGraph {
  const cfg = unet.config;
  const { g, ops, files } = start('unet', unet, source, 'unet', options, true);
  const sample = g.input('sample', 'float32', ['batch', 'height', 'width', cfg.inChannels]);
  const timestep = g.input('timestep', 'float32', ['batch']);
  const context = g.input('encoder_hidden_states', 'float32', ['batch', 'sequence', cfg.crossAttentionDim[0]]);
  const out = unet.denoise(ops, toNCHW(g, sample), timestep, ops.compute(context));
  g.output(ops.float32(toNHWC(g, out)), 'noise_pred', ['batch', 'height', 'width', cfg.outChannels]);
  return finish('unet', g, ops, files, ['sample', 'timestep', 'encoder_hidden_states'], ['noise_pred']);
}

export function emitVaeEncoder(vae: AutoencoderKL, source: WeightSource, options: EmitOptions): EmittedGraph {
  const cfg = vae.config;
  const { g, ops, files } = start('vae_encoder', vae, source, 'vae', options);
  const image = g.input('image', 'float32', ['batch', 'height', 'width', cfg.inChannels]);
  const { mean, logvar, std } = vae.encodeWith(ops, toNCHW(g, image));
  const dims = ['batch', 'latent_height', 'latent_width', cfg.latentChannels];
  g.output(ops.float32(toNHWC(g, mean)), 'mean', dims);
  g.output(ops.float32(toNHWC(g, logvar)), 'logvar', dims);
  g.output(ops.float32(toNHWC(g, std)), 'std', dims);
  return finish('vae_encoder', g, ops, files, ['image'], ['mean', 'logvar', 'std']);
}

export function emitVaeDecoder(vae: AutoencoderKL, source: WeightSource, options: EmitOptions): EmittedGraph {
  const cfg = vae.config;
  const { g, ops, files } = start('vae_decoder', vae, source, 'vae', options);
  const latent = g.input('latent', 'float32', ['batch', 'latent_height', 'latent_width', cfg.latentChannels]);
  const image = vae.decodeWith(ops, toNCHW(g, latent));
  g.output(ops.float32(toNHWC(g, image)), 'image', ['batch', 'height', 'width', cfg.outChannels]);
  return finish('vae_decoder', g, ops, files, ['latent'], ['image']);
}

export function emitTextEncoder(text: ClipTextModel, source: WeightSource, options: EmitOptions): EmittedGraph {
  const cfg = text.config;
  const seq = cfg.maxPositionEmbeddings;
  const hiddenSize = cfg.hiddenSize;
  const { g, ops, files } = start('text_encoder', text, source, 'text_encoder', options, true);
  const ids = g.input('input_ids', 'int32', ['batch', seq]);
  const skipIndex = g.input('skip_index', 'int64', []);
  const { last, pooled, hidden } = text.run(ops, ids, seq);
  const stacked = g.op(
    'Concat',
    hidden.map((h) => g.op('Unsqueeze', [h, g.ints([0])], {}, { rank: 4 })),
    { axis: 0 },
  ); // [L+1, B, S, H]
  const chosen = g.op('Gather', [stacked, skipIndex], { axis: 0 }, { rank: 3 }); // [B, S, H]
  const promptEmbeds = ops.layerNorm(chosen, text.text_model.final_layer_norm);
  g.output(ops.float32(last), 'last_hidden_state', ['batch', seq, hiddenSize]);
  g.output(ops.float32(pooled), 'pooler_output', ['batch', hiddenSize]);
  g.output(ops.float32(stacked), 'hidden_states', [text.numLayers + 1, 'batch', seq, hiddenSize]);
  g.output(ops.float32(promptEmbeds), 'prompt_embeds', ['batch', seq, hiddenSize]);
  return finish(
    'text_encoder',
    g,
    ops,
    files,
    ['input_ids', 'skip_index'],
    ['last_hidden_state', 'pooler_output', 'hidden_states', 'prompt_embeds'],
  );
}
