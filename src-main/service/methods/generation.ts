/** generation.*: text-to-image jobs with the project's adapters, and the generated images. */
import { existsSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { GeneratedImageInfo } from '../../api/contract.ts';
import { imageSidecarSchema } from '../../api/schemas.ts';
import { computeFor } from '../appSettings.ts';
import { adapterPath, baseFor, imageInfo, projectWriteRoots, submit, type ServiceContext } from '../context.ts';
import type { NamespaceHandlers } from './handlers.ts';

export function generationHandlers(c: ServiceContext): NamespaceHandlers<'generation'> {
  return {
    // Under the project's lock, as every handler that checks and then submits: a projects.delete
    // either comes first (then this is not_found) or sees the job and refuses.
    'generation.start': async (p) =>
      c.store.withLock(p.projectId, async () => {
        const project = await c.store.open(p.projectId);
        const adapters: Array<{ path: string; strength: number }> = [];
        for (const [i, a] of p.adapters.entries())
          adapters.push({ path: (await adapterPath(c, p.projectId, a, `adapters.${i}`)).path, strength: a.strength });
        const base = baseFor(c, project);
        const compute = await computeFor(c.dataDir, p, c.opts.engineEnv);
        const outDir = join(c.store.dir(p.projectId), 'images');
        const job = await submit(c, {
          kind: 'generate',
          projectId: p.projectId,
          runId: null,
          run: async (ctx) => {
            const r = await c.engine.request(
              'generate',
              { base, settings: p.settings, adapters, outDir, compute },
              {
                signal: ctx.signal,
                writeRoots: await projectWriteRoots(c, p.projectId),
                onProgress: (g) => {
                  if (g.type === 'step') {
                    const e = { jobId: ctx.jobId, image: g.image + 1, images: g.images, step: g.step, steps: g.steps };
                    c.emit('generation.step', e);
                    ctx.progress({
                      done: g.image * g.steps + g.step,
                      total: g.images * g.steps,
                      label: `image ${e.image}/${g.images}, step ${g.step}/${g.steps}`,
                    });
                  } else if (g.type === 'image') {
                    c.emit('generation.image', {
                      jobId: ctx.jobId,
                      projectId: p.projectId,
                      image: imageInfo(p.projectId, g.sidecar),
                    });
                  }
                },
              },
            );
            return { label: `${r.files.length} image${r.files.length === 1 ? '' : 's'} in images/` };
          },
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
