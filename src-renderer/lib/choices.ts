/**
 * The renderer's select options: the API's vocabularies (api/schemas.ts) with the words the screens
 * show for them. Each label table is a Record over its vocabulary, so a value added to the API
 * without a label is a compile error, and no screen keeps a list of its own.
 */
import type { Project } from '../../src-main/api/contract.ts';
import {
  CROP_MODES,
  DEFAULT_SUBJECT_TYPE,
  METHODS,
  type ProviderChoice,
  SAMPLER_DISPLAY_NAMES,
  type SCHEDULERS,
  SUBJECT_TYPES,
  trainSettingsSchema,
} from '../../src-main/api/schemas.ts';

type Choice<T extends string> = { value: T; label: string };
const choices = <T extends string>(values: readonly T[], labels: Record<T, string>): Array<Choice<T>> =>
  values.map((value) => ({ value, label: labels[value] }));

/** The contract's sampler ids with the names A1111 users know. */
export const SAMPLER_LABELS: Record<(typeof SCHEDULERS)[number], string> = SAMPLER_DISPLAY_NAMES;

export const METHOD_CHOICES = choices(METHODS, { singlora: 'SingLoRA (one matrix, A·Aᵀ)', lora: 'LoRA (B·A)' });
/** A method's name in tables. */
export const METHOD_NAMES: Record<(typeof METHODS)[number], string> = { singlora: 'SingLoRA', lora: 'LoRA' };

export const SUBJECT_TYPE_CHOICES = choices(SUBJECT_TYPES, { live: 'Live (person, pet)', object: 'Object' });

export type CropMode = (typeof CROP_MODES)[number];
const CROP_WORDS: Record<CropMode, { label: string; hint: string }> = {
  center: { label: 'Center', hint: 'the middle square of each photo' },
  attention: { label: 'Attention', hint: 'the square around the most detailed part' },
  none: { label: 'Whole photo', hint: 'no crop: fitted into the square, the rest padded' },
};
/** The crop choices as the Subject screen offers them. */
export const CROP_CHOICES: ReadonlyArray<{ value: CropMode; label: string; hint: string }> = CROP_MODES.map(
  (value) => ({ value, ...CROP_WORDS[value] }),
);

/** A new project's subject: the training settings' defaults and the API's default subject type. */
export function newSubject(): Project['subject'] {
  const { triggerToken, classWord } = trainSettingsSchema.parse({});
  return { triggerToken, classWord, type: DEFAULT_SUBJECT_TYPE };
}

/** ONNX Runtime's execution providers by their product names. */
export const PROVIDER_NAMES: Record<Exclude<ProviderChoice, 'auto'>, string> = {
  cpu: 'CPU',
  webgpu: 'WebGPU',
  cuda: 'CUDA',
  dml: 'DirectML',
  coreml: 'CoreML',
};

/**
 * Where a run's steps ran, from its run.json (`backend` is the engine for ONNX Runtime runs; the
 * provider and compute type come with the first step): "WebGPU (ONNX Runtime, float16)"; null
 * before the first step and for runs that predate the record.
 */
export function trainingDevice(m: { backend: string; provider?: string; dtype?: string }): string | null {
  if (!m.provider) return null;
  const dtype = m.dtype ?? 'float32';
  if (m.backend !== 'onnx') return `the ${m.provider} backend (TensorFlow.js, ${dtype})`;
  const names = m.provider.split('+').map((p) => PROVIDER_NAMES[p as keyof typeof PROVIDER_NAMES] ?? p);
  return `${names.join(' + ')} (ONNX Runtime, ${dtype})`;
}
