/**
 * Writes the photos of the toy world's other subjects (toy/toyWorld.ts OTHER_SUBJECTS: a square
 * blue over yellow, a triangle green over blue, a square blue over green), six each, as the
 * demo's subject photos are written (models/toy-sd-subject): one folder per subject, named by its
 * token and class. scripts/experiment.ts and scripts/toy-subject-runs.ts draw their subjects'
 * photos with it.
 *
 *   npx tsx scripts/toy-subjects.ts --out DIR   ->   DIR/<token>-<class>/*.png
 *   (zwx-square, qrv-triangle, vkx-square)
 */
import { mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { encodeImage } from '../src-main/engine/image/sharp.ts';
import { atomicWriteFile } from '../src-main/engine/io/atomic.ts';
import { drawScene, OTHER_SUBJECTS, subjectScenes } from '../src-main/engine/toy/toyWorld.ts';

/** Writes six photos of each subject in `names` (OTHER_SUBJECTS keys) to `out`/<name>/; returns each folder. */
export async function writeSubjectPhotos(
  out: string,
  names: readonly string[] = Object.keys(OTHER_SUBJECTS),
): Promise<Record<string, string>> {
  const dirs: Record<string, string> = {};
  for (const name of names) {
    const subject = OTHER_SUBJECTS[name];
    if (!subject)
      throw new Error(`toy-subjects: no subject "${name}"; expected one of ${Object.keys(OTHER_SUBJECTS).join(', ')}`);
    const dir = join(out, name);
    await mkdir(dir, { recursive: true });
    for (const [k, scene] of subjectScenes(6, 17, subject).entries())
      await atomicWriteFile(join(dir, `${name}-${k + 1}.png`), await encodeImage(drawScene(scene), 'png'));
    console.log(
      `${dir}: 6 photos of a ${subject.kind}, ${subject.pattern.join(' over ')}, on ${subject.backgrounds.join(', ')}`,
    );
    dirs[name] = dir;
  }
  return dirs;
}

async function main(): Promise<void> {
  const i = process.argv.indexOf('--out');
  if (i < 0 || !process.argv[i + 1]) throw new Error('toy-subjects: expected --out DIR');
  await writeSubjectPhotos(resolve(process.argv[i + 1]));
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) await main();
