/**
 * Writes the photos of the toy world's other subjects (toy/toyWorld.ts OTHER_SUBJECTS: a square
 * blue over yellow, a triangle green over blue, a square blue over green), six each, as the
 * demo's subject photos are written (models/toy-sd-subject): one folder per subject, named by its
 * token and class.
 *
 *   npx tsx scripts/toy-subjects.ts --out DIR   ->   DIR/<token>-<class>/*.png
 *   (zwx-square, qrv-triangle, vkx-square)
 */
import { mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { encodeImage } from '../src-main/engine/image/sharp.ts';
import { atomicWriteFile } from '../src-main/engine/io/atomic.ts';
import { drawScene, OTHER_SUBJECTS, subjectScenes } from '../src-main/engine/toy/toyWorld.ts';

async function main(): Promise<void> {
  const i = process.argv.indexOf('--out');
  if (i < 0 || !process.argv[i + 1]) throw new Error('toy-subjects: expected --out DIR');
  const out = resolve(process.argv[i + 1]);
  for (const [name, subject] of Object.entries(OTHER_SUBJECTS)) {
    const dir = join(out, name);
    await mkdir(dir, { recursive: true });
    for (const [k, scene] of subjectScenes(6, 17, subject).entries())
      await atomicWriteFile(join(dir, `${name}-${k + 1}.png`), await encodeImage(drawScene(scene), 'png'));
    console.log(
      `${dir}: 6 photos of a ${subject.kind}, ${subject.pattern.join(' over ')}, on ${subject.backgrounds.join(', ')}`,
    );
  }
}

await main();
