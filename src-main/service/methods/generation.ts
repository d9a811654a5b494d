/** generation.*: text-to-image jobs with the project's adapters, and the generated images. */
import { existsSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { GeneratedImageInfo } from '../../api/contract.ts';
import { imageSidecarSchema } from '../../api/schemas.ts';
import { computeFor } from '../appSettings.ts';
import { adapterPath, baseFor, imageInfo, submitJob, type ServiceContext } from '../context.ts';
import { sharedPath } from '../jobData.ts';
import { rootsOf } from '../jobHandlers.ts';
import type { NamespaceHandlers } from './handlers.ts';

export function generationHandlers(c: ServiceContext): NamespaceHandlers<'generation'> {
  return {
    // Under the project's lock, as every handler that checks and then submits: a projects.delete
    // either comes first (then this is not_found) or sees the job and refuses.
    'generation.start': async (p) =>
      c.store.withLock(p.projectId, async () => {
        const project = await c.store.open(p.projectId);
        const roots = rootsOf(c);
        const adapters = [];
        for (const [i, a] of p.adapters.entries()) {
          const { path } = await adapterPath(c, p.projectId, a, `adapters.${i}`);
          adapters.push({ path: sharedPath(roots, p.projectId, path), strength: a.strength });
        }
        const base = sharedPath(roots, p.projectId, baseFor(c, project));
        const compute = await computeFor(c.dataDir, p, c.opts.engineEnv);
        const job = await submitJob(c, {
          kind: 'generate',
          projectId: p.projectId,
          runId: null,
          params: { base, settings: p.settings, adapters, compute },
        });
        return { jobId: job.id };
      }),

    'generation.list': async (p) => {
      const dir = join(c.store.dir(p.projectId), 'images');
      await c.store.open(p.projectId);
      const names = (await readdir(dir).catch(() => [] as string[])).filter(
        (n) => n.endsWith('.json') && !n.startsWith('.'),
      );
      const out: GeneratedImageInfo[] = [];
      for (const n of names) {
        try {
          const r = imageSidecarSchema.safeParse(JSON.parse(await readFile(join(dir, n), 'utf8')));
          if (r.success && existsSync(join(dir, r.data.file))) out.push(imageInfo(p.projectId, r.data));
          else if (!r.success) c.log(`images: skipped ${join(dir, n)}: ${r.error.issues[0]?.message}`);
        } catch (err) {
          c.log(`images: skipped ${join(dir, n)}: ${(err as Error).message}`);
        }
      }
      return out.sort((a, b) => b.createdAt.localeCompare(a.createdAt));
    },
  };
}
