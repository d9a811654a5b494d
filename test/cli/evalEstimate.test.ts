// eval --run's time estimate (issue 27 item 30): it came from the run's training speed
// ("about 7m42s" for 22 s of work: inference runs on ONNX Runtime, tens of times faster than a
// TensorFlow.js training step). It is now measured from the images themselves, from the second on.
import { describe, expect, it } from 'vitest';
import { inferenceEstimate } from '../../src-main/cli/eval.ts';

describe('the eval --run estimate', () => {
  it('measures seconds per image from the first image on (the first also loads the model), and answers once', () => {
    let t = 0;
    const est = inferenceEstimate(() => t);
    t = 60_000; // image 1 done after a minute of loading and compiling
    expect(est.image(1, 10)).toBeNull();
    t = 62_000; // image 2: 2 s
    expect(est.image(2, 10)).toEqual({ secondsPerImage: 2, remainingSeconds: 16, remainingImages: 8 });
    t = 64_000;
    expect(est.image(3, 10)).toBeNull();
  });

  it('says nothing it cannot measure', () => {
    const est = inferenceEstimate(() => 5);
    expect(est.image(1, 1)).toBeNull();
  });
});
