/**
 * Where the ONNX training step's time goes (issue 25): emits the step graph as `openTrainStep` does on
 * the CPU provider, labels every node with the phase it belongs to (forward, backward, recompute) and
 * the op of the model interface that emitted it (`forward:attention`, `backward:conv2d`, ...), runs a
 * few steps with ONNX Runtime's profiler on, and prints the kernel time per op type, per label and
 * for the slowest nodes, averaged over the steps after the first `--skip`.
 *
 *   node --import tsx scripts/profile-train-step.ts write --out /tmp/sd15prof     (random SD 1.5 weights, 3.4 GB)
 *   node --import tsx scripts/profile-train-step.ts run --unet test/fixtures/tiny-b/model/unet --res 256
 *        [--ckpt] [--rank 4] [--steps 4] [--skip 1] [--top 25] [--out <work dir>]
 *        [--variant '<json>' | --variants '[<json>, ...]'] [--no-profile]
 *   a variant: {"emit": {emitTrainStep options}, "opts": {session options}, "extra": {config entries}}
 *
 * `--unet` is a folder with config.json and diffusion_pytorch_model.safetensors (`write` makes one with
 * the SD 1.5 config). The session has the training step's options (trainingSessionExtra,
 * trainStepWeightLayout, trainStepArena) unless a variant overrides them. Several variants are
 * timed against each other in one process, step by step (`run` below). A measuring tool, not a test.
 */
import { linkSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { SafetensorsFile, writeSafetensors } from '../src-main/engine/io/safetensors.ts';
import { safetensorsSource } from '../src-main/engine/io/weightSource.ts';
import { randomSource } from '../src-main/engine/models/layers/module.ts';
import { UNet2DConditionModel } from '../src-main/engine/models/unet2dCondition.ts';
import { RULES } from '../src-main/engine/onnx/grad/rules.ts';
import { GradOps } from '../src-main/engine/onnx/gradOps.ts';
import { GraphBuilder } from '../src-main/engine/onnx/graphBuilder.ts';
import {
  trainingSessionExtra,
  trainStepArena,
  trainStepMemPattern,
  trainStepWeightLayout,
} from '../src-main/engine/onnx/trainStepGraph.ts';
import { Rng } from '../src-main/engine/random.ts';
import { arg, emitCpuTrainStep, flag } from './trainStepDiag.ts';

const WEIGHTS = 'diffusion_pytorch_model.safetensors';

// -- labelling the emitted nodes ------------------------------------------------------------------

type AnyFn = (...a: unknown[]) => unknown;
const labels = new Map<string, string>();
let mode: 'forward' | 'backward' | 'recompute' = 'forward';
let label: string | null = null;

/** Wraps `obj[key]` so that nodes made during the call get `make()`'s label (the outermost wins). */
function labelDuring(obj: Record<string, unknown>, key: string, make: () => string | null, setMode?: typeof mode) {
  const orig = obj[key] as AnyFn;
  obj[key] = function (this: unknown, ...a: unknown[]) {
    const [prevLabel, prevMode] = [label, mode];
    if (setMode) mode = setMode;
    const l = make();
    if (l !== null) label = l;
    try {
      return orig.apply(this, a);
    } finally {
      [label, mode] = [prevLabel, prevMode];
    }
  };
}

function installLabels(): void {
  const fresh = (GraphBuilder.prototype as unknown as Record<string, AnyFn>).fresh;
  (GraphBuilder.prototype as unknown as Record<string, AnyFn>).fresh = function (this: unknown, prefix: unknown) {
    const n = fresh.call(this, prefix) as string;
    if (String(prefix).startsWith('n_')) labels.set(n, label ?? `${mode}:other`);
    return n;
  };
  const proto = GradOps.prototype as unknown as Record<string, unknown>;
  // A forward op's emit is kept on the tape and called again by a checkpoint's replay.
  const record = proto.record as AnyFn;
  proto.record = function (this: unknown, op: unknown, inputs: unknown, args: unknown, emit: AnyFn, shapes: unknown) {
    const labelled = (ins: unknown) => {
      if (label !== null && !label.endsWith(':gate')) return emit(ins);
      const prev = label;
      label = `${mode === 'recompute' ? 'recompute' : 'forward'}:${String(op)}`;
      try {
        return emit(ins);
      } finally {
        label = prev;
      }
    };
    return record.call(this, op, inputs, args, labelled, shapes);
  };
  labelDuring(proto, 'vjp', () => null, 'backward');
  labelDuring(proto, 'replaySegment', () => 'recompute:gate', 'recompute');
  labelDuring(proto, 'walk', () => null, 'backward');
  const rules = RULES as unknown as Record<string, unknown>;
  for (const op of Object.keys(rules)) labelDuring(rules, op, () => `backward:${op}`);
}

// -- commands ---------------------------------------------------------------------------------------

async function write(): Promise<void> {
  const out = join(arg('out', '/tmp/sd15prof')!, 'unet');
  mkdirSync(out, { recursive: true });
  const config = readFileSync('test/fixtures/sd15_configs/unet/config.json', 'utf8');
  writeFileSync(join(out, 'config.json'), config);
  const unet = UNet2DConditionModel.fromConfig(JSON.parse(config));
  const src = randomSource(unet, 0);
  await writeSafetensors(
    join(out, WEIGHTS),
    new Map(
      [...unet.namedParams()].map(([k, p]) => [k, { shape: p.shape, dtype: 'F32', read: () => src.read(k) }] as const),
    ),
  );
  console.log(`${out}: ${(statSync(join(out, WEIGHTS)).size / 2 ** 20).toFixed(0)} MiB`);
}

async function emit(unetDir: string, work: string, res: number, variant: Record<string, unknown> = {}) {
  const config = JSON.parse(readFileSync(join(unetDir, 'config.json'), 'utf8'));
  const unet = UNet2DConditionModel.fromConfig(config);
  const layout = trainStepWeightLayout(['cpu'], {});
  installLabels();
  const st = await SafetensorsFile.open(join(unetDir, WEIGHTS));
  const t = performance.now();
  const g = emitCpuTrainStep(unet, safetensorsSource(st), res, {
    checkpointing: flag('ckpt'),
    attention: arg('attention') as 'fused' | 'plain' | undefined,
    ...variant,
  });
  await st.close();
  console.log(`emitted ${g.nodes} nodes in ${((performance.now() - t) / 1000).toFixed(1)} s`);
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  writeFileSync(join(work, 'graph.onnx'), g.bytes);
  for (const f of g.files) linkSync(f.path, join(work, f.location));
  return { config, graph: g, layout };
}

interface KernelEvent {
  readonly name: string;
  readonly dur: number;
  readonly args: { op_name: string; input_type_shape?: unknown; output_type_shape?: unknown };
}

function report(events: ReadonlyArray<{ cat: string; name: string; dur: number; ts: number }>, skip: number): void {
  const runs = events.filter((e) => e.cat === 'Session' && e.name === 'model_run').sort((a, b) => a.ts - b.ts);
  const kept = runs.slice(skip);
  const inKept = (ts: number) => kept.some((r) => ts >= r.ts && ts <= r.ts + r.dur);
  const kernels = (events as unknown as Array<KernelEvent & { cat: string; ts: number }>).filter(
    (e) => e.cat === 'Node' && e.name.endsWith('_kernel_time') && inKept(e.ts),
  );
  const n = kept.length;
  const total = kernels.reduce((s, e) => s + e.dur, 0);
  const runMs = kept.reduce((s, r) => s + r.dur, 0) / n / 1000;
  console.log(
    `\n${n} runs: model_run ${runMs.toFixed(0)} ms, kernels ${(total / n / 1000).toFixed(0)} ms, ${kernels.length / n} kernels per run`,
  );
  const table = (title: string, key: (e: KernelEvent) => string, top: number) => {
    const m = new Map<string, { us: number; count: number; ex: KernelEvent }>();
    for (const e of kernels) {
      const k = key(e);
      const r = m.get(k) ?? { us: 0, count: 0, ex: e };
      r.us += e.dur;
      r.count++;
      m.set(k, r);
    }
    console.log(`\n${title}\n| what | % | ms/step | kernels/step |\n| --- | --- | --- | --- |`);
    for (const [k, r] of [...m].sort((a, b) => b[1].us - a[1].us).slice(0, top))
      console.log(
        `| ${k} | ${((100 * r.us) / total).toFixed(1)} | ${(r.us / n / 1000).toFixed(1)} | ${r.count / n} |${title.startsWith('node') ? ` ${shapes(r.ex)}` : ''}`,
      );
  };
  const node = (e: KernelEvent) => /n_[A-Za-z]+_\d+/.exec(e.name)?.[0] ?? e.name;
  const lab = (e: KernelEvent) => labels.get(node(e)) ?? 'unlabelled';
  const top = Number(arg('top', '25'));
  table('phase', (e) => lab(e).split(':')[0], 10);
  table('op type', (e) => e.args.op_name, top);
  table('label (phase:model op)', lab, top);
  table('label x op type', (e) => `${lab(e)} ${e.args.op_name}`, top);
  table('node', (e) => `${e.name.replace('_kernel_time', '')} ${e.args.op_name} (${lab(e)})`, top);
}

const shapes = (e: KernelEvent) =>
  JSON.stringify(e.args.input_type_shape ?? '')
    .replace(/"float":|[{}"]/g, '')
    .slice(0, 120);

interface Variant {
  /** emitTrainStep options over the defaults (e.g. `{"attentionHeadsPerSlice":1}`). */
  readonly emit?: Record<string, unknown>;
  /** Session options and config entries over the training step's. */
  readonly opts?: Record<string, unknown>;
  readonly extra?: Record<string, Record<string, string>>;
}

async function openVariant(unetDir: string, work: string, res: number, v: Variant, profile: boolean) {
  const { config, graph, layout } = await emit(unetDir, work, res, v.emit);
  const base = trainingSessionExtra(['cpu'], layout);
  const extra = {
    optimization: { ...base.optimization, ...v.extra?.optimization },
    session: { ...base.session, ...v.extra?.session },
  };
  const opts: ort.InferenceSession.SessionOptions = {
    executionProviders: ['cpu'],
    graphOptimizationLevel: 'all',
    enableCpuMemArena: trainStepArena(['cpu'], statSync(join(unetDir, WEIGHTS)).size) ?? false,
    enableMemPattern: trainStepMemPattern(['cpu']) ?? true,
    logSeverityLevel: 3,
    ...(profile ? { enableProfiling: true, profileFilePrefix: join(work, 'profile') } : {}),
    ...v.opts,
    extra,
  };
  console.log(JSON.stringify({ ...v, opts: { ...opts, profileFilePrefix: undefined } }));
  const t = performance.now();
  const session = await ort.InferenceSession.create(join(work, 'graph.onnx'), opts);
  console.log(`session in ${((performance.now() - t) / 1000).toFixed(1)} s`);
  return { config, graph, session };
}

function feedsFor(
  config: { in_channels: number; out_channels: number; cross_attention_dim: number },
  res: number,
  sidePaths: ReadonlyMap<string, { inFeatures: number; outFeatures: number }>,
): Record<string, ort.Tensor> {
  const rng = new Rng(0, 2);
  const h = res / 8;
  const rank = Number(arg('rank', '4'));
  const f = (dims: number[], data?: Float32Array) =>
    new ort.Tensor('float32', data ?? rng.normal(dims.reduce((a, b) => a * b, 1)), dims);
  const feeds: Record<string, ort.Tensor> = {
    sample: f([1, h, h, config.in_channels]),
    timestep: f([1], Float32Array.of(500)),
    encoder_hidden_states: f([1, 77, config.cross_attention_dim]),
    target: f([1, h, h, config.out_channels]),
    loss_weight: f([1], Float32Array.of(1 / (h * h * 4))),
    loss_scale: f([], Float32Array.of(1)),
  };
  for (const [p, { inFeatures, outFeatures }] of sidePaths) {
    feeds[`adapter.${p}.down`] = f(
      [inFeatures, rank],
      rng.normal(inFeatures * rank).map((x) => x * 0.01),
    );
    feeds[`adapter.${p}.up`] = f([rank, outFeatures], new Float32Array(rank * outFeatures).fill(0.001));
  }
  return feeds;
}

/**
 * One variant (`--variant '<json>'`, default the training step as it is): profiled unless
 * `--no-profile`. Several (`--variants '[<json>, ...]'`): no profiler; their steps alternate, in
 * the opposite order every other round, and the medians of wall and CPU time are printed.
 */
async function run(): Promise<void> {
  const unetDir = arg('unet', '/tmp/sd15prof/unet')!;
  const res = Number(arg('res', '256'));
  const work = arg('out', `/tmp/profile-train-step-${process.pid}`)!;
  const variants: Variant[] = JSON.parse(arg('variants', `[${arg('variant', '{}')}]`)!);
  const profile = variants.length === 1 && !flag('no-profile');
  const opened = [];
  for (const [i, v] of variants.entries())
    opened.push(await openVariant(unetDir, join(work, `v${i}`), res, v, profile));
  const feeds = feedsFor(opened[0].config, res, opened[0].graph.sidePaths);
  const times: Array<Array<[number, number]>> = variants.map(() => []);
  const faults: number[][] = variants.map(() => []);
  for (let round = 0; round < Number(arg('steps', '4')); round++) {
    const order = variants.map((_, i) => i);
    for (const i of round % 2 ? order.reverse() : order) {
      const t = performance.now();
      const c0 = process.cpuUsage();
      const f0 = process.resourceUsage().minorPageFault;
      const r = await opened[i].session.run(feeds);
      const c = process.cpuUsage(c0);
      const ms: [number, number] = [performance.now() - t, (c.user + c.system) / 1000];
      times[i].push(ms);
      faults[i].push(process.resourceUsage().minorPageFault - f0);
      console.log(
        `round ${round + 1} variant ${i}: ${ms[0].toFixed(0)} ms (cpu ${ms[1].toFixed(0)} ms, faults ${faults[i].at(-1)}) loss ${(r.loss.data as Float32Array)[0]}`,
      );
    }
  }
  const skip = Number(arg('skip', '1'));
  const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  variants.forEach((v, i) => {
    const kept = times[i].slice(skip);
    console.log(
      `variant ${i} ${JSON.stringify(v)}: median ${med(kept.map((x) => x[0])).toFixed(0)} ms wall, ${med(kept.map((x) => x[1])).toFixed(0)} ms cpu, ${med(faults[i].slice(skip))} faults over ${kept.length} steps`,
    );
  });
  for (const o of opened) {
    if (profile) o.session.endProfiling();
    await o.session.release();
  }
  const dir = join(work, 'v0');
  const file = readdirSync(dir).find((n) => n.startsWith('profile') && n.endsWith('.json'));
  if (profile && file) report(JSON.parse(readFileSync(join(dir, file), 'utf8')), skip);
  rmSync(work, { recursive: true, force: true });
}

const cmd = process.argv[2];
if (cmd === 'write') await write();
else if (cmd === 'run') await run();
else throw new Error(`profile-train-step: unknown command '${cmd}' (write, run)`);
