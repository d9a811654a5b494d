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
 */
import { installedProviders, OnnxSession, type ExecutionProvider } from '../backend/onnxRuntime.ts';
import { probeBackends } from '../backend/tf.ts';
import { GraphBuilder } from './graphBuilder.ts';
import type { ComputeType } from './onnxOps.ts';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const PROVIDER_CHOICES = ['auto', 'cpu', 'webgpu', 'cuda', 'dml', 'coreml'] as const;
export type ProviderChoice = (typeof PROVIDER_CHOICES)[number];

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
}

/** Tries each provider on a one-node graph (for `singlora doctor`). */
export async function probeProviders(): Promise<ProviderStatus[]> {
  const installed = new Map(
    installedProviders()
      .filter((b) => b.present)
      .map((b) => [b.name, b.bundled]),
  );
  const dir = mkdtempSync(join(tmpdir(), 'singlora-ort-probe-'));
  try {
    const g = new GraphBuilder('probe');
    const x = g.input('x', 'float32', [4]);
    g.output(g.op('Add', [x, x]), 'y', [4]);
    const file = join(dir, 'probe.onnx');
    writeFileSync(file, g.toBytes());
    const out: ProviderStatus[] = [];
    const webgpu = (await probeBackends()).find((b) => b.name === 'webgpu');
    for (const name of ['cpu', 'webgpu', 'cuda', 'dml', 'coreml'] as const) {
      if (!installed.has(name) && name !== 'cpu') {
        out.push({
          name,
          available: false,
          detail: `not in this onnxruntime-node build for ${process.platform}-${process.arch}${name === 'cuda' ? ' (its installer fetches the CUDA 12 provider on Linux x64 and Windows)' : ''}`,
        });
        continue;
      }
      if (name === 'webgpu' && webgpu && !webgpu.available && /libvulkan/.test(webgpu.reason ?? '')) {
        // Without a Vulkan loader Dawn only prints a native warning; say why instead of trying.
        out.push({ name, available: false, detail: webgpu.reason! });
        continue;
      }
      try {
        const s = await OnnxSession.create(file, { providers: [name] });
        await s.run({ x: { type: 'float32', data: new Float32Array(4), dims: [4] } });
        await s.release();
        const what =
          name === 'cpu'
            ? 'MLAS, all cores'
            : name === 'webgpu' && webgpu?.available
              ? `${webgpu.device}${webgpu.software ? ' (software: used only when asked for)' : ''}`
              : 'started';
        out.push({ name, available: true, detail: what });
      } catch (err) {
        const msg = ((err as Error).message ?? String(err)).split('\n')[0];
        const detail =
          name === 'webgpu' && /adapter/i.test(msg)
            ? 'no WebGPU adapter: Dawn found no Vulkan, Metal or D3D12 device (Linux: a GPU driver with Vulkan)'
            : msg.replace(/^.*?onnxruntime could not create a session on \[\w+\]: /, '').slice(0, 300);
        out.push({ name, available: false, detail });
      }
    }
    return out;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
