/** system.*: the engine's backend report and where things are. */
import { existsSync } from 'node:fs';
import { appVersion } from '../../engine/paths.ts';
import { defaultBase, demoModelDir, type ServiceContext } from '../context.ts';
import type { NamespaceHandlers } from './handlers.ts';

export function systemHandlers(c: ServiceContext): NamespaceHandlers<'system'> {
  return {
    'system.doctor': async () => c.engine.request('doctor', {}),
    'system.info': async () => ({
      version: appVersion(),
      projectsDir: c.projectsDir,
      modelsDir: c.modelsDir,
      defaultBaseModel: defaultBase(c) ?? '',
      demoModel: existsSync(demoModelDir(c.modelsDir)),
    }),
  };
}
