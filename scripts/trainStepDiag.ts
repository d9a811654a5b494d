/**
 * What the training-step diagnostics (scripts/profile-train-step.ts, scripts/diag-train-memory.ts)
 * share: their command-line reading, the attention projections they train, and the step graph as
 * `singlora train` emits it on the CPU provider (its weight layout and attention), so that both
 * measure the product's graph unless told otherwise.
 */
import type { WeightSource } from '../src-main/engine/io/weightSource.ts';
import type { UNet2DConditionModel } from '../src-main/engine/models/unet2dCondition.ts';
import {
  emitTrainStep,
  type TrainStepGraph,
  type TrainStepGraphOptions,
  trainStepAttention,
  trainStepWeightLayout,
} from '../src-main/engine/onnx/trainStepGraph.ts';

/** The value after `--name` on the command line, else `fallback`. */
export function arg(name: string, fallback?: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i < 0 ? fallback : process.argv[i + 1];
}

/** Whether `--name` is on the command line. */
export const flag = (name: string): boolean => process.argv.includes(`--${name}`);

/** The module paths of every attention projection (`to_q`, `to_k`, `to_v`, `to_out.0` of attn1/attn2). */
export function attentionSidePaths(unet: UNet2DConditionModel): string[] {
  return [...unet.namedModules()].filter(([p]) => /attn[12]\.(to_q|to_k|to_v|to_out\.0)$/.test(p)).map(([p]) => p);
}

/**
 * The float32 training step (loss and gradients) of one 77-token sample at `resolution` px, with
 * the CPU provider's defaults for what `overrides` leaves out.
 */
export function emitCpuTrainStep(
  unet: UNet2DConditionModel,
  source: WeightSource,
  resolution: number,
  overrides: Partial<TrainStepGraphOptions> = {},
): TrainStepGraph {
  const layout = trainStepWeightLayout(['cpu'], overrides);
  return emitTrainStep(unet, source, {
    shape: { batch: 1, height: resolution / 8, width: resolution / 8, tokens: 77 },
    dtype: 'float32',
    sidePaths: attentionSidePaths(unet),
    gradients: true,
    linearLayout: layout.linearLayout,
    flippedFilterMinPixels: layout.flippedFilterMinPixels,
    ...overrides,
    attention: trainStepAttention(['cpu'], 'float32', overrides.attention),
  });
}
