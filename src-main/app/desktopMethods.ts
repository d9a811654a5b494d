/**
 * The contract's `desktop.*` methods as the desktop app answers them (the service answers
 * not_found): the OS file manager and the native file dialog, in the main process.
 *
 *   desktop.reveal         {projectId, file}  the project file (or export folder), resolved by the
 *                                             service (no escape from the project), shown in the
 *                                             file manager
 *   desktop.pickBaseModel  {kind}             a folder or .safetensors picker on the app window;
 *                                             the renderer then sends the path to models.setBase
 *                                             or projects.create, which check it
 */
import type { BrowserWindow, Dialog, Shell } from 'electron';
import type { ApiHandlers } from '../api/contract.ts';

type DesktopHandlers = Pick<ApiHandlers, 'desktop.reveal' | 'desktop.pickBaseModel'>;

export interface DesktopMethodsDeps {
  shell: Pick<Shell, 'showItemInFolder'>;
  dialog: Pick<Dialog, 'showOpenDialog'>;
  /** A project file, or an export folder, as the service resolves it (throws when there is none). */
  resolve(projectId: string, rel: string): Promise<string>;
  window(): BrowserWindow | null;
}

export function desktopMethods(d: DesktopMethodsDeps): DesktopHandlers {
  return {
    'desktop.reveal': async (p) => {
      d.shell.showItemInFolder(await d.resolve(p.projectId, p.file));
      return { revealed: true };
    },
    'desktop.pickBaseModel': async (p) => {
      const options: Electron.OpenDialogOptions =
        p.kind === 'folder'
          ? {
              title: 'Choose a Stable Diffusion 1.5 folder (diffusers, with model_index.json)',
              properties: ['openDirectory'],
            }
          : {
              title: 'Choose a Stable Diffusion 1.5 checkpoint',
              properties: ['openFile'],
              filters: [{ name: 'safetensors checkpoint', extensions: ['safetensors'] }],
            };
      const win = d.window();
      const r = win ? await d.dialog.showOpenDialog(win, options) : await d.dialog.showOpenDialog(options);
      return { path: r.canceled ? null : (r.filePaths[0] ?? null) };
    },
  };
}
