/** models.*: the base and evaluation models, a project's base model, downloads (a job in the io lane). */
import { existsSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { ApiError } from '../../api/contract.ts';
import { EVAL_MODELS, listModels, modelFilePath } from '../../engine/eval/modelRegistry.ts';
import { download } from '../../engine/io/download.ts';
import { checkBase, defaultBase, submit, type ServiceContext } from '../context.ts';
import type { NamespaceHandlers } from './handlers.ts';

export function modelsHandlers(c: ServiceContext): NamespaceHandlers<'models'> {
  return {
    'models.list': async () => {
      const rows = [];
      const demo = join(c.modelsDir, 'tiny-sd');
      const basePath = defaultBase(c) ?? demo;
      rows.push({
        name: basename(basePath),
        kind: 'base',
        present: existsSync(basePath),
        path: basePath,
        bytes: null,
        verified: null,
        hint: existsSync(basePath) ? null : `no default base model: choose one per project (models.setBase), start the server with --base, or build the demo model into ${demo}`,
      });
      for (const m of await listModels(c.modelsDir)) {
        const present = m.files.filter((f) => f.present);
        const verified = m.files.some((f) => f.verified === false) ? false : m.files.length && m.files.every((f) => f.verified === true) ? true : null;
        rows.push({
          name: m.id,
          kind: m.required ? 'evaluation' : 'evaluation (optional)',
          present: m.present,
          path: join(c.modelsDir, m.id),
          bytes: present.length ? present.reduce((n, f) => n + (f.bytes ?? 0), 0) : null,
          verified,
          // One line for the Models screen (the registry's per-file notes, with every URL, are for the CLI).
          hint: m.present
            ? verified === false
              ? m.files.filter((f) => f.verified === false).map((f) => f.note).join('; ')
              : null
            : `missing ${m.files.filter((f) => !f.present).map((f) => f.file).join(', ')} in ${join(c.modelsDir, m.id)}: download (singlora models download ${m.id}) or place the files there`,
        });
      }
      return rows;
    },

    'models.setBase': async (p) => {
      await c.store.open(p.projectId);
      const { path, name, format } = await checkBase(c, p.path, 'path');
      await c.store.update(p.projectId, { baseModel: path });
      return { name, format };
    },

    'models.download': async (p) => {
      const spec = (c.opts.evalModels ?? EVAL_MODELS).find((m) => m.id === p.name);
      if (!spec) throw new ApiError('not_found', `no downloadable model '${p.name}'`);
      const busy = c.jobs.active({ kind: 'download' });
      if (busy.length) throw new ApiError('conflict', `a download is already ${busy[0].status} (${busy[0].id})`);
      const job = await submit(c, {
        kind: 'download',
        projectId: null,
        runId: null,
        lane: 'io',
        run: async (ctx) => {
          const files = spec.files.filter((f) => !existsSync(modelFilePath(c.modelsDir, spec.id, f.file)));
          const known = files.reduce((n, f) => n + (f.approxBytes ?? 0), 0);
          let finished = 0;
          for (const [i, f] of files.entries()) {
            await download(f.url, modelFilePath(c.modelsDir, spec.id, f.file), {
              sha256: f.sha256,
              signal: ctx.signal,
              onProgress: (pr) => ctx.progress({ done: finished + pr.bytes, total: Math.max(known, finished + (pr.total ?? pr.bytes)), label: `${spec.id}/${f.file} (${i + 1}/${files.length})` }),
            });
            finished += (await stat(modelFilePath(c.modelsDir, spec.id, f.file))).size;
          }
          return { label: files.length ? `${spec.id}: ${files.length} file${files.length === 1 ? '' : 's'} in ${join(c.modelsDir, spec.id)}` : `${spec.id}: already present` };
        },
      });
      return { jobId: job.id };
    },
  };
}
