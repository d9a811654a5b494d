/**
 * One adapter training step as an ONNX graph: the UNet's forward pass (emitted from the one model
 * definition, `UNet2DConditionModel.denoise`), the weighted MSE loss, and the backward pass to the
 * adapters' low-rank factors (emitted by the gradient executor, gradOps.ts). The base weights are
 * external-data initializers read in place from the user's files, as the inference graphs read
 * them (componentGraphs.ts); only the adapter factors are differentiated.
 *
 *   input / output        what                                                    shape
 *   sample                z_t, the noised latents (noising stays in JS)           [n, h, w, c] NHWC
 *   timestep              t_i, float32                                            [n]
 *   encoder_hidden_states c, the text states                                      [n, S, D]
 *   target                eps, v or z_0 (scheduler.target)                        [n, h, w, c] NHWC
 *   loss_weight           c_i, so that L = sum_i c_i sum_chw (pred_i - target_i)^2 [n]
 *   loss_scale            S, the loss scale (gradient graphs; 1 in float32)        []
 *   adapter.<path>.down   the side path's down factor                             [in, r]
 *   adapter.<path>.up     the side path's up factor, the adapter's scale folded in [r, out]
 *   -> loss               L                                                       []
 *   -> grad.<path>.down   dL/d down                                               [in, r]
 *   -> grad.<path>.up     dL/d up                                                 [r, out]
 *
 * The loss weights carry everything per sample: the mean over the c*h*w elements, min-SNR's
 * w(t_i), the mean over the instance (or class) images and prior preservation's lambda (see
 * `dataFeeds` in train/onnxStep.ts). The loss is emitted here with the builder, and its gradient
 * with respect to the UNet's output, dL/dpred_i = 2 c_i (pred_i - target_i), times the loss scale
 * S, seeds the backward pass; the side gradients are divided by S in float32 (S keeps float16
 * gradients above underflow, train/lossScale.ts). The chain from the side factors to SingLoRA's A
 * (or LoRA's A and B) is in JS (train/onnxStep.ts): a few small matrices, outside the graph.
 *
 * Inputs have fixed sizes (`StepShape`): one graph per batch and latent size.
 *
 * Gradient checkpointing wraps the UNet blocks whose input holds at least CHECKPOINT_MIN_ELEMENTS
 * values per sample in the executor's `checkpoint`, so the backward pass recomputes those blocks'
 * activations instead of keeping them. Training sessions are created
 * with common-subexpression elimination off (a second guard: the executor already makes the
 * recomputation read gated inputs, so it cannot be merged back into the forward) and no silent
 * CPU fallback, see `trainingSessionExtra`.
 */
import { statSync } from 'node:fs';
import type { ExecutionProvider } from '../backend/onnxRuntime.ts';
import type { ComponentFiles } from '../io/modelFiles.ts';
import type { WeightSource } from '../models/layers/module.ts';
import { UNet2DConditionModel, type BlockRunner } from '../models/unet2dCondition.ts';
import { bindWeights, GRAPH_VERSION, sidePathMap, type WeightFileRef } from './componentGraphs.ts';
import { GRAD_VERSION, GradOps } from './gradOps.ts';
import { GraphBuilder, type GraphDim, type Value } from './graphBuilder.ts';
import { openGraph, type OpenedGraph } from './graphSessions.ts';
import { OnnxOps, sidePathInputs, type ComputeType } from './onnxOps.ts';
import type { LinearLayout } from '../../api/schemas.ts';

/** Output names of a side path's gradients. */
export function sideGradOutputs(path: string): { down: string; up: string } {
  return { down: `grad.${path}.down`, up: `grad.${path}.up` };
}

/**
 * The sizes a step graph is emitted for. Fixed sizes, not symbols: ONNX Runtime's allocation
 * planner is superlinear in a graph with symbolic dims (tiny-a's forward + backward took 11.8 s
 * to create with symbolic batch and latent sizes, 1.3 s with numbers), and a run's batch and
 * resolution do not change. The cache keeps one graph per shape.
 */
export interface StepShape {
  /** n, the samples of one micro-batch (instances + class images). */
  readonly batch: number;
  /** The latent's height and width. */
  readonly height: number;
  readonly width: number;
  /** Text tokens (77 for SD 1.x). */
  readonly tokens: number;
}

export interface TrainStepGraphOptions {
  readonly shape: StepShape;
  /** Compute type: float32 on the CPU; float16 on GPU providers (factors and gradients stay float32). */
  readonly dtype: ComputeType;
  /** Module paths of the adapted Linears. */
  readonly sidePaths: readonly string[];
  /**
   * Emit the backward pass (through GradOps) and output the side factors' gradients; false: the
   * loss only (the forward half, which also serves the fixed-noise loss).
   */
  readonly gradients: boolean;
  /** Recompute UNet blocks in the backward pass (needs `gradients`); which ones: `checkpointMinElements`. */
  readonly checkpointing?: boolean;
  /**
   * With checkpointing, the blocks recomputed: those whose input holds at least this many values
   * per sample (GradOps.checkpointBlocks; default CHECKPOINT_MIN_ELEMENTS, 0 for every block).
   */
  readonly checkpointMinElements?: number;
  /**
   * The forward's attention: plain MatMul/Softmax ops per head group, or ONNX Runtime's fused
   * MultiHeadAttention (GradOps); the backward recomputes the scores with plain ops either way.
   * `openTrainStep` picks one per provider (`trainStepAttention`); `emitTrainStep` defaults to plain.
   */
  readonly attention?: 'fused' | 'plain';
  /**
   * float32 Sin and Cos (the time embedding) as ONNX Runtime's ops or as a series (OnnxOps
   * `sinCos`); `openTrainStep` uses the series off the CPU provider; `emitTrainStep` defaults to native.
   */
  readonly sinCos?: 'native' | 'series';
  /** Attention heads computed at once, forward and backward (default: GradOps' choice from the sizes). */
  readonly attentionHeadsPerSlice?: number;
  /**
   * How a frozen Linear reads its [out, in] weight (GradOps): `matmul` (MatMul on a transposed
   * copy that ONNX Runtime folds into a second weight) or `gemm` (Gemm with transB, no copy).
   * `openTrainStep` picks one per provider (`trainStepWeightLayout`); `emitTrainStep` defaults to `matmul`.
   */
  readonly linearLayout?: LinearLayout;
  /** Attention's backward (GradOps' `attentionBackward`; default 'auto'). */
  readonly attentionBackward?: 'auto' | 'fused' | 'plain';
  /** GradOps' `flippedFilterMinPixels` (`openTrainStep` picks one per provider: `trainStepWeightLayout`). */
  readonly flippedFilterMinPixels?: number;
}

/**
 * The smallest UNet block input (values per sample, C H W) that gradient checkpointing recomputes.
 * A low-resolution block does much arithmetic per value it would keep, so it keeps its activations.
 * SD 1.5 at 256 px then recomputes down_blocks.0, up_blocks.2 and up_blocks.3 (not every block):
 * 7.0 s against 8.8 s of CPU per step, peak 4,533 MiB against 4,093 (goal 5,400); at 512 px every
 * block but the 8x8 ones: 35.9 s against 36.6 s of CPU, peak 6,450 MiB against 6,398 (goal 8 GB)
 * (docs/performance.md).
 */
export const CHECKPOINT_MIN_ELEMENTS = 100_000;

export interface TrainStepGraph {
  readonly bytes: Uint8Array;
  readonly files: readonly WeightFileRef[];
  /** Side paths in input order: module path -> [in, out]. */
  readonly sidePaths: ReadonlyMap<string, { inFeatures: number; outFeatures: number }>;
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  readonly nodes: number;
  /** True when the graph outputs the side factors' gradients. */
  readonly gradients: boolean;
}

/** Emits the training step of `unet` over the weights in `source` (see the file comment). */
export function emitTrainStep(
  unet: UNet2DConditionModel,
  source: WeightSource,
  options: TrainStepGraphOptions,
): TrainStepGraph {
  if (options.checkpointing && !options.gradients)
    throw new Error('emitTrainStep: gradient checkpointing needs the backward pass (options.gradients)');
  const cfg = unet.config;
  const g = new GraphBuilder('unet_train_step');
  const { weight, files } = bindWeights(unet, source, 'unet', g);
  const layers = sidePathMap(unet, options.sidePaths);
  const attention = options.attention ?? 'plain';

  // Side factors are graph inputs named as the inference graph names them (OnnxOps and GradOps
  // both make them, in walk order).
  const opsOptions = { builder: g, dtype: options.dtype, weight, attention, sidePaths: layers, sinCos: options.sinCos };
  const grad = options.gradients
    ? new GradOps({
        ...opsOptions,
        attentionHeadsPerSlice: options.attentionHeadsPerSlice,
        linearLayout: options.linearLayout,
        attentionBackward: options.attentionBackward,
        flippedFilterMinPixels: options.flippedFilterMinPixels,
      })
    : undefined;
  const ops: OnnxOps = grad ?? new OnnxOps(opsOptions);
  const input = (name: string, dims: readonly GraphDim[]) =>
    grad ? grad.input(name, 'float32', dims) : g.input(name, 'float32', dims);

  const { batch, height, width, tokens } = options.shape;
  const sample = input('sample', [batch, height, width, cfg.inChannels]);
  const timestep = input('timestep', [batch]);
  const context = input('encoder_hidden_states', [batch, tokens, cfg.crossAttentionDim[0]]);
  const target = input('target', [batch, height, width, cfg.outChannels]);
  const lossWeight = input('loss_weight', [batch]);
  const lossScale = grad ? input('loss_scale', []) : undefined;

  const runBlock: BlockRunner<Value> | undefined =
    grad && options.checkpointing
      ? grad.checkpointBlocks(options.checkpointMinElements ?? CHECKPOINT_MIN_ELEMENTS)
      : undefined;
  // The transpose is made outside the executor: tell it the shape, or every size downstream is a
  // symbol and the attention falls back to one head per slice and run-time broadcast searches.
  const x = toNCHW(g, sample); // [n, c, h, w]
  grad?.declare(x, [batch, cfg.inChannels, height, width]);
  const pred = unet.denoise(ops, x, timestep, ops.compute(context), runBlock); // [n, c, h, w]

  // L = sum_i c_i sum_chw (pred - target)^2, in float32.
  const diff = g.op('Sub', [ops.float32(pred), toNCHW(g, target)]); // [n, c, h, w]
  const c = g.op('Reshape', [lossWeight, g.ints([-1, 1, 1, 1])], {}, { rank: 4 }); // [n, 1, 1, 1]
  const loss = g.op('ReduceSum', [g.op('Mul', [g.op('Mul', [diff, diff]), c])], { keepdims: 0 }, { rank: 0 });
  g.output(loss, 'loss', []);
  const outputNames = ['loss'];

  if (grad && lossScale) outputNames.push(...emitSideGradients(g, grad, ops, { pred, diff, c, scale: lossScale }));

  const side = ops.sideInputs;
  const sideNames = [...side.keys()].flatMap((p) => Object.values(sidePathInputs(p)));
  return {
    bytes: g.toBytes(`unet training step, graph version ${GRAPH_VERSION}`),
    files: [...files.values()],
    sidePaths: side,
    inputNames: [
      'sample',
      'timestep',
      'encoder_hidden_states',
      'target',
      'loss_weight',
      ...(grad ? ['loss_scale'] : []),
      ...sideNames,
    ],
    outputNames,
    nodes: g.nodeCount,
    gradients: grad !== undefined,
  };
}

/**
 * The backward pass from S dL/dpred = 2 S c (pred - target) to each side path's factors, divided
 * by the loss scale S in float32, as graph outputs; returns their names in side-input order.
 */
function emitSideGradients(
  g: GraphBuilder,
  grad: GradOps,
  ops: OnnxOps,
  loss: { pred: Value; diff: Value; c: Value; scale: Value },
): string[] {
  const { pred, diff, c, scale } = loss;
  const twoS = g.op('Mul', [scale, g.constant([2], [], 'float32')]);
  const seed = ops.compute(g.op('Mul', [diff, g.op('Mul', [c, twoS])]));
  const grads = grad.vjp([[pred, seed]], grad.sideWrt());
  const outputNames: string[] = [];
  let i = 0;
  for (const [path, { inFeatures, outFeatures }] of grad.sideInputs) {
    const names = sideGradOutputs(path);
    const rank = `rank_${i++}`;
    for (const [which, name, dims] of [
      ['down', names.down, [inFeatures, rank]],
      ['up', names.up, [rank, outFeatures]],
    ] as const) {
      const v = grads.get(`${path}.${which}`);
      if (!v) throw new Error(`emitTrainStep: the gradient executor returned no gradient for ${path}.${which}`);
      g.output(g.op('Div', [ops.float32(v), scale]), name, dims);
      outputNames.push(name);
    }
  }
  return outputNames;
}

/**
 * Session options (`extra`) for training graphs: common-subexpression elimination off, so that
 * the recomputed blocks of gradient checkpointing are not merged back into the forward pass; no
 * silent CPU fallback, so that a GPU provider that cannot run a backward node says so instead
 * of copying every step through the CPU; on the CPU provider, no spinning worker threads. Keys as in onnxruntime's
 * `onnxruntime_session_options_config_keys.h` (`optimization.disable_specified_optimizers`,
 * `session.disable_cpu_ep_fallback`, `session.intra_op.allow_spinning`); the Node binding flattens the nesting with dots. ONNX Runtime
 * splits the optimizer list on ';': with ',' the whole list is one unknown name and nothing is
 * turned off (until this was found, the CPU step's NCHWc filter copies, 2.2 GiB at SD 1.5 size,
 * stayed on).
 */
export function trainingSessionExtra(
  providers: readonly string[],
  o: { readonly prepacking?: boolean; readonly disableOptimizers?: readonly string[] } = {},
): Record<string, Record<string, string>> {
  const session: Record<string, string> = {};
  if (providers[0] !== 'cpu') session.disable_cpu_ep_fallback = '1';
  // The CPU provider's worker threads block instead of spinning between ops: a step is long, and
  // on a busy machine the spinning thread took the core from the working one (tiny-b 256 px:
  // 656 -> 475 ms CPU, 663 -> 478 ms wall per step, docs/performance.md).
  else session['intra_op.allow_spinning'] = '0';
  // Prepacking keeps a second, packed copy of constant weights (session.disable_prepacking).
  if (o.prepacking === false) session.disable_prepacking = '1';
  return {
    optimization: {
      disable_specified_optimizers: ['CommonSubexpressionElimination', ...(o.disableOptimizers ?? [])].join(';'),
    },
    ...(Object.keys(session).length ? { session } : {}),
  };
}

export interface OpenTrainStepOptions extends TrainStepGraphOptions {
  readonly providers: readonly ExecutionProvider[];
  /** ONNX Runtime's weight prepacking (default on; off saves its packed copies, see trainingSessionExtra). */
  readonly prepacking?: boolean;
  /** More graph optimizers to turn off, by ONNX Runtime's names (e.g. `NchwcTransformer`, `ConstantFolding`). */
  readonly disableOptimizers?: readonly string[];
  readonly cacheDir?: string;
  readonly inMemory?: boolean;
  readonly intraOpNumThreads?: number;
}

export interface TrainStepWeightLayout {
  readonly linearLayout: LinearLayout;
  readonly prepacking: boolean;
  readonly disableOptimizers: readonly string[];
  /** GradOps' `flippedFilterMinPixels`: which convolutions' filters get a transposed, flipped copy. */
  readonly flippedFilterMinPixels: number | undefined;
}

/**
 * On the CPU provider, stride-1 convolutions over at least this many pixels (32 x 32) take their
 * input gradient from Conv on a folded, transposed and flipped copy of their filter instead of
 * ConvTranspose (which transposes the filter on every call, prepacking being off, and adds a 9x
 * column buffer and a col2im pass): about twice as fast per convolution. The copies are of the
 * high-resolution blocks' filters, the smaller ones: about 70 MiB for SD 1.5 at 256 px, 300 MiB at
 * 512 px (docs/performance.md).
 */
export const FLIPPED_FILTER_MIN_PIXELS = 1024;

/**
 * How the step holds the frozen weights, where the options leave it open. On the CPU provider,
 * each weight once: Linears through Gemm (no folded transposed copy), no prepacking (MatMul,
 * Gemm and ConvTranspose would each keep their own packed copy of the weight the forward and the
 * backward share) and no NCHWc filter reordering, so every kernel reads the weights in place from
 * the user's file. The SD 1.5 256 px step with checkpointing peaks at about 4,070 MiB this way
 * (3,279 MiB of it the mapped weights) against 7,636 MiB with MatMul, prepacking and NCHWc
 * (docs/performance.md). GPU providers keep MatMul and their own defaults (not measured there).
 */
export function trainStepWeightLayout(
  providers: readonly ExecutionProvider[],
  o: {
    readonly linearLayout?: LinearLayout;
    readonly prepacking?: boolean;
    readonly disableOptimizers?: readonly string[];
    readonly flippedFilterMinPixels?: number;
  },
): TrainStepWeightLayout {
  const cpu = providers[0] === 'cpu';
  return {
    linearLayout: o.linearLayout ?? (cpu ? 'gemm' : 'matmul'),
    prepacking: o.prepacking ?? !cpu,
    disableOptimizers: o.disableOptimizers ?? (cpu ? ['NchwcTransformer'] : []),
    flippedFilterMinPixels: o.flippedFilterMinPixels ?? (cpu ? FLIPPED_FILTER_MIN_PIXELS : undefined),
  };
}

/**
 * The forward's attention where the options leave it open: fused on the CPU provider in float32
 * (MultiHeadAttention took 2.2-2.6x less CPU time than the plain ops for one attention of tiny-b
 * and of SD 1.5 at 512 px, docs/performance.md), plain elsewhere (not measured on GPU providers).
 */
export function trainStepAttention(
  providers: readonly ExecutionProvider[],
  dtype: ComputeType,
  attention?: 'fused' | 'plain',
): 'fused' | 'plain' {
  return attention ?? (providers[0] === 'cpu' && dtype === 'float32' ? 'fused' : 'plain');
}

/**
 * ONNX Runtime's memory pattern for a training session: off on the CPU provider. With it, the
 * second and later runs allocate one block planned for all of a run's intermediates, larger than
 * what the first run held at once: SD 1.5 at 512 px with checkpointing peaked at 8,003 MiB over two
 * steps with it, 6,718 MiB without, at the same speed (14.8-15.2 s per step, 28.4-29.0 s CPU;
 * docs/performance.md). The default elsewhere (not measured on GPU providers).
 */
export function trainStepMemPattern(providers: readonly ExecutionProvider[]): boolean | undefined {
  return providers[0] === 'cpu' ? false : undefined;
}

/** Weights below which a CPU training session keeps ONNX Runtime's arena on (`trainStepArena`). */
export const SMALL_MODEL_BYTES = 2 ** 30;

/**
 * ONNX Runtime's CPU arena for a training session: on for a small model on the CPU provider, else
 * the process default (off unless SINGLORA_ORT_ARENA=1; SINGLORA_ORT_ARENA=0 turns it off for small
 * models too). The arena keeps the step's buffers from one run to the next instead of faulting
 * fresh pages in each step: tiny-b's 256 px step took half the wall time with it on this machine
 * for 150 MiB more, but SD 1.5's 512 px step held 9,279 MiB with it against 6,398 (over the 8 GB
 * goal), so a large model keeps it off (docs/performance.md).
 */
export function trainStepArena(
  providers: readonly ExecutionProvider[],
  weightBytes: number,
  env: NodeJS.ProcessEnv = process.env,
): boolean | undefined {
  if (providers[0] !== 'cpu' || env.SINGLORA_ORT_ARENA !== undefined) return undefined;
  return weightBytes < SMALL_MODEL_BYTES ? true : undefined;
}

/**
 * A session over the training step of the UNet in `files` (emitted on a cache miss and cached as
 * the inference graphs are, graphSessions.ts), with the training session options and the weight
 * layout of `trainStepWeightLayout`.
 */
export async function openTrainStep(files: ComponentFiles, options: OpenTrainStepOptions): Promise<OpenedGraph> {
  const o = { ...options, ...trainStepWeightLayout(options.providers, options) };
  const attention = trainStepAttention(o.providers, o.dtype, o.attention);
  // WebGPU (and possibly other GPU providers) compute Sin and Cos with relaxed precision.
  const sinCos = o.sinCos ?? (o.providers[0] === 'cpu' ? 'native' : 'series');
  return openGraph(
    {
      kind: 'unet_train_step',
      dtype: o.dtype,
      sidePaths: o.sidePaths,
      attention,
      variant: `${o.gradients ? 'gradients' : 'loss'}${o.checkpointing ? `+checkpointing>=${o.checkpointMinElements ?? CHECKPOINT_MIN_ELEMENTS}` : ''} ${shapeKey(o.shape)} heads/slice ${o.attentionHeadsPerSlice ?? 'auto'} attention backward ${o.attentionBackward ?? 'auto'} flipped filters >= ${o.flippedFilterMinPixels ?? 'none'} px ${o.linearLayout} sin/cos ${sinCos} grad v${GRAD_VERSION}`,
      config: files.config,
      files: files.files,
      emit: () => ({
        kind: 'unet_train_step',
        ...emitTrainStep(UNet2DConditionModel.fromConfig(files.config), files.weights, { ...o, attention, sinCos }),
      }),
    },
    {
      providers: o.providers,
      cacheDir: o.cacheDir,
      inMemory: o.inMemory,
      intraOpNumThreads: o.intraOpNumThreads,
      memPattern: trainStepMemPattern(o.providers),
      cpuArena: trainStepArena(
        o.providers,
        files.files.reduce((n, f) => n + statSync(f).size, 0),
      ),
      extra: trainingSessionExtra(o.providers, { prepacking: o.prepacking, disableOptimizers: o.disableOptimizers }),
    },
  );
}

/** `n x h x w x tokens`. */
export function shapeKey(s: StepShape): string {
  return `${s.batch}x${s.height}x${s.width}x${s.tokens}`;
}

const toNCHW = (g: GraphBuilder, v: Value) => g.op('Transpose', [v], { perm: [0, 3, 1, 2] });
