/**
 * `singlora bench unet|generate|train`: the speed and memory figures quoted in the docs, each
 * printed with its backend and configuration.
 */
import { InvalidArgumentError, Option, type Command } from 'commander';
import {
  COMPUTE_DTYPES,
  DEFAULT_ENGINE,
  ENGINES,
  LIMITS,
  type METHODS,
  PROVIDERS,
  trainSettingsSchema,
  ATTENTION_MODES,
  type AttentionMode,
  LINEAR_LAYOUTS,
  type LinearLayout,
  WEIGHT_FILE_DTYPES,
  type WeightFileDtype,
} from '../api/schemas.ts';
import {
  action,
  inferenceOptions,
  parse,
  printResult,
  UsageError,
  requireExists,
  withCommon,
  withInference,
  type GlobalOptions,
  type InferenceCliOptions,
} from './common.ts';
import { TRAIN_FLAGS } from './flags.ts';
import { schemaOptions } from './schemaOptions.ts';

/** The training settings `bench train` takes, as `train` spells them (schema's bounds and defaults). */
const TRAIN_SETTINGS = schemaOptions(trainSettingsSchema, TRAIN_FLAGS, ['rank', 'method', 'batchSize']);

/** --dtype, as the onnx benchmarks take it. */
function dtypeOption(): Option {
  return new Option(
    '--dtype <type>',
    'onnx engine: compute type (default: float16 on GPU providers, float32 on cpu)',
  ).choices([...COMPUTE_DTYPES]);
}

/** The adapters and UNet line both engines' training benchmarks print. */
function adaptersLine(r: {
  config: { method: string; rank: number };
  adapterLayers: number;
  adapterParameters: number;
  unetParameters: number;
}): string {
  return `  ${r.config.method} rank ${r.config.rank} on ${r.adapterLayers} layers (${r.adapterParameters.toLocaleString('en-US')} params), UNet ${r.unetParameters.toLocaleString('en-US')} params`;
}

/** `32,64` or `16x12,32`: latent sizes [h, w]. */
function latentSizes(v: string): Array<[number, number]> {
  return v.split(',').map((s): [number, number] => {
    const parts = s.trim().split('x');
    const dims = parts.map((p) => (p.trim() === '' ? NaN : Number(p)));
    if (parts.length > 2 || dims.some((d) => !Number.isInteger(d) || d < 1))
      throw new InvalidArgumentError("expected latent sizes like '32,64' or '16x12'");
    return [dims[0], dims[1] ?? dims[0]];
  });
}

export function register(program: Command): void {
  const bench = program.command('bench').description('measure speed and memory on this machine');
  registerBenchUnet(bench);
  registerBenchGenerate(bench);
  registerBenchTrain(bench);
}

function registerBenchUnet(bench: Command): void {
  withInference(
    withCommon(
      bench
        .command('unet')
        .description(
          "UNet forward timing with random weights in --config's shape (onnx: written to a temporary .safetensors first)",
        )
        .requiredOption(
          '--config <path>',
          'UNet config.json, unet/ folder or model folder whose shape to time (an SD 1.5 folder: its shape)',
        )
        .option('--sizes <list>', 'latent sizes, e.g. 32,64 or 16x12 (default: the config sample_size)', latentSizes)
        .option('--batch <n>', 'batch size (2 = with classifier-free guidance)', parse.int(1, 64), 1)
        .option('--iters <n>', 'timed forwards per size', parse.int(1), 3)
        .option('--warmup <n>', 'warm-up forwards', parse.int(0), 1)
        .addOption(dtypeOption())
        .addOption(
          new Option('--file-dtype <type>', 'onnx engine: dtype of the random weights file')
            .choices([...WEIGHT_FILE_DTYPES])
            .default('F32'),
        )
        .option('--in-memory', 'onnx engine: hand the weights to ONNX Runtime in memory instead of linking the file'),
    ),
  ).action(action(runBenchUnet));
}

type BenchUnetOptions = GlobalOptions &
  InferenceCliOptions & {
    config: string;
    sizes?: Array<[number, number]>;
    batch: number;
    iters: number;
    warmup: number;
    dtype?: (typeof COMPUTE_DTYPES)[number];
    fileDtype: WeightFileDtype;
    inMemory?: boolean;
  };

async function runBenchUnet(o: BenchUnetOptions): Promise<void> {
  requireExists(o.config, '--config');
  const log = o.json ? undefined : (l: string) => process.stderr.write(`${l}\n`);
  if (o.engine !== 'tfjs') {
    const { benchUnetOnnx } = await import('../engine/bench/unetOnnx.ts');
    const r = await benchUnetOnnx({
      config: o.config,
      latentSizes: o.sizes,
      batch: o.batch,
      iters: o.iters,
      warmup: o.warmup,
      provider: o.provider ?? 'cpu',
      dtype: o.dtype,
      fileDtype: o.fileDtype,
      inMemory: o.inMemory,
      log,
    });
    printResult(o, r, () =>
      [
        `onnx on ${r.provider} (${r.dtype}), ${r.parameters.toLocaleString()} parameters, weights ${r.config.weights}; load ${r.load_s.toFixed(1)} s, peak rss ${r.peak_rss_mb.toFixed(0)} MiB`,
        ...r.sizes.map(
          (s) =>
            `  latent ${s.latent.join('x')} batch ${r.config.batch}: ${s.ms_per_forward.toFixed(1)} ms/forward, ${s.gflop.toFixed(1)} GFLOP, ${s.gflops_per_s.toFixed(1)} GFLOP/s`,
        ),
      ].join('\n'),
    );
    return;
  }
  const { benchUnet, formatBenchUnet } = await import('../engine/bench/unet.ts');
  const report = await benchUnet({
    config: o.config,
    latentSizes: o.sizes,
    batch: o.batch,
    iters: o.iters,
    warmup: o.warmup,
    backend: o.backend ?? 'auto',
    log,
  });
  printResult(o, report, () => formatBenchUnet(report));
}

function registerBenchGenerate(bench: Command): void {
  withInference(
    withCommon(
      bench
        .command('generate')
        .description('seconds per image and UNet it/s for a base model')
        .requiredOption('--base <model>', 'base model folder or .safetensors')
        .option('--steps <n>', 'sampling steps', parse.int(1, LIMITS.generation.steps), 20)
        .option('--images <n>', 'timed images', parse.int(1, LIMITS.generation.count), 2)
        .option('--width <px>', 'width, a multiple of 8 (default: native)', parse.int(8, LIMITS.generation.size))
        .option('--height <px>', 'height, a multiple of 8 (default: native)', parse.int(8, LIMITS.generation.size)),
    ),
  ).action(action(runBenchGenerate));
}

type BenchGenerateOptions = GlobalOptions &
  InferenceCliOptions & { base: string; steps: number; images: number; width?: number; height?: number };

async function runBenchGenerate(o: BenchGenerateOptions): Promise<void> {
  requireExists(o.base, '--base');
  const { benchGenerate } = await import('../engine/bench/generate.ts');
  const r = await benchGenerate({
    base: o.base,
    steps: o.steps,
    images: o.images,
    width: o.width,
    height: o.height,
    backend: o.backend ?? 'auto',
    inference: inferenceOptions(o),
  });
  printResult(
    o,
    r,
    () =>
      `${r.engine}${r.provider ? ` on ${r.provider} (${r.dtype})` : ''}: ${r.s_per_image.toFixed(2)} s/image, UNet ${r.unet_its.toFixed(2)} it/s (CFG batch 2), decode ${r.decode_s.toFixed(2)} s; ${r.config.width}x${r.config.height}, ${r.config.steps} steps ${r.config.scheduler}; load ${r.load_s.toFixed(1)} s, peak rss ${r.peak_rss_mb.toFixed(0)} MiB`,
  );
}

function registerBenchTrain(bench: Command): void {
  withCommon(
    bench
      .command('train')
      .description('ms per optimizer step (median after warm-up) and memory, random weights')
      .requiredOption('--base <path>', 'model folder, unet/ folder or UNet config.json (random weights in its shape)')
      .requiredOption('--resolution <px>', 'training resolution (a multiple of 8)', parse.int(8, 2048))
      .option('--steps <n>', 'timed steps', parse.int(1), 5)
      .option('--warmup <n>', 'warm-up steps', parse.int(0), 1)
      .addOption(TRAIN_SETTINGS.option('rank'))
      .addOption(TRAIN_SETTINGS.option('method'))
      .addOption(TRAIN_SETTINGS.option('batchSize'))
      .option('--checkpointing', 'gradient checkpointing per UNet block')
      .option('--gradient-checkpointing', "the same as --checkpointing (the train setting's name)")
      .addOption(
        new Option('--attention <mode>', 'memory-efficient (as train uses) or plain (for comparison)')
          .choices([...ATTENTION_MODES])
          .default('memory-efficient'),
      )
      .option('--profile', "tfjs engine: also list the step's kernels by time")
      .addOption(
        new Option('--engine <name>', 'training engine: onnx (ONNX Runtime) or tfjs (TensorFlow.js)')
          .choices([...ENGINES])
          .default(DEFAULT_ENGINE),
      )
      .addOption(
        new Option('--provider <name>', 'onnx engine: ONNX Runtime execution provider').choices([...PROVIDERS]),
      )
      .addOption(dtypeOption())
      .addOption(
        new Option(
          '--linear-layout <layout>',
          'onnx engine: frozen Linear weights read by MatMul (a transposed copy) or Gemm (no copy); default gemm on cpu, matmul on GPU providers',
        ).choices([...LINEAR_LAYOUTS]),
      )
      .option('--prepacking', "onnx engine: ONNX Runtime's packed weight copies (default on GPU providers)")
      .option('--no-prepacking', 'onnx engine: no packed weight copies (default on cpu)')
      .option(
        '--disable-optimizers <names>',
        'onnx engine: ONNX Runtime graph optimizers to turn off besides CSE, comma-separated (default on cpu: NchwcTransformer; "" for none)',
      ),
  ).action(action(runBenchTrain));
}

type BenchTrainOptions = GlobalOptions & {
  base: string;
  resolution: number;
  steps: number;
  warmup: number;
  rank: number;
  method: (typeof METHODS)[number];
  batch: number;
  checkpointing?: boolean;
  gradientCheckpointing?: boolean;
  attention: AttentionMode;
  profile?: boolean;
  engine: (typeof ENGINES)[number];
  provider?: (typeof PROVIDERS)[number];
  dtype?: (typeof COMPUTE_DTYPES)[number];
  linearLayout?: LinearLayout;
  prepacking?: boolean;
  disableOptimizers?: string;
};

async function runBenchTrain(o: BenchTrainOptions): Promise<void> {
  requireExists(o.base, '--base');
  // What both engines' benchmarks take.
  const run = {
    base: o.base,
    resolution: o.resolution,
    steps: o.steps,
    warmup: o.warmup,
    rank: o.rank,
    method: o.method,
    batch: o.batch,
    checkpointing: o.checkpointing || o.gradientCheckpointing,
    log: o.json ? undefined : (l: string) => process.stderr.write(`${l}\n`),
  };
  if (o.engine === 'onnx') {
    if (o.profile || o.attention !== 'memory-efficient')
      throw new UsageError('--profile and --attention measure the tfjs engine; add --engine tfjs');
    const { benchTrainOnnx } = await import('../engine/bench/trainOnnx.ts');
    const r = await benchTrainOnnx({
      ...run,
      provider: o.provider ?? 'cpu',
      dtype: o.dtype,
      linearLayout: o.linearLayout,
      prepacking: o.prepacking,
      disableOptimizers: o.disableOptimizers === undefined ? undefined : o.disableOptimizers.split(',').filter(Boolean),
    });
    printResult(o, r, () =>
      [
        `onnx on ${r.provider} (${r.dtype}): ${r.ms_per_step?.toFixed(0) ?? 'n/a'} ms/step (median of ${r.ms_steps.length}; CPU time ${r.cpu_ms_per_step?.toFixed(0) ?? 'n/a'}), ${r.gflop_per_step.toFixed(2)} GFLOP per step, ${r.gflops?.toFixed(2) ?? 'n/a'} GFLOP/s`,
        adaptersLine(r),
        `  ${r.config.resolution}px (latent ${r.config.latent.join('x')}), batch ${r.config.batch}, checkpointing ${r.config.checkpointing ? 'on' : 'off'}; graph ${r.graph_nodes} nodes, load ${r.load_s.toFixed(1)} s, peak RSS ${r.peak_rss_mb} MiB`,
      ].join('\n'),
    );
    return;
  }
  const { benchTrain } = await import('../engine/bench/train.ts');
  const r = await benchTrain({
    ...run,
    attention: o.attention,
    profile: o.profile,
    backend: o.backend ?? 'auto',
  });
  printResult(o, r, () =>
    [
      `${r.backend}: ${r.status}${r.error ? ` (${r.error})` : ''}`,
      adaptersLine(r),
      `  ${r.config.resolution}px (latent ${r.config.latent.join('x')}), batch ${r.config.batch}, checkpointing ${r.config.checkpointing ? 'on' : 'off'}, ${r.config.attention} attention`,
      `  ms/step (median of ${r.ms_steps.length}): ${r.ms_per_step?.toFixed(0) ?? 'n/a'} (CPU time ${r.cpu_ms_per_step?.toFixed(0) ?? 'n/a'}); ${r.gflop_per_step?.toFixed(2) ?? 'n/a'} GFLOP per step (forward + backward), ${r.gflops?.toFixed(2) ?? 'n/a'} GFLOP/s`,
      `  peak RSS ${r.peak_rss_mb} MiB${r.wasm_heap_mb ? `, wasm heap ${r.wasm_heap_mb} MiB` : ''}`,
      `  tensor buffers at the step's peak: ${r.peak_step_buffer_bytes === null ? 'n/a' : `${(r.peak_step_buffer_bytes / 2 ** 20).toFixed(1)} MiB above the ${((r.buffer_bytes_before ?? 0) / 2 ** 20).toFixed(1)} MiB held before the step (weights ${(r.weight_bytes / 2 ** 20).toFixed(1)} MiB)`}; tfjs byte counter (counts shared clones again) ${r.peak_step_bytes === null ? 'n/a' : `${(r.peak_step_bytes / 2 ** 20).toFixed(1)} MiB`}`,
      ...(r.kernels ?? []).map(
        (k) =>
          `    ${k.name.padEnd(24)} ${String(k.calls).padStart(6)} calls ${k.ms.toFixed(1).padStart(9)} ms ${(k.share * 100).toFixed(1).padStart(5)}%`,
      ),
    ].join('\n'),
  );
}
