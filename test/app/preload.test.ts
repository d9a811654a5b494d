/**
 * The preload (src-main/app/preload.ts) with `electron` mocked: it exposes exactly
 * `window.singlora = { invoke, onEvent }`, carries calls to the one invoke channel and events from
 * the one event channel, and nothing else.
 */
import type { EventEmitter } from 'node:events';
import { beforeAll, describe, expect, it, vi, type Mock } from 'vitest';
import { EVENT_CHANNEL, INVOKE_CHANNEL } from '../../src-main/app/channels.ts';
import { isSingloraBridge, type SingloraBridge } from '../../src-renderer/lib/transport/electron.ts';

const exposed = vi.hoisted(() => new Map<string, unknown>());
const ipc = vi.hoisted(() => ({ renderer: null as unknown as EventEmitter & { invoke: Mock } }));

vi.mock('electron', async () => {
  const { EventEmitter } = await import('node:events');
  const { vi } = await import('vitest');
  ipc.renderer = Object.assign(new EventEmitter(), {
    invoke: vi.fn(async (_channel: string, method: string) => ({ ok: true, result: method })),
  });
  return {
    contextBridge: { exposeInMainWorld: vi.fn((key: string, api: unknown) => exposed.set(key, api)) },
    ipcRenderer: ipc.renderer,
  };
});

let bridge: SingloraBridge;
beforeAll(async () => {
  await import('../../src-main/app/preload.ts');
  bridge = exposed.get('singlora') as SingloraBridge;
});

describe('preload', () => {
  it('exposes one global, singlora, with exactly invoke and onEvent', () => {
    expect([...exposed.keys()]).toEqual(['singlora']);
    expect(Object.keys(bridge).sort()).toEqual(['invoke', 'onEvent']);
    expect(isSingloraBridge(bridge)).toBe(true);
  });

  it('invoke carries (method, params) to the invoke channel and returns the envelope', async () => {
    const params = { projectId: 'dog' };
    await expect(bridge.invoke('projects.open', params)).resolves.toEqual({ ok: true, result: 'projects.open' });
    expect(ipc.renderer.invoke).toHaveBeenLastCalledWith(INVOKE_CHANNEL, 'projects.open', params);
  });

  it('invoke refuses a method that is not a string, without touching IPC', async () => {
    ipc.renderer.invoke.mockClear();
    for (const m of [42, null, { toString: () => 'projects.list' }, ['projects.list']]) {
      await expect(bridge.invoke(m as never, {})).rejects.toThrow(/method must be a string/);
    }
    expect(ipc.renderer.invoke).not.toHaveBeenCalled();
  });

  it('onEvent delivers (name, data) from the event channel only, never the IPC event, and unsubscribes', () => {
    const seen: unknown[][] = [];
    const off = bridge.onEvent((...args) => seen.push(args));
    const ipcEvent = { sender: 'the ipcRenderer itself', ports: [] };
    ipc.renderer.emit(EVENT_CHANNEL, ipcEvent, 'job.updated', { id: 'j1' });
    ipc.renderer.emit('some:other-channel', ipcEvent, 'job.updated', { id: 'j2' });
    expect(seen).toEqual([['job.updated', { id: 'j1' }]]);
    expect(ipc.renderer.listenerCount(EVENT_CHANNEL)).toBe(1);
    off();
    expect(ipc.renderer.listenerCount(EVENT_CHANNEL)).toBe(0);
    ipc.renderer.emit(EVENT_CHANNEL, ipcEvent, 'job.updated', { id: 'j3' });
    expect(seen).toHaveLength(1);
  });

  it('onEvent refuses a listener that is not a function', () => {
    expect(() => bridge.onEvent('x' as never)).toThrow(/listener must be a function/);
    expect(ipc.renderer.listenerCount(EVENT_CHANNEL)).toBe(0);
  });
});
