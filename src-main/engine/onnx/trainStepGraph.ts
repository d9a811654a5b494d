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
 *   adapter.<path>.down   the side path's down factor                             [in, r]
 *   adapter.<path>.up     the side path's up factor, the adapter's scale folded in [r, out]
 *   -> loss               L                                                       []
 *   -> grad.<path>.down   dL/d down                                               [in, r]
 *   -> grad.<path>.up     dL/d up                                                 [r, out]
 *
 * The loss weights carry everything per sample: the mean over the c*h*w elements, min-SNR's
 * w(t_i), the mean over the instance (or class) images and prior preservation's lambda (see
 * `lossWeights` in train/onnxStep.ts). The loss is emitted here with the builder, and its gradient
 * with respect to the UNet's output, dL/dpred_i = 2 c_i (pred_i - target_i), seeds the backward
 * pass; the chain from the side factors to SingLoRA's A (or LoRA's A and B) is in JS
 * (train/onnxStep.ts): a few small matrices, outside the graph.
 *
 * Gradient checkpointing wraps every UNet block in the executor's `checkpoint`, so the backward
 * pass recomputes each block's activations instead of keeping them. Training sessions are created
 * with common-subexpression elimination off (it would merge the recomputation back into the
 * forward), see `TRAINING_SESSION_EXTRA`.
 */
import type { ExecutionProvider } from '../backend/onnxRuntime.ts';
import type { ComponentFiles } from '../io/modelFiles.ts';
import type { Linear } from '../models/layers/linear.ts';
import type { WeightSource } from '../models/layers/module.ts';
import { UNet2DConditionModel, type BlockRunner } from '../models/unet2dCondition.ts';
import { bindWeights, GRAPH_VERSION, sidePathMap, type WeightFileRef } from './componentGraphs.ts';
import { GraphBuilder, type Value } from './graphBuilder.ts';
import { openGraph, type OpenedGraph } from './graphSessions.ts';
import { OnnxOps, sidePathInputs, type ComputeType, type OnnxOpsOptions } from './onnxOps.ts';

/** Output names of a side path's gradients. */
export function sideGradOutputs(path: string): { down: string; up: string } {
  return { down: `grad.${path}.down`, up: `grad.${path}.up` };
}

/** A side path's factors as the gradient executor takes them (gradOps.ts `SideFactors`). */
export interface StepSideFactors {
  readonly down: Value;
  readonly up: Value;
}

/** What the step needs of the gradient executor (onnx/gradOps.ts `GradOps`). */
export interface GradientExecutor extends OnnxOps {
  checkpoint<R extends Value | Value[]>(fn: () => R): R;
  backward(output: Value, wrt: ReadonlyMap<string, Value>, seed?: Value): Map<string, Value>;
}

export type GradientExecutorFactory = (
  options: OnnxOpsOptions & { readonly sideFactors: (path: string, layer: Linear) => StepSideFactors },
) => GradientExecutor;

export interface TrainStepGraphOptions {
  /** Compute type: float32 on the CPU; float16 on GPU providers (factors and gradients stay float32). */
  readonly dtype: ComputeType;
  /** Module paths of the adapted Linears. */
  readonly sidePaths: readonly string[];
  /**
   * The gradient executor; without one the graph computes the loss only (the forward half, which
   * also serves the fixed-noise loss).
   */
  readonly executor?: GradientExecutorFactory;
  /** Recompute each UNet block in the backward pass (needs an executor). */
  readonly checkpointing?: boolean;
  /** Attention as plain ops (default here: the backward differentiates plain ops) or fused. */
  readonly attention?: 'fused' | 'plain';
}

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
  if (options.checkpointing && !options.executor)
    throw new Error('emitTrainStep: gradient checkpointing needs the gradient executor (options.executor)');
  const cfg = unet.config;
  const g = new GraphBuilder('unet_train_step');
  const { weight, files } = bindWeights(unet, source, 'unet', g);
  const layers = sidePathMap(unet, options.sidePaths);
  const attention = options.attention ?? 'plain';

  // Side factors: graph inputs named as the inference graph names them, made in walk order.
  const factorInputs = new Map<string, StepSideFactors>();
  const shapes = new Map<string, { inFeatures: number; outFeatures: number; rank: string }>();
  const sideFactors = (path: string, layer: Linear): StepSideFactors => {
    const hit = factorInputs.get(path);
    if (hit) return hit;
    const names = sidePathInputs(path);
    const rank = `rank_${factorInputs.size}`;
    const f = {
      down: g.input(names.down, 'float32', [layer.inFeatures, rank]),
      up: g.input(names.up, 'float32', [rank, layer.outFeatures]),
    };
    factorInputs.set(path, f);
    shapes.set(path, { inFeatures: layer.inFeatures, outFeatures: layer.outFeatures, rank });
    return f;
  };
  const base = { builder: g, dtype: options.dtype, weight, attention };
  const grad = options.executor?.({ ...base, sideFactors, sidePaths: layers });
  const ops: OnnxOps = grad ?? new OnnxOps({ ...base, sidePaths: layers });

  const dims = ['batch', 'height', 'width', cfg.inChannels];
  const sample = g.input('sample', 'float32', dims);
  const timestep = g.input('timestep', 'float32', ['batch']);
  const context = g.input('encoder_hidden_states', 'float32', ['batch', 'sequence', cfg.crossAttentionDim[0]]);
  const target = g.input('target', 'float32', ['batch', 'height', 'width', cfg.outChannels]);
  const lossWeight = g.input('loss_weight', 'float32', ['batch']);

  const runBlock: BlockRunner<Value> | undefined =
    grad && options.checkpointing ? (_name, fn, inputs) => grad.checkpoint(() => fn(inputs)) : undefined;
  const pred = unet.denoise(ops, toNCHW(g, sample), timestep, ops.compute(context), runBlock); // [n, c, h, w]

  // L = sum_i c_i sum_chw (pred - target)^2, in float32.
  const diff = g.op('Sub', [ops.float32(pred), toNCHW(g, target)]); // [n, c, h, w]
  const c = g.op('Reshape', [lossWeight, g.ints([-1, 1, 1, 1])], {}, { rank: 4 }); // [n, 1, 1, 1]
  const loss = g.op('ReduceSum', [g.op('Mul', [g.op('Mul', [diff, diff]), c])], { keepdims: 0 }, { rank: 0 });
  g.output(loss, 'loss', []);
  const outputNames = ['loss'];

  if (grad) {
    // dL/dpred = 2 c (pred - target), in the UNet output's type.
    const seed = ops.compute(g.op('Mul', [diff, g.op('Mul', [c, g.constant([2], [], 'float32')])]));
    const wrt = new Map<string, Value>();
    for (const [path, f] of factorInputs) {
      wrt.set(`${path}.down`, f.down);
      wrt.set(`${path}.up`, f.up);
    }
    const grads = grad.backward(pred, wrt, seed);
    for (const [path, { inFeatures, outFeatures, rank }] of shapes) {
      const names = sideGradOutputs(path);
      for (const [which, name, dims] of [
        ['down', names.down, [inFeatures, rank]],
        ['up', names.up, [rank, outFeatures]],
      ] as const) {
        const v = grads.get(`${path}.${which}`);
        if (!v) throw new Error(`emitTrainStep: the gradient executor returned no gradient for ${path}.${which}`);
        g.output(ops.float32(v), name, dims);
        outputNames.push(name);
      }
    }
  }

  // OnnxOps (forward only) records its side paths itself.
  const side: ReadonlyMap<string, { inFeatures: number; outFeatures: number }> = grad ? shapes : ops.sideInputs;
  const sideNames = [...side.keys()].flatMap((p) => Object.values(sidePathInputs(p)));
  return {
    bytes: g.toBytes(`unet training step, graph version ${GRAPH_VERSION}`),
    files: [...files.values()],
    sidePaths: side,
    inputNames: ['sample', 'timestep', 'encoder_hidden_states', 'target', 'loss_weight', ...sideNames],
    outputNames,
    nodes: g.nodeCount,
    gradients: grad !== undefined,
  };
}

/**
 * Session options (`extra`) for training graphs: common-subexpression elimination off, so that
 * the recomputed blocks of gradient checkpointing are not merged back into the forward pass; and
 * no silent CPU fallback, so that a GPU provider that cannot run a backward node says so instead
 * of copying every step through the CPU. Keys as in onnxruntime's
 * `onnxruntime_session_options_config_keys.h` (`optimization.disable_specified_optimizers`,
 * `session.disable_cpu_ep_fallback`); the Node binding flattens the nesting with dots.
 */
export function trainingSessionExtra(providers: readonly string[]): Record<string, Record<string, string>> {
  return {
    optimization: { disable_specified_optimizers: 'CommonSubexpressionElimination' },
    ...(providers[0] !== 'cpu' ? { session: { disable_cpu_ep_fallback: '1' } } : {}),
  };
}

export interface OpenTrainStepOptions extends TrainStepGraphOptions {
  readonly providers: readonly ExecutionProvider[];
  readonly cacheDir?: string;
  readonly inMemory?: boolean;
  readonly intraOpNumThreads?: number;
}

/**
 * A session over the training step of the UNet in `files` (emitted on a cache miss and cached as
 * the inference graphs are, graphSessions.ts), with the training session options.
 */
export async function openTrainStep(files: ComponentFiles, o: OpenTrainStepOptions): Promise<OpenedGraph> {
  const attention = o.attention ?? 'plain';
  return openGraph(
    {
      kind: 'unet_train_step',
      dtype: o.dtype,
      sidePaths: o.sidePaths,
      attention,
      variant: `${o.executor ? 'gradients' : 'loss'}${o.checkpointing ? '+checkpointing' : ''}`,
      config: files.config,
      files: files.files,
      emit: () => ({
        kind: 'unet_train_step',
        ...emitTrainStep(UNet2DConditionModel.fromConfig(files.config), files.weights, { ...o, attention }),
      }),
    },
    {
      providers: o.providers,
      cacheDir: o.cacheDir,
      inMemory: o.inMemory,
      intraOpNumThreads: o.intraOpNumThreads,
      extra: trainingSessionExtra(o.providers),
    },
  );
}

const toNCHW = (g: GraphBuilder, v: Value) => g.op('Transpose', [v], { perm: [0, 3, 1, 2] });
