/**
 * Text encoder parity on the plain-JS cpu backend (one backend per process, hence its own file):
 * `text.last_hidden_state` within 1e-4 * max|ref| for every PARITY_FIXTURES folder with text cases.
 * The full set of outputs is checked on wasm in textEncoder.parity.test.ts.
 */
import { basename, join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { tf } from '../../src-main/engine/backend/tf.ts';
import { ClipTextModel } from '../../src-main/engine/models/clipTextModel.ts';
import { expectNoLeak, maxAbsDiff, useBackend } from '../helpers/backend.ts';
import { Cases, parityFolders, skipNote } from '../helpers/fixtures.ts';

useBackend('cpu');

const TOLERANCE = 1e-4; // relative to max|ref|

const folders = await Promise.all(
  parityFolders().map(async (folder) => {
    const cases = await Cases.open(folder);
    return { folder, cases, hasText: cases.has('text.input_ids') && cases.has('text.last_hidden_state') };
  }),
);

for (const { folder, cases, hasText } of folders) {
  describe(`text encoder parity (cpu): ${basename(folder)}`, () => {
    afterAll(() => cases.close());
    if (!hasText) {
      it.skip(skipNote(folder, 'text.* cases in cases.safetensors'), () => {});
      return;
    }

    it('last_hidden_state', async () => {
      const model = await ClipTextModel.load(join(folder, 'model', 'text_encoder'));
      const input = await cases.getInt('text.input_ids');
      const ids = tf.tensor2d(input.data, input.shape as [number, number], 'int32');
      try {
        const ref = await cases.get('text.last_hidden_state');
        await expectNoLeak(async () => {
          const out = model.forward(ids);
          try {
            expect(out.last_hidden_state.shape).toEqual(ref.shape);
            const { maxAbs, maxRef, rel } = maxAbsDiff(await out.last_hidden_state.data(), ref.data);
            console.log(
              `[parity cpu] text.last_hidden_state: max abs ${maxAbs.toExponential(2)}, max|ref| ${maxRef.toFixed(3)}, rel ${rel.toExponential(2)}`,
            );
            expect(rel, 'text.last_hidden_state: max|a - ref| / max|ref|').toBeLessThanOrEqual(TOLERANCE);
          } finally {
            tf.dispose([out.last_hidden_state, out.pooler_output]);
          }
        });
      } finally {
        model.dispose();
        ids.dispose();
      }
    });
  });
}
