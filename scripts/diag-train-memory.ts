/**
 * Where the SD 1.5 training step's memory goes (issue 25): RSS split into anonymous memory and
 * mapped file pages after each phase (weights file written, graph emitted, session created,
 * each step), for ONNX Runtime session options given on the command line.
 *
 *   node --expose-gc --import tsx scripts/diag-train-memory.ts write
 *   node --expose-gc --import tsx scripts/diag-train-memory.ts emit --res 256 [--ckpt] [--layout gemm]
 *        [--attention fused|plain] [--unet <a unet folder with weights, e.g. tiny-b's>]
 *   node --expose-gc --import tsx scripts/diag-train-memory.ts run (the emit options) [--steps 2]
 *        [--opts '{"enableMemPattern":false}'] [--extra '{"session":{"disable_prepacking":"1"}}']
 *        [--profile <prefix>] (ONNX Runtime's profile JSON) [--save <file.onnx>] (the optimized model)
 *   DIAG_MAPS=1 ... run ...   also lists every mapping with more than 32 MiB resident
 *
 * Phases run in separate processes so that one does not leave garbage in the next one's heap.
 * The SD 1.5 weights (random, 3.4 GB) go to $DIAG_DIR (default /tmp/sd15mem), and so do the graphs.
 * `run` creates the session as the training step does on the CPU provider (arena off, CSE, NCHWc
 * and prepacking off) unless the options say otherwise; it is a measuring tool, not a test.
 */
import { existsSync, linkSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { SafetensorsFile, writeSafetensors } from '../src-main/engine/io/safetensors.ts';
import { safetensorsSource } from '../src-main/engine/io/weightSource.ts';
import { randomSource } from '../src-main/engine/models/layers/module.ts';
import { UNet2DConditionModel } from '../src-main/engine/models/unet2dCondition.ts';
import { Rng } from '../src-main/engine/random.ts';
import { arg, emitCpuTrainStep, flag } from './trainStepDiag.ts';

const dir = process.env.DIAG_DIR ?? '/tmp/sd15mem';
const unetDir = arg('unet', join(dir, 'unet'))!;
const weights = join(unetDir, 'diffusion_pytorch_model.safetensors');
const config = JSON.parse(
  readFileSync(
    arg(
      'config',
      existsSync(join(unetDir, 'config.json'))
        ? join(unetDir, 'config.json')
        : 'test/fixtures/sd15_configs/unet/config.json',
    )!,
    'utf8',
  ),
);

function mem(phase: string): void {
  (globalThis as { gc?: () => void }).gc?.();
  const status = readFileSync('/proc/self/status', 'utf8');
  const kb = (k: string) => Number(new RegExp(`${k}:\\s+(\\d+)`).exec(status)?.[1] ?? 0);
  let fileRss = 0;
  let anonBig = 0;
  let cur = '';
  for (const line of readFileSync('/proc/self/smaps', 'utf8').split('\n')) {
    if (/^[0-9a-f]+-[0-9a-f]+ /.test(line)) cur = line;
    else if (line.startsWith('Rss:')) {
      const v = Number(line.split(/\s+/)[1]);
      if (cur.includes('safetensors')) fileRss += v;
      else if (!(cur.trim().split(/\s+/)[5] ?? '').startsWith('/') && v > 64 * 1024) anonBig += v;
    }
  }
  if (process.env.DIAG_MAPS) {
    const big: string[] = [];
    let head = '';
    for (const line of readFileSync('/proc/self/smaps', 'utf8').split('\n')) {
      if (/^[0-9a-f]+-[0-9a-f]+ /.test(line)) head = line;
      else if (line.startsWith('Rss:') && Number(line.split(/\s+/)[1]) > 32 * 1024) {
        const [a, b] = head
          .split(' ')[0]
          .split('-')
          .map((x) => Number.parseInt(x, 16));
        big.push(
          `  ${Math.round((b - a) / 2 ** 20)} MiB mapped, rss ${Math.round(Number(line.split(/\s+/)[1]) / 1024)}: ${head.trim().split(/\s+/).slice(5).join(' ') || '(anon)'}`,
        );
      }
    }
    console.log(big.join('\n'));
  }
  const mib = (x: number) => `${Math.round(x / 1024)}`.padStart(6);
  const h = process.memoryUsage();
  console.log(
    `${phase.padEnd(22)} rss ${mib(kb('VmRSS'))} anon ${mib(kb('RssAnon'))} file ${mib(kb('RssFile'))} hwm ${mib(kb('VmHWM'))} | weights-mapped ${mib(fileRss)} anon>64M ${mib(anonBig)} | js heap ${mib(h.heapUsed / 1024)} ext ${mib(h.external / 1024)} ab ${mib(h.arrayBuffers / 1024)} MiB`,
  );
}

const variant = () =>
  `g-${unetDir.replace(/\W+/g, '_')}-${arg('res', '256')}-${flag('ckpt') ? 'ckpt' : 'plain'}-${arg('layout', 'gemm')}-${arg('attention', 'fused')}`;
const unet = UNet2DConditionModel.fromConfig(config);

async function write(): Promise<void> {
  mkdirSync(join(dir, 'unet'), { recursive: true });
  const src = randomSource(unet, 0);
  await writeSafetensors(
    weights,
    new Map(
      [...unet.namedParams()].map(([k, p]) => [k, { shape: p.shape, dtype: 'F32', read: () => src.read(k) }] as const),
    ),
  );
}

async function emit(): Promise<void> {
  const res = Number(arg('res', '256'));
  const st = await SafetensorsFile.open(weights);
  const g = emitCpuTrainStep(unet, safetensorsSource(st), res, {
    checkpointing: flag('ckpt'),
    linearLayout: arg('layout', 'gemm') as 'gemm' | 'matmul',
    attention: arg('attention', 'fused') as 'fused' | 'plain',
  });
  await st.close();
  const out = join(dir, variant());
  mkdirSync(out, { recursive: true });
  writeFileSync(join(out, 'graph.onnx'), g.bytes);
  for (const f of g.files) if (!existsSync(join(out, f.location))) linkSync(f.path, join(out, f.location));
  writeFileSync(join(out, 'meta.json'), JSON.stringify({ sidePaths: [...g.sidePaths], nodes: g.nodes }));
  console.log(`${out}: ${g.nodes} nodes, ${g.bytes.length} bytes`);
}

async function run(): Promise<void> {
  const res = Number(arg('res', '256'));
  const out = join(dir, variant());
  const meta = JSON.parse(readFileSync(join(out, 'meta.json'), 'utf8')) as {
    sidePaths: Array<[string, { inFeatures: number; outFeatures: number }]>;
  };
  const extra = JSON.parse(arg('extra', '{}')!);
  const opts: ort.InferenceSession.SessionOptions = {
    executionProviders: ['cpu'],
    graphOptimizationLevel: 'all',
    enableCpuMemArena: false,
    logSeverityLevel: 3,
    ...JSON.parse(arg('opts', '{}')!),
    extra: {
      ...extra,
      optimization: {
        disable_specified_optimizers: 'CommonSubexpressionElimination;NchwcTransformer',
        ...extra.optimization,
      },
      session: { disable_prepacking: '1', ...extra.session },
    },
  };
  const profile = arg('profile');
  if (profile) Object.assign(opts, { enableProfiling: true, profileFilePrefix: profile });
  const save = arg('save');
  if (save) {
    opts.optimizedModelFilePath = save;
    (opts.extra as Record<string, Record<string, string>>).session.optimized_model_external_initializers_file_name =
      `${save.split('/').pop()}.bin`;
    (
      opts.extra as Record<string, Record<string, string>>
    ).session.optimized_model_external_initializers_min_size_in_bytes = '1024';
  }
  console.log(JSON.stringify(opts));
  mem('start');
  let t = performance.now();
  const session = await ort.InferenceSession.create(join(out, 'graph.onnx'), opts);
  console.log(`session in ${((performance.now() - t) / 1000).toFixed(1)} s`);
  mem('session created');
  const rng = new Rng(0, 2);
  const h = res / 8;
  const f = (dims: number[], data?: Float32Array) =>
    new ort.Tensor('float32', data ?? rng.normal(dims.reduce((a, b) => a * b, 1)), dims);
  const feeds: Record<string, ort.Tensor> = {
    sample: f([1, h, h, 4]),
    timestep: f([1], Float32Array.of(500)),
    encoder_hidden_states: f([1, 77, config.cross_attention_dim]),
    target: f([1, h, h, 4]),
    loss_weight: f([1], Float32Array.of(1 / (h * h * 4))),
    loss_scale: f([], Float32Array.of(1)),
  };
  for (const [p, { inFeatures, outFeatures }] of meta.sidePaths) {
    feeds[`adapter.${p}.down`] = f(
      [inFeatures, 8],
      rng.normal(inFeatures * 8).map((x) => x * 0.01),
    );
    feeds[`adapter.${p}.up`] = f([8, outFeatures], new Float32Array(8 * outFeatures).fill(0.001));
  }
  const steps = Number(arg('steps', '1'));
  for (let i = 0; i < steps; i++) {
    t = performance.now();
    const c0 = process.cpuUsage();
    const faults0 = process.resourceUsage().minorPageFault;
    const r = await session.run(feeds);
    const c = process.cpuUsage(c0);
    const faults = process.resourceUsage().minorPageFault;
    console.log(
      `step ${i + 1}: ${(performance.now() - t).toFixed(0)} ms (cpu ${((c.user + c.system) / 1000).toFixed(0)} ms, sys ${(c.system / 1000).toFixed(0)} ms, minor faults ${faults - faults0})  loss ${(r.loss.data as Float32Array)[0]}`,
    );
    for (const v of Object.values(r)) v.dispose();
    mem(`after step ${i + 1}`);
  }
  await session.release();
  mem('released');
}

const cmd = process.argv[2];
if (cmd === 'write') await write();
else if (cmd === 'emit') await emit();
else if (cmd === 'run') await run();
else throw new Error(`diag-train-memory: unknown command '${cmd}' (write, emit, run)`);
