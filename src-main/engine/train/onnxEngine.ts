/**
 * The ONNX Runtime training engine of `train` (trainer.ts): the session over the UNet's training
 * step (onnx/trainStepGraph.ts, weights read in place from the base model's files), the adapter
 * tensors and AdamW moments as Float32Arrays (train/onnxStep.ts), and the fixed-noise loss on a
 * loss-only graph of the same UNet.
 *
 * The AdapterSet that `train` injects into a weightless UNet tree stays the owner of the initial
 * values, the adapter file format and the previews' side factors: `syncAdapters()` copies the
 * trained arrays into it before a checkpoint or a preview.
 *
 * Providers: a GPU provider is asked alone (no CPU provider after it) and training sessions
 * refuse a silent CPU fallback (`trainingSessionExtra`), so a GPU provider that cannot run a
 * backward node fails to start, naming the node, and the next candidate (finally the CPU) is
 * tried. The compute type is float16 on a GPU provider (then float32 if that fails) and float32
 * on the CPU; adapter factors, their gradients and the optimizer state are float32 throughout,
 * and float16 steps scale the loss dynamically (train/lossScale.ts), its state checkpointed with
 * AdamW's.
 */
import type { ExecutionProvider } from '../backend/onnxRuntime.ts';
import type { AdapterSet } from '../adapters/adapterSet.ts';
import { openBaseModel, type OpenBaseModelOptions } from '../io/modelFiles.ts';
import type { OpenedGraph } from '../onnx/graphSessions.ts';
import type { ComputeType } from '../onnx/onnxOps.ts';
import { defaultComputeType, providerCandidates, type ProviderChoice, trainingProviders } from '../onnx/providers.ts';
import { openTrainStep, shapeKey, type StepShape } from '../onnx/trainStepGraph.ts';
import type { DDPMScheduler } from '../schedulers/ddpmScheduler.ts';
import type { AdamWConfig, AdamWState } from './adamw.ts';
import { LossScale, type LossScaleState } from './lossScale.ts';
import {
  AdamWArrays,
  type AdapterArrays,
  adapterArraysOf,
  adapterValuesFor,
  type OnnxMicroBatch,
  onnxLoss,
  type OnnxStepOptions,
  type OnnxStepResult,
  onnxTrainStep,
  stepShapeOf,
} from './onnxStep.ts';

export interface OnnxTrainingOptions {
  readonly provider: ProviderChoice;
  readonly dtype?: ComputeType;
  readonly checkpointing: boolean;
  readonly cacheDir?: string;
}

export class OnnxTrainingEngine {
  private train: { opened: OpenedGraph; shape: string } | null = null;
  /** The providers and compute type the first session started on; later sessions use the same. */
  private chosen: { providers: ExecutionProvider[]; dtype: ComputeType } | null = null;
  private scaler: LossScale | undefined;
  private resumedScale: LossScaleState | undefined;

  private constructor(
    private readonly base: string,
    private readonly openOptions: OpenBaseModelOptions,
    private readonly options: OnnxTrainingOptions,
    private readonly scheduler: DDPMScheduler,
    private readonly set: AdapterSet,
    readonly adapters: AdapterArrays,
    readonly optimizer: AdamWArrays,
  ) {}

  /** The engine over `set`'s current values (after any resume assignment), with fresh AdamW moments. */
  static async create(
    base: string,
    openOptions: OpenBaseModelOptions,
    options: OnnxTrainingOptions,
    scheduler: DDPMScheduler,
    set: AdapterSet,
    adamw: AdamWConfig,
  ): Promise<OnnxTrainingEngine> {
    const adapters = await adapterArraysOf(set);
    return new OnnxTrainingEngine(
      base,
      openOptions,
      options,
      scheduler,
      set,
      adapters,
      new AdamWArrays(adapters.params, adamw),
    );
  }

  /** Where the sessions run (the provider, e.g. 'webgpu', and the compute type); null before the first session. */
  get placement(): { provider: string; dtype: ComputeType } | null {
    return this.chosen ? { provider: this.chosen.providers.join('+'), dtype: this.chosen.dtype } : null;
  }

  async step(batches: readonly OnnxMicroBatch[], o: OnnxStepOptions): Promise<OnnxStepResult> {
    const shape = stepShapeOf(batches[0]);
    if (this.train?.shape !== shapeKey(shape)) {
      await this.releaseTraining();
      this.train = { opened: await this.open(true, shape), shape: shapeKey(shape) };
    }
    return onnxTrainStep(
      {
        session: this.train.opened.session,
        scheduler: this.scheduler,
        adapters: this.adapters,
        optimizer: this.optimizer,
        lossScale: this.lossScale(),
      },
      batches,
      o,
    );
  }

  /**
   * The mean loss over `samples` (each one sample, equal sizes, so the mean of their means is the
   * mean over all elements), on a loss-only graph opened for this call and released after it, with
   * the training session released first: one copy of the UNet's weights at a time.
   */
  async meanLoss(samples: readonly OnnxMicroBatch[], step: number): Promise<number> {
    await this.releaseTraining();
    const opened = await this.open(false, stepShapeOf(samples[0]));
    try {
      let sum = 0;
      for (const s of samples)
        sum += await onnxLoss({ session: opened.session, scheduler: this.scheduler, adapters: this.adapters }, s, {
          step,
          minSnrGamma: null,
          priorLossWeight: 1,
        });
      return sum / samples.length;
    } finally {
      await opened.session.release();
    }
  }

  /** Copies the trained arrays into the AdapterSet (before saving it or sampling with it). */
  syncAdapters(): void {
    this.set.assign(adapterValuesFor(this.adapters, this.set));
  }

  /** AdamW's state, with the loss scale's once float16 steps have run. */
  optimizerState(): AdamWState {
    return { ...this.optimizer.state(), lossScale: this.scaler?.state() };
  }

  loadOptimizer(state: AdamWState): void {
    this.optimizer.load(state);
    this.resumedScale = state.lossScale;
  }

  /** float16 steps: the dynamic scale (from the checkpoint when resumed); float32: none (1). */
  private lossScale(): LossScale | undefined {
    if (this.chosen?.dtype !== 'float16') return undefined;
    if (!this.scaler) {
      this.scaler = LossScale.dynamic();
      if (this.resumedScale) this.scaler.load(this.resumedScale);
    }
    return this.scaler;
  }

  async releaseTraining(): Promise<void> {
    await this.train?.opened.session.release();
    this.train = null;
  }

  private async open(gradients: boolean, shape: StepShape): Promise<OpenedGraph> {
    const base = await openBaseModel(this.base, this.openOptions);
    try {
      const lists = this.chosen ? [this.chosen.providers] : await providerCandidates(this.options.provider);
      const errors: string[] = [];
      for (const list of lists) {
        const providers = trainingProviders(list);
        const dtypes: ComputeType[] = this.chosen
          ? [this.chosen.dtype]
          : this.options.dtype
            ? [this.options.dtype]
            : [...new Set([defaultComputeType(providers), 'float32' as const])];
        for (const dtype of dtypes) {
          try {
            const opened = await openTrainStep(base.unet, {
              dtype,
              shape,
              sidePaths: this.adapters.layers.map((l) => l.path),
              providers,
              checkpointing: gradients && this.options.checkpointing,
              gradients,
              cacheDir: this.options.cacheDir,
            });
            this.chosen = { providers, dtype };
            return opened;
          } catch (err) {
            errors.push(`${providers[0]} (${dtype}): ${(err as Error).message}`);
          }
        }
      }
      throw new Error(
        `ONNX Runtime could not start the training step on any provider (${this.options.provider}):\n  ${errors.join('\n  ')}`,
      );
    } finally {
      await base.close();
    }
  }
}
