/**
 * The preload: carries the transport and nothing else. `window.singlora = { invoke, onEvent }`
 * (`SingloraBridge`, api/bridge.ts); main validates everything that arrives (ipc.ts).
 * Bundled as CommonJS: sandboxed preloads cannot load ES modules.
 */
import { contextBridge, ipcRenderer, type IpcRendererEvent } from 'electron';
import type { SingloraBridge } from '../api/bridge.ts';
import { EVENT_CHANNEL, INVOKE_CHANNEL } from './channels.ts';

const bridge: SingloraBridge = {
  invoke(method, params) {
    if (typeof method !== 'string')
      return Promise.reject(new TypeError('singlora.invoke: the method must be a string'));
    return ipcRenderer.invoke(INVOKE_CHANNEL, method, params);
  },
  onEvent(cb) {
    if (typeof cb !== 'function') throw new TypeError('singlora.onEvent: the listener must be a function');
    const listener = (_event: IpcRendererEvent, name: string, data: unknown) => cb(name, data);
    ipcRenderer.on(EVENT_CHANNEL, listener);
    return () => void ipcRenderer.removeListener(EVENT_CHANNEL, listener);
  },
};

contextBridge.exposeInMainWorld('singlora', bridge);
