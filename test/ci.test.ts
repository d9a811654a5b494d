/**
 * The CI contract of the test suites: `.ci/run` installs what the `[needs ...]` suites need, checks
 * it is there (at the path the suites look in), and runs them under CI=true, where such a suite
 * fails instead of skipping.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { LAVAPIPE_ICD, needsNote, SWIFTSHADER, skipReason } from './helpers/ciRequirements.ts';

const RUN = readFileSync(join(import.meta.dirname, '../.ci/run'), 'utf8');

describe('CI and the suites that need Chromium, SwiftShader, lavapipe or redis-server', () => {
  it('.ci/run installs chromium, checks the SwiftShader driver where the suites look, and sets CI=true', () => {
    expect(RUN).toMatch(/apt-get install -y -qq chromium/);
    expect(RUN).toContain(`SWIFTSHADER=${SWIFTSHADER}`);
    expect(RUN).toMatch(/\[ -e "\$SWIFTSHADER" \] \|\| \{/);
    expect(RUN).toMatch(/command -v chromium .*\|\| \{/);
    expect(RUN).toMatch(/^export CI=true$/m);
  });

  it('.ci/run installs redis-server and checks it is there (the queue suites fail without it under CI)', () => {
    expect(RUN).toMatch(/apt-get install -y -qq [^\n]*\bredis-server\b/);
    expect(RUN).toMatch(/command -v redis-server .*\|\| \{/);
  });

  it('.ci/run fetches lavapipe where the float16 WebGPU test looks for it (scripts/fetch-lavapipe.sh fails loudly)', () => {
    expect(RUN).toMatch(
      /^\[ -e \.cache\/lavapipe\/lvp_icd\.json \] \|\| scripts\/fetch-lavapipe\.sh \.cache\/lavapipe$/m,
    );
    if (!process.env.SINGLORA_LAVAPIPE_ICD)
      expect(LAVAPIPE_ICD).toBe(join(import.meta.dirname, '..', '.cache', 'lavapipe', 'lvp_icd.json'));
    expect(readFileSync(join(import.meta.dirname, '../scripts/fetch-lavapipe.sh'), 'utf8')).toMatch(
      /^set -euo pipefail$/m,
    );
  });

  it('.ci/run runs the unit suites, then the rest (together: every suite of npm test)', () => {
    const unit = RUN.indexOf('npm run test:unit');
    const rest = RUN.indexOf('npx vitest run --project engine');
    expect(unit).toBeGreaterThan(RUN.indexOf('export CI=true'));
    expect(rest).toBeGreaterThan(unit);
  });

  it('a missing requirement is a tagged skip outside CI and a failure under CI', () => {
    expect(skipReason('chromium', 'no Chromium at /x', false)).toBe('[needs chromium] no Chromium at /x');
    expect(() => skipReason('swiftshader', 'no driver', true)).toThrow(
      /^\[needs swiftshader\] no driver\. CI installs swiftshader \(\.ci\/run\), so under CI=true this fails/,
    );
    expect(needsNote('chromium', 'r')).toBe('[needs chromium] r');
  });
});
