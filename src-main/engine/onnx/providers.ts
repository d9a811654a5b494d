/**
 * ONNX Runtime execution providers: which exist here, which start, and what `auto` picks.
 *
 *   provider   where                                  shipped by onnxruntime-node 1.30
 *   cpu        everywhere (MLAS, all cores)           yes
 *   webgpu     Linux (Vulkan), Windows, macOS         yes (Dawn inside ONNX Runtime)
 *   dml        Windows (DirectML)                     yes
 *   coreml     macOS                                  yes
 *   cuda       Linux x64 / Windows with CUDA 12       fetched by its installer on users' machines
 *
 * `auto` tries the GPU providers that can exist on this platform, then the CPU. A software
 * WebGPU adapter (SwiftShader, llvmpipe) is never picked by `auto`, only when asked for.
 * float16 is the default on GPU providers, float32 on the CPU.
 *
 * Which providers can train: training sessions run on one provider alone with CPU fallback disabled
 * (trainStepGraph.ts `trainingSessionExtra`), so a provider trains when it runs every op of the
 * training step itself; the CPU runs them all. `singlora doctor` opens a small graph of
 * the backward pass's op kinds (Conv, ConvTranspose, MatMul, Transpose, Softmax, Erf, ReduceSum) with
 * the training session options and runs it once: a provider that refuses it cannot train; one that
 * runs it can, as far as a probe can tell (the training step itself is the final word).
 */
import { PROVIDERS, type ProviderChoice } from '../../api/schemas.ts';
import { installedProviders, OnnxSession, type ExecutionProvider } from '../backend/onnxRuntime.ts';
import { probeBackends } from '../backend/tf.ts';
import { GraphBuilder } from './graphBuilder.ts';
import type { ComputeType } from './onnxOps.ts';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** The choices are the API's list (api/schemas.ts PROVIDERS), re-exported for the engine. */
export const PROVIDER_CHOICES = PROVIDERS;
export type { ProviderChoice };

export function isProviderChoice(s: string): s is ProviderChoice {
  return (PROVIDER_CHOICES as readonly string[]).includes(s);
}

/** The providers that can exist on this platform, GPU ones first. */
function platformGpuProviders(): ExecutionProvider[] {
  if (process.platform === 'win32') return ['cuda', 'dml', 'webgpu'];
  if (process.platform === 'darwin') return ['coreml', 'webgpu'];
  return ['cuda', 'webgpu'];
}

/** Provider lists to try in order for a choice; each list ends with the CPU for ops a GPU provider lacks. */
export async function providerCandidates(choice: ProviderChoice): Promise<ExecutionProvider[][]> {
  if (choice === 'cpu') return [['cpu']];
  if (choice !== 'auto') return [[choice, 'cpu']];
  const out: ExecutionProvider[][] = [];
  for (const p of platformGpuProviders()) {
    if (p === 'webgpu' && !(await hardwareWebgpu())) continue;
    if (p === 'cuda' && !installedProviders().some((b) => b.name === 'cuda' && b.present)) continue;
    out.push([p, 'cpu']);
  }
  out.push(['cpu']);
  return out;
}

/**
 * A training session's providers from a candidate list: a GPU provider alone, with no CPU provider
 * after it to fall back to (training sessions also refuse ONNX Runtime's silent CPU fallback,
 * `trainingSessionExtra`), so a GPU provider that cannot run a backward node fails to start; or the CPU.
 */
export function trainingProviders(list: readonly ExecutionProvider[]): ExecutionProvider[] {
  return list[0] === 'cpu' ? ['cpu'] : [list[0]];
}

/** The default compute type of a provider list: float16 on a GPU provider, float32 on the CPU. */
export function defaultComputeType(providers: readonly ExecutionProvider[]): ComputeType {
  return providers[0] === 'cpu' ? 'float32' : 'float16';
}

async function hardwareWebgpu(): Promise<boolean> {
  const webgpu = (await probeBackends()).find((b) => b.name === 'webgpu');
  return Boolean(webgpu?.available && !webgpu.software);
}

export interface ProviderStatus {
  readonly name: ExecutionProvider;
  readonly available: boolean;
  /** Why it cannot start, or what it runs on. */
  readonly detail: string;
  /** Whether it runs the training step's ops with CPU fallback disabled (see the file comment). */
  readonly training: { readonly ok: boolean; readonly detail: string };
}

/** The backward pass's op kinds in one small float32 graph: x [1, 4, 4, 4] -> a scalar. */
function trainingProbeGraph(): Uint8Array {
  const g = new GraphBuilder('training-probe');
  const x = g.input('x', 'float32', [1, 4, 4, 4]);
  const w = g.constant(
    Array.from({ length: 4 * 4 * 3 * 3 }, (_, i) => ((i % 7) - 3) / 10),
    [4, 4, 3, 3],
  );
  const pads = { pads: [1, 1, 1, 1] };
  const y = g.op('Conv', [x, w], pads); // forward conv: [1, 4, 4, 4]
  const dx = g.op('ConvTranspose', [y, w], pads); // its input gradient: [1, 4, 4, 4]
  const r = g.op('Reshape', [dx, g.ints([4, 16])]); // [4, 16]
  const m = g.op('MatMul', [g.op('Transpose', [r], { perm: [1, 0] }), r]); // [16, 16]
  const s = g.op('Erf', [g.op('Softmax', [m], { axis: -1 })]);
  g.output(g.op('ReduceSum', [s, g.ints([0, 1])], { keepdims: 0 }), 'loss', []);
  return g.toBytes();
}

/** Whether `name` runs the training probe alone, with the training session options; `dir` holds the graph. */
export async function probeTraining(dir: string, name: ExecutionProvider): Promise<ProviderStatus['training']> {
  const { trainingSessionExtra } = await import('./trainStepGraph.ts');
  const file = join(dir, 'training-probe.onnx');
  if (!existsSync(file)) writeFileSync(file, trainingProbeGraph());
  try {
    const s = await OnnxSession.create(file, { providers: [name], extra: trainingSessionExtra([name]) });
    try {
      await s.run({ x: { type: 'float32', data: new Float32Array(64).fill(0.5), dims: [1, 4, 4, 4] } });
    } finally {
      await s.release();
    }
    return { ok: true, detail: name === 'cpu' ? 'trains (float32)' : 'runs the training ops without CPU fallback' };
  } catch (err) {
    const msg = ((err as Error).message ?? String(err)).split('\n')[0].slice(0, 300);
    return { ok: false, detail: `cannot run the training ops without CPU fallback: ${msg}` };
  }
}

type StartStatus = Omit<ProviderStatus, 'training'>;

/**
 * Tries each provider on a one-node graph (inference), then the ones that start on the training
 * probe (for `singlora doctor`).
 */
export async function probeProviders(): Promise<ProviderStatus[]> {
  const dir = mkdtempSync(join(tmpdir(), 'singlora-ort-probe-'));
  try {
    const g = new GraphBuilder('probe');
    const x = g.input('x', 'float32', [4]);
    g.output(g.op('Add', [x, x]), 'y', [4]);
    const file = join(dir, 'probe.onnx');
    writeFileSync(file, g.toBytes());
    const out: ProviderStatus[] = [];
    for (const name of PROVIDERS.filter((p): p is ExecutionProvider => p !== 'auto')) {
      const started = await probeStart(file, name);
      const training = started.available
        ? await probeTraining(dir, name)
        : { ok: false, detail: 'cannot train: the provider does not start' };
      out.push({ ...started, training });
    }
    return out;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Whether `name` starts and runs the one-node graph in `file`, and on what (or why not). */
async function probeStart(file: string, name: ExecutionProvider): Promise<StartStatus> {
  const installed = installedProviders().some((b) => b.present && b.name === name);
  if (!installed && name !== 'cpu')
    return {
      name,
      available: false,
      detail: `not in this onnxruntime-node build for ${process.platform}-${process.arch}${name === 'cuda' ? ' (its installer fetches the CUDA 12 provider on Linux x64 and Windows)' : ''}`,
    };
  const webgpu = name === 'webgpu' ? (await probeBackends()).find((b) => b.name === 'webgpu') : undefined;
  if (webgpu && !webgpu.available && /libvulkan/.test(webgpu.reason ?? ''))
    // Without a Vulkan loader Dawn only prints a native warning; say why instead of trying.
    return { name, available: false, detail: webgpu.reason! };
  try {
    const s = await OnnxSession.create(file, { providers: [name] });
    await s.run({ x: { type: 'float32', data: new Float32Array(4), dims: [4] } });
    await s.release();
    const what =
      name === 'cpu'
        ? 'MLAS, all cores'
        : webgpu?.available
          ? `${webgpu.device}${webgpu.software ? ' (software: used only when asked for)' : ''}`
          : 'started';
    return { name, available: true, detail: what };
  } catch (err) {
    const msg = ((err as Error).message ?? String(err)).split('\n')[0];
    const detail =
      name === 'webgpu' && /adapter/i.test(msg)
        ? 'no WebGPU adapter: Dawn found no Vulkan, Metal or D3D12 device (Linux: a GPU driver with Vulkan)'
        : msg.replace(/^.*?onnxruntime could not create a session on \[\w+\]: /, '').slice(0, 300);
    return { name, available: false, detail };
  }
}
