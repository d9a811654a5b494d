/** settings.*: the app's compute settings (appSettings.ts), which every training and generation job uses. */
import { readAppSettings, writeAppSettings } from '../appSettings.ts';
import type { ServiceContext } from '../context.ts';
import type { NamespaceHandlers } from './handlers.ts';

export function settingsHandlers(c: ServiceContext): NamespaceHandlers<'settings'> {
  return {
    'settings.get': async () => readAppSettings(c.dataDir, c.opts.engineEnv),
    'settings.set': async (p) => writeAppSettings(c.dataDir, p, c.opts.engineEnv),
  };
}
