/** What to tell the user about a failure: the message, and a fix where we know one. */
import { ApiError } from '../../src-main/api/contract.ts';

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
  backends: Array<{ name: string; available: boolean; software?: boolean }>;
  selected: { name: string; device?: string } | { error: string };
}

const GPU_FIX =
  'For an NVIDIA GPU install CUDA 11.2 + cuDNN 8 (used by tfjs-node-gpu); otherwise install a current Vulkan, Metal or D3D12 graphics driver for WebGPU, then restart the app.';

/** What `system.doctor` means for training speed; null when a GPU backend is selected. */
export function backendAdvice(doctor: DoctorLike | null): BackendAdvice | null {
  if (!doctor) return null;
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
