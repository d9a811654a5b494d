/**
 * The ONNX Runtime inference executor: the components run as ONNX Runtime sessions
 * (onnx/onnxDiffusion.ts), adapters as side-path inputs of the graphs. Everything it takes and
 * returns is a plain array, and adapter plans give it low-rank factors (their dense dW, a
 * TensorFlow.js tensor, is never computed here), so this path loads no TensorFlow.js.
 */
import {
  adapterSummary,
  PartialAdapterError,
  planAdapter,
  type AdapterPlan,
  type ImportReport,
} from '../adapters/import.ts';
import type { RawConfig } from '../io/keyMap.ts';
import { ClipTextModel, parseClipTextConfig } from '../models/clipTextModel.ts';
import type { ClipTokenizer } from '../models/clipTokenizer.ts';
import { UNet2DConditionModel } from '../models/unet2dCondition.ts';
import type { OnnxDiffusion } from '../onnx/onnxDiffusion.ts';
import type { ComputeType } from '../onnx/onnxOps.ts';
import type { ProviderChoice } from '../onnx/providers.ts';
import type {
  AdapterRequest,
  ComponentKind,
  ExecutionInfo,
  HostArray,
  InferenceExecutor,
  LatentDistributionArrays,
  TextContext,
} from './inferenceExecutor.ts';
import { combineChunks, promptRows } from './prompts.ts';

export interface OnnxExecutorParts {
  readonly tokenizer: ClipTokenizer;
  readonly configs: Readonly<Record<ComponentKind, RawConfig>>;
  /** The sessions, opened on first use (shared with training previews). */
  readonly sessions: () => Promise<OnnxDiffusion>;
  /** The sessions if they were opened, without opening them. */
  readonly openedSessions: () => OnnxDiffusion | null;
  readonly provider: ProviderChoice;
  readonly dtype?: ComputeType;
}

/** Prompt embeddings kept as the UNet's `encoder_hidden_states` feed for every step of a run. */
class OnnxTextContext implements TextContext {
  constructor(readonly feed: HostArray) {}
  get dims(): readonly number[] {
    return this.feed.dims;
  }
  dispose(): void {}
}

export class OnnxExecutor implements InferenceExecutor {
  readonly engine = 'onnx' as const;
  private plans: AdapterPlan[] = [];
  /** Module trees (weights not loaded) for naming adapter targets. */
  private targetTrees: { unet: UNet2DConditionModel; textEncoder: ClipTextModel } | null = null;

  constructor(private readonly parts: OnnxExecutorParts) {}

  async encodeText(prompts: readonly string[], clipSkip?: number): Promise<HostArray> {
    // A1111's long prompts and emphasis, as the TensorFlow.js executor reads them (prompts.ts).
    const { tokenizer } = this.parts;
    const rows = promptRows(tokenizer, prompts);
    const { promptEmbeds } = await (await this.parts.sessions()).encodeText(
      rows.map((r) => r.ids),
      clipSkip || undefined,
    );
    return combineChunks(promptEmbeds.data, rows, prompts.length, tokenizer.modelMaxLength);
  }

  holdContext(embeds: HostArray): TextContext {
    return new OnnxTextContext(embeds);
  }

  async predictNoise(sample: HostArray, t: number, context: TextContext): Promise<HostArray> {
    if (!(context instanceof OnnxTextContext))
      throw new Error('OnnxExecutor.predictNoise: the context was not made by this executor (holdContext)');
    const b = sample.dims[0];
    return (await this.parts.sessions()).predictNoise(sample, Array(b).fill(t), context.feed);
  }

  async decodeLatents(z: HostArray): Promise<HostArray> {
    return (await this.parts.sessions()).decode(z);
  }

  async encodeImage(x: HostArray): Promise<LatentDistributionArrays> {
    return (await this.parts.sessions()).encode(x);
  }

  async setAdapters(uses: readonly AdapterRequest[]): Promise<ImportReport[]> {
    this.clearAdapters();
    if (!uses.length) return [];
    const targets = this.adapterTargets();
    const reports: ImportReport[] = [];
    for (const use of uses) {
      const plan = await planAdapter(use.path, targets, use.strength, { allowPartial: use.allowPartial });
      this.plans.push(plan);
      const report = onnxReport(plan);
      if (report.unapplied.length && !use.allowPartial) {
        this.clearAdapters();
        throw new PartialAdapterError(report);
      }
      reports.push(report);
    }
    (await this.parts.sessions()).setAdapters(
      this.plans.flatMap((p) => p.deltas.flatMap((d) => (d.factors ? [d.factors] : []))),
    );
    return reports;
  }

  clearAdapters(): void {
    for (const p of this.plans) p.dispose();
    this.plans = [];
    this.parts.openedSessions()?.setAdapters([]);
  }

  async describe(): Promise<ExecutionInfo> {
    const unet = (await this.parts.sessions()).opened.filter((o) => o.kind === 'unet').at(-1);
    return unet
      ? { engine: 'onnx', provider: unet.providers, dtype: unet.dtype }
      : { engine: 'onnx', provider: this.parts.provider, dtype: this.parts.dtype ?? 'float32' };
  }

  async release(kind?: ComponentKind): Promise<void> {
    const sessions = this.parts.openedSessions();
    if (!sessions) return;
    if (!kind) await sessions.release();
    else if (kind === 'unet') await sessions.release('unet');
    else if (kind === 'textEncoder') await sessions.release('text_encoder');
    else await Promise.all([sessions.release('vae_encoder'), sessions.release('vae_decoder')]);
  }

  /** Clears the adapters; the sessions belong to `StableDiffusion`, which releases them. */
  dispose(): void {
    this.clearAdapters();
  }

  private adapterTargets(): { unet: UNet2DConditionModel; textEncoder: ClipTextModel } {
    this.targetTrees ??= {
      unet: UNet2DConditionModel.fromConfig(this.parts.configs.unet),
      textEncoder: new ClipTextModel(parseClipTextConfig(this.parts.configs.textEncoder)),
    };
    return this.targetTrees;
  }
}

/** The report of a plan as the onnx engine applies it: convolution targets are not side paths. */
function onnxReport(plan: AdapterPlan): ImportReport {
  const skipped = plan.deltas.filter((d) => !d.factors);
  if (!skipped.length) return plan.report;
  const r = plan.report;
  const skippedKeys = skipped.flatMap((d) => d.keys);
  const applied = r.appliedTensors - skippedKeys.length;
  const modules = r.modules - skipped.length;
  return {
    ...r,
    appliedTensors: applied,
    modules,
    unapplied: [
      ...r.unapplied,
      ...skippedKeys.map((key) => ({
        key,
        reason:
          'a convolution (LoCon) target: the onnx engine adapts Linear layers only; use --engine tfjs for this file',
      })),
    ],
    summary: adapterSummary(r.file, applied, r.totalTensors, modules),
  };
}
