// The CLI checks a command line without loading TensorFlow.js, so it writes out lists that the
// engine owns; they must agree. (--engine and --provider read api/schemas.ts's ENGINES and PROVIDERS,
// as the engine does: no copy to keep in sync.)
import { describe, expect, it } from 'vitest';
import { EXPORT_FORMAT_CHOICES } from '../../src-main/cli/adapters.ts';
import { BACKEND_CHOICES } from '../../src-main/cli/common.ts';
import { EXPORT_FORMATS } from '../../src-main/engine/adapters/exportAdapter.ts';
import { BACKEND_NAMES } from '../../src-main/engine/backend/tf.ts';

describe('CLI choice lists', () => {
  it('--backend offers auto and every engine backend', () =>
    expect([...BACKEND_CHOICES]).toEqual(['auto', ...BACKEND_NAMES]));
  it('--format offers every export format', () => expect([...EXPORT_FORMAT_CHOICES]).toEqual([...EXPORT_FORMATS]));
});
