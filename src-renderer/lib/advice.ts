/** What to tell the user about a failure: the message, and a fix where we know one. */
import { ApiError } from '../../src-main/api/contract.ts';
import { computeSettingsSchema } from '../../src-main/api/schemas.ts';

export function messageOf(err: unknown): string {
  if (err instanceof Error) return err.message;
  return typeof err === 'string' ? err : JSON.stringify(err);
}

export function isOutOfMemory(text: string): boolean {
  return /\bOOM\b|out of memory|memory/i.test(text);
}

export const MEMORY_HINT =
  'Out of memory: lower the resolution (e.g. 384), use batch size 1 and turn on gradient checkpointing (Advanced).';

/** A one-line fix for well-known failures, or null. */
export function hintFor(err: unknown): string | null {
  const text = messageOf(err);
  if (err instanceof ApiError && err.code === 'unauthorized') {
    return 'The session token is missing or expired: open the link that `singlora serve` printed again.';
  }
  if (err instanceof ApiError && err.code === 'engine_crashed')
    return 'The engine stopped; it restarts on its own. Try again in a moment.';
  if (isOutOfMemory(text)) return MEMORY_HINT;
  return null;
}

export interface BackendAdvice {
  level: 'warning' | 'error';
  message: string;
  fix: string;
}

interface DoctorLike {
  /** ONNX Runtime providers (absent from servers that predate them). */
  providers?: Array<{ name: string; available: boolean; detail: string; training?: { ok: boolean; detail: string } }>;
  backends: Array<{ name: string; available: boolean; software?: boolean }>;
  selected: { name: string; device?: string } | { error: string };
}

const GPU_FIX =
  'For an NVIDIA GPU install CUDA 11.2 + cuDNN 8 (used by tfjs-node-gpu); otherwise install a current Vulkan, Metal or D3D12 graphics driver for WebGPU, then restart the app.';

const PROVIDER_FIX =
  'Install a current graphics driver with Vulkan (Linux), D3D12 (Windows) or Metal (macOS) for WebGPU, or CUDA 12 for the CUDA provider (Linux x64, Windows); then check again in Models & Settings.';

/**
 * What `system.doctor` means for training speed with the chosen engine (`compute`, settings.get;
 * null: a server without settings.*, which trains on ONNX Runtime, auto); null when training runs
 * on a GPU.
 */
export function backendAdvice(
  doctor: DoctorLike | null,
  compute: { engine: string; provider: string } | null = null,
): BackendAdvice | null {
  if (!doctor) return null;
  const { engine, provider } = compute ?? computeSettingsSchema.parse({});
  if (engine === 'onnx' && doctor.providers) return providerAdvice(doctor.providers, provider);
  return tfjsAdvice(doctor);
}

/** The onnx engine: does the chosen provider (or, for auto, any GPU provider) train here? */
function providerAdvice(providers: NonNullable<DoctorLike['providers']>, provider: string): BackendAdvice | null {
  if (provider === 'cpu')
    return {
      level: 'warning',
      message: 'Training runs on the CPU provider (chosen in Models & Settings) and will be slow for large models.',
      fix: 'Choose auto or a GPU provider that trains in Models & Settings.',
    };
  if (provider !== 'auto') {
    const p = providers.find((x) => x.name === provider);
    if (p?.available && p.training?.ok) return null;
    return {
      level: 'error',
      message: `The ${provider} provider chosen in Models & Settings cannot train here: ${p ? (p.training?.detail ?? p.detail) : 'not reported'}.`,
      fix: 'Choose auto (a GPU provider that starts, else the CPU) or another provider in Models & Settings.',
    };
  }
  // auto never picks a software WebGPU adapter (SwiftShader, llvmpipe): doctor's detail says "software".
  const gpu = providers.some((p) => p.name !== 'cpu' && p.available && p.training?.ok && !/software/.test(p.detail));
  if (gpu) return null;
  return {
    level: 'warning',
    message:
      "No GPU provider can train here: training runs on ONNX Runtime's CPU provider and will be slow (hours for a few hundred steps of SD 1.5).",
    fix: PROVIDER_FIX,
  };
}

/** The tfjs engine: the TensorFlow.js backend the engine selected. */
function tfjsAdvice(doctor: DoctorLike): BackendAdvice | null {
  const s = doctor.selected;
  if ('error' in s) return { level: 'error', message: `No compute backend could start: ${s.error}`, fix: GPU_FIX };
  const entry = doctor.backends.find((b) => b.name === s.name);
  if (s.name === 'wasm' || s.name === 'cpu') {
    return {
      level: 'warning',
      message: `No GPU found: training runs on the ${s.name === 'wasm' ? 'WebAssembly' : 'JavaScript CPU'} backend and will be very slow (hours for a few hundred steps).`,
      fix: GPU_FIX,
    };
  }
  if (entry?.software)
    return {
      level: 'warning',
      message: `The ${s.name} backend runs on a software adapter (${s.device ?? 'no hardware GPU'}): training will be slow.`,
      fix: GPU_FIX,
    };
  return null;
}
