/**
 * The one file that imports TensorFlow.js packages.
 *
 * Everything else in the engine gets `tf` (and the tensor types) from here, so the choice of
 * backend is made in one place, once per process:
 *
 *   tensorflow (tfjs-node-gpu, CUDA 11.2 / cuDNN 8)  ->  webgpu (Dawn in Node: Vulkan, Metal, D3D12)
 *     ->  wasm (XNNPACK, one thread in Node)  ->  cpu (plain JS)
 *
 * `SINGLORA_BACKEND` or an explicit request forces one; a forced backend that cannot start is an
 * error that says why. Never a silent fallback.
 *
 * Design note: after `initBackend` picked webgpu, tensors must be read with `await t.data()`.
 * A synchronous read (or a switch away from webgpu) needs `OffscreenCanvas`, which Node lacks.
 *
 * Design note: TensorFlow.js is loaded on the first use of `tf`, not when this file is imported.
 * The model definitions and the adapters import `tf` for their TensorFlow.js executor, and the
 * ONNX Runtime executor reads the same definitions; so that ONNX Runtime inference loads no
 * TensorFlow.js (tens of MB and its kernels), `tf` is a stand-in that `require`s the package the
 * first time one of its members is read. `tfjsLoaded()` says whether that has happened (tests).
 */
import type * as TF from '@tensorflow/tfjs';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { delimiter, join } from 'node:path';
import { TENSOR_BACKENDS } from '../../api/schemas.ts';

const require = createRequire(import.meta.url);
let loaded: typeof TF | null = null;

/** `@tensorflow/tfjs`, loaded (once) now. */
function loadTfjs(): typeof TF {
  if (!loaded) {
    loaded = require('@tensorflow/tfjs') as typeof TF;
    // Production mode: no debug checks, and no "install tfjs-node" banner on the cpu backend (this
    // engine chooses its backend deliberately; `singlora doctor` explains the choice).
    loaded.enableProdMode();
  }
  return loaded;
}

/** True once `tf` has been used in this process (TensorFlow.js is then loaded). */
export function tfjsLoaded(): boolean {
  return loaded !== null;
}

/** The `@tensorflow/tfjs` namespace, loaded on the first read of any member. */
const tf: typeof TF = new Proxy({} as typeof TF, {
  get: (_, key) => Reflect.get(loadTfjs(), key),
  has: (_, key) => Reflect.has(loadTfjs(), key),
});

/** The package's types under `tf.` as well (`tf.Tensor`, `tf.TensorInfo`, …), for type positions. */
declare namespace tf {
  export type Tensor<R extends TF.Rank = TF.Rank> = TF.Tensor<R>;
  export type Tensor1D = TF.Tensor1D;
  export type Tensor2D = TF.Tensor2D;
  export type Tensor4D = TF.Tensor4D;
  export type Scalar = TF.Scalar;
  export type Variable<R extends TF.Rank = TF.Rank> = TF.Variable<R>;
  export type DataType = TF.DataType;
  export type TensorInfo = TF.TensorInfo;
  export type KernelConfig = TF.KernelConfig;
  export type GradSaveFunc = TF.GradSaveFunc;
}

export { tf };
export type Tensor = TF.Tensor;
export type Tensor1D = TF.Tensor1D;
export type Tensor2D = TF.Tensor2D;
export type Tensor3D = TF.Tensor3D;
export type Tensor4D = TF.Tensor4D;
export type Variable = TF.Variable;
export type Rank = TF.Rank;
export type DataType = TF.DataType;
export type NamedTensorMap = TF.NamedTensorMap;
export type TensorContainer = TF.TensorContainer;

/** The backends this file starts: the API's list (the CLI checks `--backend` against it without loading TensorFlow.js). */
export const BACKEND_NAMES = TENSOR_BACKENDS;
export type BackendName = (typeof BACKEND_NAMES)[number];

export interface BackendStatus {
  name: BackendName;
  available: boolean;
  /** Why it cannot be used (when `available` is false), or a note (software adapter, etc.). */
  reason?: string;
  device?: string;
  memoryBytes?: number;
  /** True for software rasterisers such as SwiftShader: usable when forced, never auto-picked. */
  software?: boolean;
}

export interface BackendInfo {
  name: BackendName;
  device?: string;
  forced: boolean;
}

let active: BackendInfo | null = null;
let pending: Promise<BackendInfo> | null = null;

export function isBackendName(s: string): s is BackendName {
  return (BACKEND_NAMES as readonly string[]).includes(s);
}

/** The backend this process runs on, or null before `initBackend`. */
export function activeBackend(): BackendInfo | null {
  return active;
}

/**
 * Picks and starts the backend, once per process. A second call with a different forced backend
 * is an error, because switching away from webgpu is impossible in Node.
 */
export function initBackend(requested?: BackendName | 'auto'): Promise<BackendInfo> {
  const fromEnv = process.env.SINGLORA_BACKEND?.trim();
  let want: BackendName | 'auto' = requested ?? 'auto';
  if (want === 'auto' && fromEnv) {
    if (!isBackendName(fromEnv)) {
      return Promise.reject(
        new Error(`SINGLORA_BACKEND=${fromEnv} is not a backend; expected one of ${BACKEND_NAMES.join(', ')}`),
      );
    }
    want = fromEnv;
  }
  if (active || pending) {
    const current = pending ?? Promise.resolve(active!);
    return current.then((info) => {
      if (want !== 'auto' && want !== info.name) {
        throw new Error(
          `backend already started as '${info.name}' in this process; cannot switch to '${want}' (start a new process with --backend ${want})`,
        );
      }
      return info;
    });
  }
  pending = (want === 'auto' ? pickAuto() : startForced(want)).then(
    (info) => {
      active = info;
      pending = null;
      return info;
    },
    (err: unknown) => {
      pending = null;
      throw err;
    },
  );
  return pending;
}

async function startForced(name: BackendName): Promise<BackendInfo> {
  const status = await start(name, true);
  if (!status.available) {
    throw new Error(`backend '${name}' was requested but cannot start: ${status.reason}`);
  }
  return { name, device: status.device, forced: true };
}

async function pickAuto(): Promise<BackendInfo> {
  const reasons: string[] = [];
  for (const name of BACKEND_NAMES) {
    const status = await start(name, false);
    if (status.available) return { name, device: status.device, forced: false };
    reasons.push(`${name}: ${status.reason}`);
  }
  throw new Error(`no TensorFlow.js backend could start:\n  ${reasons.join('\n  ')}`);
}

/** Tries to start one backend and make it current. */
async function start(name: BackendName, forced: boolean): Promise<BackendStatus> {
  switch (name) {
    case 'tensorflow': {
      const probe = probeTensorflow();
      if (!probe.available) return probe;
      try {
        await import('@tensorflow/tfjs-node-gpu' as string);
      } catch (err) {
        return { name, available: false, reason: `tfjs-node-gpu failed to load: ${firstLine(err)}` };
      }
      return (await setBackend(name))
        ? probe
        : { name, available: false, reason: 'tf.setBackend("tensorflow") returned false' };
    }
    case 'webgpu': {
      const probe = await probeWebgpu();
      if (!probe.available) return probe;
      if (probe.software && !forced) {
        return {
          ...probe,
          available: false,
          reason: `only a software adapter (${probe.device}); force it with --backend webgpu`,
        };
      }
      try {
        await import('@tensorflow/tfjs-backend-webgpu');
      } catch (err) {
        return { name, available: false, reason: `tfjs-backend-webgpu failed to load: ${firstLine(err)}` };
      }
      return (await setBackend(name))
        ? probe
        : { name, available: false, reason: 'tf.setBackend("webgpu") returned false' };
    }
    case 'wasm': {
      try {
        await import('@tensorflow/tfjs-backend-wasm');
      } catch (err) {
        return { name, available: false, reason: `tfjs-backend-wasm failed to load: ${firstLine(err)}` };
      }
      // setBackend('wasm') can silently leave cpu current, so check both the result and the name.
      const ok = await setBackend(name);
      if (ok) {
        installTransposeFreeGradients();
        installCopyFreeKernels();
      }
      return ok
        ? { name, available: true, device: 'WebAssembly (XNNPACK, 1 thread)' }
        : { name, available: false, reason: 'tf.setBackend("wasm") returned false' };
    }
    case 'cpu':
      return (await setBackend(name))
        ? { name, available: true, device: 'JavaScript' }
        : { name, available: false, reason: 'tf.setBackend("cpu") returned false' };
  }
}

async function setBackend(name: BackendName): Promise<boolean> {
  try {
    const ok = await tf.setBackend(name);
    await tf.ready();
    return ok && tf.getBackend() === name;
  } catch {
    return false;
  }
}

/** Reports every backend without starting any (used by `singlora doctor`). */
export async function probeBackends(): Promise<BackendStatus[]> {
  const wasmOk = resolvable('@tensorflow/tfjs-backend-wasm');
  return [
    probeTensorflow(),
    await probeWebgpu(),
    wasmOk
      ? { name: 'wasm', available: true, device: 'WebAssembly (XNNPACK, 1 thread), heap limit 4 GiB' }
      : { name: 'wasm', available: false, reason: '@tensorflow/tfjs-backend-wasm is not installed' },
    { name: 'cpu', available: true, device: 'JavaScript' },
  ];
}

function probeTensorflow(): BackendStatus {
  const name = 'tensorflow' as const;
  if (!resolvable('@tensorflow/tfjs-node-gpu')) {
    return {
      name,
      available: false,
      reason:
        '@tensorflow/tfjs-node-gpu is not installed: it is an optional dependency whose install script downloads libtensorflow, and npm drops it without a word when that download fails (no network, no build for this platform); run `npm install --foreground-scripts` with network access to install it and see its download (it also needs CUDA 11.2 and cuDNN 8)',
    };
  }
  for (const lib of ['libcudart.so.11.0', 'libcudnn.so.8']) {
    if (process.platform === 'linux' && !findSharedLibrary(lib)) {
      return {
        name,
        available: false,
        reason: `${lib} not found (install CUDA 11.2 and cuDNN 8, or add their lib folder to LD_LIBRARY_PATH)`,
      };
    }
  }
  const gpu = nvidiaSmi();
  if (!gpu) return { name, available: false, reason: 'no CUDA GPU found (nvidia-smi did not list one)' };
  return { name, available: true, device: gpu.name, memoryBytes: gpu.memoryBytes };
}

let webgpuAdapter: Promise<BackendStatus> | null = null;

function probeWebgpu(): Promise<BackendStatus> {
  webgpuAdapter ??= (async (): Promise<BackendStatus> => {
    const name = 'webgpu' as const;
    if (process.platform === 'linux' && !findSharedLibrary('libvulkan.so.1')) {
      return {
        name,
        available: false,
        reason: 'libvulkan.so.1 not found (install the Vulkan loader, e.g. apt install libvulkan1, and a GPU driver)',
      };
    }
    let mod: { create: (opts: string[]) => unknown; globals: Record<string, unknown> };
    try {
      mod = require('webgpu');
    } catch (err) {
      return { name, available: false, reason: `the 'webgpu' package (dawn.node) failed to load: ${firstLine(err)}` };
    }
    Object.assign(globalThis, mod.globals);
    const g = globalThis as { navigator?: { gpu?: unknown } };
    const gpu = mod.create([]) as {
      requestAdapter(o?: object): Promise<null | {
        info?: {
          vendor?: string;
          architecture?: string;
          device?: string;
          description?: string;
          isFallbackAdapter?: boolean;
        };
        isFallbackAdapter?: boolean;
        limits?: { maxBufferSize?: number };
      }>;
    };
    if (!g.navigator)
      Object.defineProperty(globalThis, 'navigator', { value: { gpu }, configurable: true, writable: true });
    else if (!g.navigator.gpu) Object.defineProperty(g.navigator, 'gpu', { value: gpu, configurable: true });
    let adapter: Awaited<ReturnType<typeof gpu.requestAdapter>>;
    try {
      adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
    } catch (err) {
      return { name, available: false, reason: `requestAdapter failed: ${firstLine(err)}` };
    }
    if (!adapter)
      return { name, available: false, reason: 'no WebGPU adapter (Dawn found no Vulkan, Metal or D3D12 device)' };
    const info = adapter.info ?? {};
    const device =
      [info.vendor, info.description || info.device || info.architecture].filter(Boolean).join(' ') ||
      'unknown adapter';
    const software =
      Boolean(info.isFallbackAdapter ?? adapter.isFallbackAdapter) || /swiftshader|llvmpipe|software/i.test(device);
    return { name, available: true, device, software, memoryBytes: adapter.limits?.maxBufferSize };
  })();
  return webgpuAdapter;
}

function resolvable(pkg: string): boolean {
  try {
    require.resolve(pkg);
    return true;
  } catch {
    return false;
  }
}

function findSharedLibrary(lib: string): boolean {
  const dirs = [
    ...(process.env.LD_LIBRARY_PATH ?? '').split(delimiter).filter(Boolean),
    '/usr/local/cuda/lib64',
    '/usr/lib/x86_64-linux-gnu',
    '/usr/lib64',
    '/usr/lib',
  ];
  if (dirs.some((d) => existsSync(join(d, lib)))) return true;
  try {
    return execFileSync('ldconfig', ['-p'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).includes(lib);
  } catch {
    return false;
  }
}

function nvidiaSmi(): { name: string; memoryBytes: number } | null {
  try {
    const out = execFileSync('nvidia-smi', ['--query-gpu=name,memory.total', '--format=csv,noheader,nounits'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
      timeout: 5000,
    });
    const [first] = out.trim().split('\n');
    if (!first) return null;
    const [gpuName, mib] = first.split(',').map((s) => s.trim());
    return { name: gpuName, memoryBytes: Number(mib) * 1024 * 1024 };
  } catch {
    return null;
  }
}

function firstLine(err: unknown): string {
  const msg = err instanceof Error ? err.message : String(err);
  return msg.split('\n')[0];
}

/** Tensor and memory counters for `doctor` and progress events. */
export function memoryCounters(): {
  numTensors: number;
  numBytes: number;
  backend: string | null;
  rssBytes: number;
  wasmHeapBytes?: number;
} {
  const m = tf.memory();
  const backendName = active?.name ?? null;
  const out: ReturnType<typeof memoryCounters> = {
    numTensors: m.numTensors,
    numBytes: m.numBytes,
    backend: backendName,
    rssBytes: process.memoryUsage().rss,
  };
  if (backendName === 'wasm') {
    const wasm = (tf.backend() as unknown as { wasm?: { HEAPU8?: Uint8Array } }).wasm;
    if (wasm?.HEAPU8) out.wasmHeapBytes = wasm.HEAPU8.length;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Gradients for wasm
//
// tfjs-core's default gradients of BatchMatMul use matMul(.., transposeA/transposeB) and that of
// Conv2D uses Conv2DBackpropInput. On wasm both are slow paths: a transposed matMul is ~10x
// slower than a matMul after an explicit transpose, and Conv2DBackpropInput is a plain loop
// while Conv2D runs on XNNPACK (measured on tiny-a's UNet: backward was 8x the forward).
// The same gradients, written with explicit transposes and a forward convolution of the
// flipped filter, are installed once the wasm backend is chosen. Mathematically identical;
// anything outside the common case falls back to the default.

let transposeFreeInstalled = false;

function swapLastTwo(t: TF.Tensor): TF.Tensor {
  const perm = t.shape.map((_, i) => i);
  [perm[t.rank - 2], perm[t.rank - 1]] = [perm[t.rank - 1], perm[t.rank - 2]];
  return tf.transpose(t, perm);
}

/** Symmetric-or-not explicit padding [top, bottom, left, right] of a stride-1 NHWC Conv2D, or null. */
function convPadding(pad: unknown, kh: number, kw: number): [number, number, number, number] | null {
  if (pad === 'valid') return [0, 0, 0, 0];
  if (pad === 'same')
    return [
      Math.floor((kh - 1) / 2),
      kh - 1 - Math.floor((kh - 1) / 2),
      Math.floor((kw - 1) / 2),
      kw - 1 - Math.floor((kw - 1) / 2),
    ];
  if (typeof pad === 'number') return [pad, pad, pad, pad];
  if (Array.isArray(pad) && pad.length === 4) return [pad[1][0], pad[1][1], pad[2][0], pad[2][1]];
  return null;
}

function installTransposeFreeGradients(): void {
  if (transposeFreeInstalled) return;
  transposeFreeInstalled = true;
  const matMulDefault = tf.getGradient('BatchMatMul');
  const convDefault = tf.getGradient('Conv2D');
  tf.registerGradient({
    kernelName: 'BatchMatMul',
    inputsToSave: ['a', 'b'],
    gradFunc: (dy, saved, attrs) => {
      const [a, b] = saved;
      const { transposeA, transposeB } = attrs as { transposeA: boolean; transposeB: boolean };
      const sameBatch =
        a.rank === b.rank &&
        a.rank === (dy as tf.Tensor).rank &&
        a.shape.slice(0, -2).every((d, i) => d === b.shape[i]);
      if (transposeA || transposeB || !sameBatch) return matMulDefault.gradFunc(dy, saved, attrs);
      return {
        a: () => tf.matMul(dy as tf.Tensor, swapLastTwo(b)), // dA = dY B^T
        b: () => tf.matMul(swapLastTwo(a), dy as tf.Tensor), // dB = A^T dY
      };
    },
  });
  tf.registerGradient({
    kernelName: 'Conv2D',
    inputsToSave: ['x', 'filter'],
    gradFunc: (dy, saved, attrs) => {
      const [x, filter] = saved;
      const { strides, dilations, pad, dataFormat } = attrs as {
        strides: number | number[];
        dilations: number | number[];
        pad: unknown;
        dataFormat: string;
      };
      const defaults = convDefault.gradFunc(dy, saved, attrs);
      const ones = (v: number | number[]) => (Array.isArray(v) ? v.every((n) => n === 1) : v === 1);
      const [kh, kw] = filter.shape as number[];
      const p = convPadding(pad, kh, kw);
      if (
        !ones(strides) ||
        !ones(dilations) ||
        dataFormat !== 'NHWC' ||
        !p ||
        p[0] > kh - 1 ||
        p[1] > kh - 1 ||
        p[2] > kw - 1 ||
        p[3] > kw - 1
      )
        return defaults;
      return {
        ...defaults,
        // dX = conv(dY, W rotated 180 degrees with in/out swapped), padded k-1-p on each side.
        x: () => {
          const flipped = tf.transpose(tf.reverse(filter, [0, 1]), [0, 1, 3, 2]) as tf.Tensor4D; // [kh, kw, out, in]
          const dx = tf.conv2d(dy as tf.Tensor4D, flipped, 1, [
            [0, 0],
            [kh - 1 - p[0], kh - 1 - p[1]],
            [kw - 1 - p[2], kw - 1 - p[3]],
            [0, 0],
          ]);
          return dx.shape.every((d, i) => d === x.shape[i]) ? dx : (defaults.x as () => tf.Tensor)();
        },
      };
    },
  });
}

// ---------------------------------------------------------------------------------------------
// Copy-free Identity, Slice and SplitV for wasm
//
// tfjs-backend-wasm 4.22's Identity copies the whole buffer, and the engine clones (Identity)
// every tensor the tape saves for the backward pass: on wasm each saved activation and weight
// was held twice, and copied on every step (1.8 s of a tiny-b 256 px step's CPU time). The cpu
// and webgl backends share the buffer instead (tensor data is immutable), which is what the
// Identity below does. Its Slice (and SplitV, which calls it directly) first copies the whole
// input out of the heap (`readSync`) for every piece: splitting a tensor into n pieces copied it
// n times (the gradient of every concat is a split). The Slice below reads the heap in place.

type WasmBackendInternals = {
  incRef(dataId: unknown): void;
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  typedArrayFromHeap(t: tf.TensorInfo): Float32Array | Int32Array | Uint8Array;
};

let copyFreeInstalled = false;

/** out = x[begin : begin + size], copied run by run (a run: the innermost axis's extent). */
function sliceFromHeap(
  x: tf.TensorInfo,
  begin: number[],
  size: number[],
  backend: WasmBackendInternals,
): TF.TensorInfo {
  const out = backend.makeOutput(size, x.dtype); // may grow the heap: take the views after it
  const xv = backend.typedArrayFromHeap(x);
  const ov = backend.typedArrayFromHeap(out);
  const rank = x.shape.length;
  if (rank === 0) {
    ov.set(xv);
    return out;
  }
  const strides: number[] = new Array(rank).fill(1);
  for (let i = rank - 2; i >= 0; i--) strides[i] = strides[i + 1] * x.shape[i + 1];
  // Merge the trailing axes the slice takes whole into one contiguous run.
  let runAxis = rank - 1;
  while (runAxis > 0 && size[runAxis] === x.shape[runAxis] && begin[runAxis] === 0) runAxis--;
  const run = size.slice(runAxis).reduce((a, b) => a * b, 1);
  const total = size.reduce((a, b) => a * b, 1);
  if (total === 0) return out;
  const idx: number[] = new Array(runAxis).fill(0);
  for (let o = 0; o < total; o += run) {
    let offset = begin[runAxis] * strides[runAxis];
    for (let i = 0; i < runAxis; i++) offset += (begin[i] + idx[i]) * strides[i];
    ov.set(xv.subarray(offset, offset + run), o);
    for (let i = runAxis - 1; i >= 0; i--) {
      if (++idx[i] < size[i]) break;
      idx[i] = 0;
    }
  }
  return out;
}

function installCopyFreeKernels(): void {
  if (copyFreeInstalled) return;
  copyFreeInstalled = true;
  const original = (name: string) => tf.getKernel(name, 'wasm')!;
  const identityDefault = original('Identity');
  const sliceDefault = original('Slice');
  const splitDefault = original('SplitV');
  const replace = (config: tf.KernelConfig) => {
    tf.unregisterKernel(config.kernelName, 'wasm');
    tf.registerKernel(config);
  };
  replace({
    kernelName: 'Identity',
    backendName: 'wasm',
    kernelFunc: (args) => {
      const x = args.inputs.x as tf.TensorInfo;
      if (x.dtype === 'string') return identityDefault.kernelFunc(args);
      (args.backend as unknown as WasmBackendInternals).incRef(x.dataId);
      return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
    },
  });
  replace({
    kernelName: 'Slice',
    backendName: 'wasm',
    kernelFunc: (args) => {
      const x = args.inputs.x as tf.TensorInfo;
      if (x.dtype === 'string') return sliceDefault.kernelFunc(args);
      const { begin, size } = args.attrs as unknown as { begin: number | number[]; size: number | number[] };
      const [b, sz] = tf.slice_util.parseSliceParams(x as tf.Tensor, begin, size);
      return sliceFromHeap(x, b, sz, args.backend as unknown as WasmBackendInternals);
    },
  });
  replace({
    kernelName: 'SplitV',
    backendName: 'wasm',
    kernelFunc: (args) => {
      const x = args.inputs.x as tf.TensorInfo;
      if (x.dtype === 'string') return splitDefault.kernelFunc(args);
      const { numOrSizeSplits, axis } = args.attrs as unknown as { numOrSizeSplits: number | number[]; axis: number };
      const ax = tf.util.parseAxisParam(axis, x.shape)[0];
      const sizes = tf.backend_util.prepareSplitSize(x as tf.Tensor, numOrSizeSplits, ax);
      const begin = new Array(x.shape.length).fill(0);
      return sizes.map((n) => {
        const size = [...x.shape];
        size[ax] = n;
        const piece = sliceFromHeap(x, [...begin], size, args.backend as unknown as WasmBackendInternals);
        begin[ax] += n;
        return piece;
      });
    },
  });
}
