/**
 * The factor in front of an adapter's low-rank product, the one place it is computed:
 *
 *   scale = (alpha / r) · u · strength
 *
 * | symbol   | meaning                                                                  |
 * | -------- | ------------------------------------------------------------------------ |
 * | alpha, r | the adapter's alpha and rank (kohya files: alpha defaults to r)          |
 * | u        | SingLoRA's ramp u(t) at the adapter's step (ramp.ts); 1 for LoRA         |
 * | strength | the user's multiplier at generation (1 in training)                      |
 */
export function adapterScale(alpha: number, rank: number, u: number, strength: number): number {
  return (alpha / rank) * u * strength;
}
