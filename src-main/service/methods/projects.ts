/** projects.*: create, open, update (validated as a whole before it is written), delete. */
import { ApiError } from '../../api/contract.ts';
import { lockOwner } from '../dataDir.ts';
import { checkBase, defaultBase, modelTrainingDefaults, type ServiceContext } from '../context.ts';
import type { NamespaceHandlers } from './handlers.ts';

export function projectsHandlers(c: ServiceContext): NamespaceHandlers<'projects'> {
  return {
    'projects.list': async () => c.store.list((line) => c.log(line)),
    // A base model named at creation goes through the path policy and is opened first; the
    // project's settings start from that model's (or the default model's) singlora-defaults.json.
    'projects.create': async (p) => {
      const baseModel = p.baseModel === undefined ? undefined : (await checkBase(c, p.baseModel, 'baseModel')).path;
      const base = baseModel ?? defaultBase(c);
      return c.store.create({ ...p, baseModel, settings: base ? modelTrainingDefaults(base, 'baseModel') : undefined });
    },
    'projects.open': async (p) => c.store.open(p.projectId),
    'projects.update': async (p) => {
      const { projectId, ...patch } = p;
      // The base model goes through the path policy and is opened before anything is written.
      if (patch.baseModel) patch.baseModel = (await checkBase(c, patch.baseModel, 'baseModel')).path;
      if (patch.settings?.classImagesDir)
        await c.paths.classImagesDir(c.store.dir(projectId), patch.settings.classImagesDir);
      return c.store.update(projectId, patch);
    },
    'projects.delete': async (p) =>
      c.store.withLock(p.projectId, async () => {
        if (!(await c.store.hasFolder(p.projectId))) return { deleted: false };
        const busy = await c.jobs.active({ projectId: p.projectId });
        if (busy.length)
          throw new ApiError(
            'conflict',
            `project '${p.projectId}' has a ${busy[0].kind} job ${busy[0].status} (${busy[0].id}); cancel it before deleting the project`,
          );
        if (!(c.opts.exclusive ?? true)) {
          const owner = await lockOwner(c.dataDir);
          if (owner)
            throw new ApiError(
              'conflict',
              `a SingLoRA Studio service (pid ${owner.pid}) is using ${c.dataDir}; delete the project there (app or server), or stop it first`,
            );
        }
        return { deleted: await c.store.delete(p.projectId) };
      }),
  };
}
