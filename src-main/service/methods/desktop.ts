/**
 * desktop.*: what only the desktop app can do (the OS file manager, native file dialogs). The
 * service has no window: it answers not_found, so `singlora serve` and the CLI say what to use
 * instead; the Electron main process replaces these handlers (app/desktopMethods.ts).
 */
import { ApiError } from '../../api/contract.ts';
import type { NamespaceHandlers } from './handlers.ts';

const onlyDesktop = (what: string) =>
  new ApiError(
    'not_found',
    `${what} is only in the desktop app (a browser cannot open folders or dialogs on the server's machine)`,
  );

export function desktopHandlers(): NamespaceHandlers<'desktop'> {
  return {
    'desktop.reveal': async () => {
      throw onlyDesktop('Show in folder');
    },
    'desktop.pickBaseModel': async () => {
      throw onlyDesktop('Choosing a model with a file dialog');
    },
  };
}
