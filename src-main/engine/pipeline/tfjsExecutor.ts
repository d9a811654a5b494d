/**
 * The TensorFlow.js inference executor: the components are the TensorFlow.js modules training uses
 * (loaded by `StableDiffusion`), adapters are weight patches restored exactly by `clearAdapters`.
 * Arrays cross into tensors here, at the boundary, and nowhere else on the sampling path.
 */
import { planAdapter, type AdapterPlan, type ImportReport } from '../adapters/import.ts';
import { WeightPatcher } from '../adapters/patch.ts';
import { tf, type Tensor } from '../backend/tf.ts';
import type { AutoencoderKL } from '../models/autoencoderKL.ts';
import type { ClipTextModel } from '../models/clipTextModel.ts';
import type { UNet2DConditionModel } from '../models/unet2dCondition.ts';
import type {
  AdapterRequest,
  ComponentKind,
  ExecutionInfo,
  HostArray,
  InferenceExecutor,
  LatentDistributionArrays,
  TextContext,
} from './inferenceExecutor.ts';

/** What the executor needs of `StableDiffusion`: its modules, loaded on demand. */
export interface TfjsModules {
  ensure(...kinds: ComponentKind[]): Promise<void>;
  readonly unet: UNet2DConditionModel;
  readonly vae: AutoencoderKL;
  readonly textEncoder: ClipTextModel;
  /** Prompt embeddings [B, chunks * 77, hidden] as a tensor the caller owns (prompts.ts). */
  encodePrompts(prompts: readonly string[], clipSkip?: number): Promise<Tensor>;
}

/** Prompt embeddings kept as one tensor for every step of a run. */
class TfjsTextContext implements TextContext {
  constructor(readonly tensor: Tensor) {}
  get dims(): readonly number[] {
    return this.tensor.shape;
  }
  dispose(): void {
    this.tensor.dispose();
  }
}

export class TfjsExecutor implements InferenceExecutor {
  readonly engine = 'tfjs' as const;
  private readonly patcher = new WeightPatcher();
  private plans: AdapterPlan[] = [];

  constructor(private readonly modules: TfjsModules) {}

  async encodeText(prompts: readonly string[], clipSkip?: number): Promise<HostArray> {
    await this.modules.ensure('textEncoder');
    return toArray(await this.modules.encodePrompts(prompts, clipSkip));
  }

  holdContext(embeds: HostArray): TextContext {
    return new TfjsTextContext(toTensor(embeds));
  }

  async predictNoise(sample: HostArray, t: number, context: TextContext): Promise<HostArray> {
    if (!(context instanceof TfjsTextContext))
      throw new Error('TfjsExecutor.predictNoise: the context was not made by this executor (holdContext)');
    await this.modules.ensure('unet');
    const x = toTensor(sample);
    try {
      return await toArray(this.modules.unet.forward(x, t, context.tensor));
    } finally {
      x.dispose();
    }
  }

  async decodeLatents(z: HostArray): Promise<HostArray> {
    await this.modules.ensure('vae');
    const zt = toTensor(z);
    try {
      return await toArray(this.modules.vae.decode(zt));
    } finally {
      zt.dispose();
    }
  }

  async encodeImage(x: HostArray): Promise<LatentDistributionArrays> {
    await this.modules.ensure('vae');
    const xt = toTensor(x);
    try {
      const d = this.modules.vae.encode(xt);
      return { mean: await toArray(d.mean), logvar: await toArray(d.logvar), std: await toArray(d.std) };
    } finally {
      xt.dispose();
    }
  }

  async setAdapters(uses: readonly AdapterRequest[]): Promise<ImportReport[]> {
    this.clearAdapters();
    await this.modules.ensure('unet', 'textEncoder');
    const targets = { unet: this.modules.unet, textEncoder: this.modules.textEncoder };
    const reports: ImportReport[] = [];
    for (const use of uses) {
      const plan = await planAdapter(use.path, targets, use.strength, { allowPartial: use.allowPartial });
      this.plans.push(plan);
      plan.applyTo(targets, this.patcher);
      reports.push(plan.report);
    }
    return reports;
  }

  clearAdapters(): void {
    this.patcher.restore();
    for (const p of this.plans) p.dispose();
    this.plans = [];
  }

  async describe(): Promise<ExecutionInfo> {
    return { engine: 'tfjs', provider: tf.getBackend(), dtype: 'float32' };
  }

  async release(_kind?: ComponentKind): Promise<void> {
    // No sessions: the modules are freed with StableDiffusion.unload.
  }

  dispose(): void {
    this.clearAdapters();
  }
}

function toTensor(a: HostArray): Tensor {
  return tf.tensor(a.data, [...a.dims], 'float32');
}

/** The tensor's values and shape; disposes the tensor. */
async function toArray(t: Tensor): Promise<HostArray> {
  try {
    return { data: (await t.data()) as Float32Array, dims: t.shape };
  } finally {
    t.dispose();
  }
}
