// The demo's training summary (issue 27 item 29): it compared two single-step losses
// ("loss 0.0267 -> 0.1271"), each at its own random timestep and noise, which read as if training
// had made the model worse. It reports the fixed-noise loss (the same batch before and after) and
// the moving average of the step loss instead.
import { describe, expect, it } from 'vitest';
import { lossLine, lossSummary } from '../../src-main/cli/demo.ts';

describe('the demo loss summary', () => {
  const losses = [
    { loss: 0.0267, smoothed: 0.0267 },
    { loss: 0.2, smoothed: 0.0443 },
    { loss: 0.1271, smoothed: 0.0512 },
  ];

  it('compares the fixed-noise loss before and after, not the first and last single steps', () => {
    const summary = lossSummary(losses, { start: 0.09, end: 0.07 });
    expect(summary).toEqual({ fixedNoiseStart: 0.09, fixedNoiseEnd: 0.07, smoothedLast: 0.0512 });
    const line = lossLine(summary);
    expect(line).toBe(
      'fixed-noise loss 0.0900 -> 0.0700 (same images, timesteps and noise); moving-average step loss 0.0512 at the end',
    );
    expect(line).not.toContain('0.0267');
    expect(line).not.toContain('0.1271');
  });

  it('says what it has when training stopped before the fixed-noise loss', () => {
    expect(lossLine(lossSummary(losses, null))).toBe('moving-average step loss 0.0512 at the end');
    expect(lossLine(lossSummary([], null))).toBe('no loss recorded');
  });
});
