/**
 * The two IPC channels between the preload and the main process; nothing else crosses.
 *
 *   renderer -> main   INVOKE_CHANNEL (ipcRenderer.invoke): (method, params) -> {ok, result} | {ok: false, error}
 *   main -> renderer   EVENT_CHANNEL  (webContents.send):   (name, data), names from the contract's `events`
 *
 * Kept apart from ipc.ts so the preload bundle carries two strings, not the contract and zod.
 */
export const INVOKE_CHANNEL = 'singlora:invoke';
export const EVENT_CHANNEL = 'singlora:event';
