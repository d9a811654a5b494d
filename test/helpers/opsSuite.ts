/** The op cases as a vitest suite, for whichever backend the test file started. */
import { describe, expect, it } from 'vitest';
import { tf } from '../../src-main/engine/backend/tf.ts';
import { compareOpResults, referenceOpCases, runOpCases } from './opCases.ts';

export function opsSuite(backend: string): void {
  describe(`ops on ${backend}`, () => {
    it('layers, activations and gradients match plain-JavaScript references within 1e-5', async () => {
      expect(tf.getBackend()).toBe(backend);
      const before = tf.memory().numTensors;
      const worst = compareOpResults(await runOpCases(), referenceOpCases());
      expect(tf.memory().numTensors).toBe(before);
      console.log(
        `[ops ${backend}] worst relative error: ${Object.entries(worst)
          .map(([k, v]) => `${k} ${v.toExponential(1)}`)
          .join(', ')}`,
      );
      for (const [name, w] of Object.entries(worst)) expect(w, name).toBeLessThan(1e-5);
    });
  });
}
