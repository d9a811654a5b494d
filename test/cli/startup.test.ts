// The CLI checks a command line without loading TensorFlow.js, so it writes out two lists that the
// engine owns; they must agree.
import { describe, expect, it } from 'vitest';
import { EXPORT_FORMAT_CHOICES } from '../../src-main/cli/adapters.ts';
import { BACKEND_CHOICES, ENGINE_CHOICES, PROVIDER_CHOICES } from '../../src-main/cli/common.ts';
import { PROVIDER_CHOICES as ENGINE_PROVIDERS } from '../../src-main/engine/onnx/providers.ts';
import { INFERENCE_ENGINES } from '../../src-main/engine/pipeline/stableDiffusion.ts';
import { EXPORT_FORMATS } from '../../src-main/engine/adapters/exportAdapter.ts';
import { BACKEND_NAMES } from '../../src-main/engine/backend/tf.ts';

describe('CLI choice lists', () => {
  it('--backend offers auto and every engine backend', () =>
    expect([...BACKEND_CHOICES]).toEqual(['auto', ...BACKEND_NAMES]));
  it('--engine and --provider offer what the engine knows', () => {
    expect([...ENGINE_CHOICES]).toEqual([...INFERENCE_ENGINES]);
    expect([...PROVIDER_CHOICES]).toEqual([...ENGINE_PROVIDERS]);
  });
  it('--format offers every export format', () => expect([...EXPORT_FORMAT_CHOICES]).toEqual([...EXPORT_FORMATS]));
});
