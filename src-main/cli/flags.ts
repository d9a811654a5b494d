/**
 * How the CLI spells the settings of api/schemas.ts: one table per settings schema, naming only the
 * fields whose flag differs from the kebab-case of their name (the names users' scripts already
 * use). Everything else about an option (choices, bounds, default, help) comes from the schema
 * (cli/schemaOptions.ts). Loads nothing but the schemas' types.
 */
import type { GenerateSettingsInput, TrainSettingsInput } from '../api/schemas.ts';
import type { FlagSpelling } from './schemaOptions.ts';

/**
 * How `train` spells the training settings (api/schemas.ts trainSettingsSchema), where it differs
 * from the kebab-case of the field's name: the names users' scripts already use. Everything else
 * about each option (choices, bounds, default, help) comes from the schema.
 */
export const TRAIN_FLAGS: Partial<Record<keyof TrainSettingsInput, FlagSpelling>> = {
  method: { flag: '--method <m>' },
  steps: { flag: '--steps <n>', note: 'with --resume: the new total, to extend a run' },
  rank: { flag: '--rank <r>' },
  alpha: { flag: '--alpha <a>' },
  rampSteps: { flag: '--ramp <T>' },
  initStd: { flag: '--init-std <s>' },
  learningRate: { flag: '--lr <lr>' },
  lrSchedule: { flag: '--lr-schedule <s>' },
  warmupSteps: { flag: '--warmup <steps>' },
  resolution: { flag: '--resolution <px>' },
  batchSize: { flag: '--batch <n>' },
  gradientAccumulation: { flag: '--grad-accum <n>' },
  maxGradNorm: { flag: '--max-grad-norm <n>' },
  noiseOffset: { flag: '--noise-offset <x>' },
  minSnrGamma: { flag: '--min-snr-gamma <g>' },
  triggerToken: { flag: '--token <word>' },
  classWord: { flag: '--class <word>' },
  crop: { flag: '--crop <mode>' },
  classImagesDir: { flag: '--class-images <dir>' },
  priorLossWeight: { flag: '--prior-loss-weight <w>' },
  samplePrompts: { flag: '--sample-prompt <text>' },
  targets: { flag: '--target <pattern>' },
};

/**
 * How `generate` spells the sampling settings (api/schemas.ts generateSettingsSchema), where it
 * differs from the kebab-case of the field's name; choices, bounds, defaults and help come from the schema.
 */
export const SAMPLING_FLAGS: Partial<Record<keyof GenerateSettingsInput, FlagSpelling>> = {
  negativePrompt: { flag: '--negative <text>' },
  guidanceScale: { flag: '--guidance <g>' },
  seed: { flag: '--seed <n>', note: 'image i uses seed + i' },
  width: { flag: '--width <px>', defaultHelp: 'the model native size, 512 for SD 1.5' },
  height: { flag: '--height <px>', defaultHelp: 'the model native size' },
  negativePadding: { flag: '--negative-padding <mode>' },
};
