/**
 * How well a toy model follows its world's captions, and what it draws: generates 28 random
 * captions of the base world ("a photo of a red ball on a blue background"), reads back whether
 * the background and the object have the colours asked for (chance: 1/7 and 1/4) and whether the
 * object has the shape asked for (IoU >= 0.8 with the ideal shape, eval/toyShape.ts), and writes the
 * pictures as a grid (7 per row, each with its caption's scene drawn above it).
 *
 *   npx tsx scripts/toy-world-check.ts [--model models/toy-sd] [--grid file.png] [--count 28] [--seed 5000]
 */
import { resolve } from 'node:path';
import { initBackend } from '../src-main/engine/backend/tf.ts';
import { scoreWorld, TOY_SAMPLING, type WorldScore } from '../src-main/engine/eval/toyEvaluate.ts';
import { imageGrid } from '../src-main/engine/image/grid.ts';
import { encodeImage } from '../src-main/engine/image/sharp.ts';
import { atomicWriteFile } from '../src-main/engine/io/atomic.ts';
import { StableDiffusion } from '../src-main/engine/pipeline/stableDiffusion.ts';
import { TOY_MODEL_DIR } from '../src-main/engine/toy/toyModel.ts';
import { drawScene } from '../src-main/engine/toy/toyWorld.ts';

export const WORLD_CHECK = { count: 28, seed: 5000, cols: 7 } as const;

/** Scores `model` (a toy-model folder) and, with `grid`, writes the pictures: captions' scenes above, the model's below. */
export async function checkToyWorld(
  model: string,
  o: { grid?: string; count?: number; seed?: number } = {},
): Promise<WorldScore> {
  const sd = await StableDiffusion.load(model);
  try {
    const score = await scoreWorld(sd, { count: o.count ?? WORLD_CHECK.count, seed: o.seed ?? WORLD_CHECK.seed });
    if (o.grid) {
      const cols = WORLD_CHECK.cols;
      const cells = [];
      for (let r = 0; r < score.images.length; r += cols) {
        const row = score.images.slice(r, r + cols);
        if (row.length < cols) break;
        cells.push(...row.map((i) => drawScene(i.scene)), ...row.map((i) => i.image));
      }
      await atomicWriteFile(o.grid, await encodeImage(imageGrid(cells, cols, { scale: 2 }), 'png'));
    }
    return score;
  } finally {
    sd.dispose();
  }
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const arg = (name: string) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const model = resolve(arg('--model') ?? TOY_MODEL_DIR);
  const count = Number(arg('--count') ?? WORLD_CHECK.count);
  const seed = Number(arg('--seed') ?? WORLD_CHECK.seed);
  const backend = await initBackend();
  const t0 = performance.now();
  const s = await checkToyWorld(model, { grid: arg('--grid'), count, seed });
  console.log(
    `${model}: ${count} captions (seed ${seed}; ${TOY_SAMPLING.scheduler} ${TOY_SAMPLING.steps} steps, guidance ${TOY_SAMPLING.guidanceScale}, ${backend.name}): ` +
      `background as asked ${(100 * s.background).toFixed(0)}% (chance 14%), object colour as asked ${(100 * s.object).toFixed(0)}% (chance 25%), shape as asked ${(100 * s.shape).toFixed(0)}%, all three ${(100 * s.all).toFixed(0)}%; ${((performance.now() - t0) / 1000).toFixed(1)} s`,
  );
}

if (process.argv[1]?.endsWith('toy-world-check.ts')) await main();
