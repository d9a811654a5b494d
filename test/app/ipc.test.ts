/**
 * The invoke channel and the event channel (src-main/app/ipc.ts), with ipcMain and webContents
 * replaced by fakes: who may call, what is validated, what comes back, which events go out.
 */
import { describe, expect, it, vi } from 'vitest';
import { ApiError, type ApiHandlers } from '../../src-main/api/contract.ts';
import { trainSettingsSchema } from '../../src-main/api/schemas.ts';
import { EVENT_CHANNEL, INVOKE_CHANNEL } from '../../src-main/app/channels.ts';
import { dispatch, forwardEvents, handleInvoke } from '../../src-main/app/ipc.ts';
import { EngineExitedError } from '../../src-main/service/engineHost.ts';
import { allHandlers, FakeWebContents, fakeIpcMain } from './helpers.ts';

const APP = 'app://studio/index.html#/train';
const project = {
  schemaVersion: 1,
  id: 'dog',
  name: 'Dog',
  createdAt: '2025-01-01T00:00:00.000Z',
  updatedAt: '2025-01-01T00:00:00.000Z',
  subject: { triggerToken: 'sks', classWord: 'dog', type: 'live' as const },
  baseModel: null,
};

function setup(overrides: Partial<ApiHandlers> = {}) {
  const ipcMain = fakeIpcMain();
  const log = vi.fn();
  const handlers = allHandlers(overrides);
  const remove = handleInvoke(ipcMain, { handlers, log });
  const invoke = (frameUrl: string | null, method: unknown, params?: unknown) =>
    ipcMain.invoke(INVOKE_CHANNEL, frameUrl, method, params);
  return { ipcMain, handlers, log, remove, invoke };
}

describe('the invoke channel', () => {
  it('registers exactly one channel, and removes it', () => {
    const { ipcMain, remove } = setup();
    expect([...ipcMain.handlers.keys()]).toEqual([INVOKE_CHANNEL]);
    remove();
    expect(ipcMain.handlers.size).toBe(0);
  });

  it('refuses frames that are not on the app origin, without running the handler', async () => {
    const list = vi.fn(async () => []);
    const { invoke, log } = setup({ 'projects.list': list });
    for (const url of [
      'https://evil.example/',
      'file:///home/me/x.html',
      'app://other/index.html',
      'app://studio.evil.example/',
      'http://studio/',
      'devtools://devtools/bundled/x.html',
      '',
      null,
    ]) {
      const r = await invoke(url, 'projects.list', {});
      expect(r, String(url)).toEqual({
        ok: false,
        error: { code: 'unauthorized', message: 'this frame may not call the SingLoRA engine' },
      });
    }
    expect(list).not.toHaveBeenCalled();
    expect(log).toHaveBeenCalledWith(expect.stringContaining('refused projects.list from https://evil.example/'));
  });

  it('answers an unknown method with not_found', async () => {
    const { invoke } = setup();
    expect(await invoke(APP, 'projects.hack', {})).toEqual({
      ok: false,
      error: { code: 'not_found', message: "unknown method 'projects.hack'" },
    });
    // Names inherited from Object.prototype are not methods either.
    expect(await invoke(APP, 'constructor', {})).toMatchObject({ ok: false, error: { code: 'not_found' } });
    expect(await invoke(APP, 42, {})).toMatchObject({
      ok: false,
      error: { code: 'not_found', message: "unknown method '42'" },
    });
  });

  it('answers invalid params with invalid_params naming every bad field', async () => {
    const create = vi.fn();
    const { invoke } = setup({ 'projects.create': create });
    const r = (await invoke(APP, 'projects.create', { name: '', type: 'robot', extra: 1 })) as {
      ok: false;
      error: { code: string; details: Array<{ field: string }> };
    };
    expect(r.ok).toBe(false);
    expect(r.error.code).toBe('invalid_params');
    expect(r.error.details.map((d) => d.field).sort()).toEqual(['(params)', 'name', 'type']);
    expect(create).not.toHaveBeenCalled();
  });

  it('runs a valid call on its handler with the parsed params and returns {ok: true, result}', async () => {
    const settings = trainSettingsSchema.parse({});
    const create = vi.fn(async () => ({ ...project, settings }));
    const { invoke } = setup({ 'projects.create': create });
    const r = await invoke(APP, 'projects.create', { name: '  Dog  ', classWord: 'dog' });
    expect(create).toHaveBeenCalledWith({ name: 'Dog', classWord: 'dog', triggerToken: 'sks', type: 'live' });
    expect(r).toEqual({ ok: true, result: { ...project, settings } });
  });

  it('missing params count as {}', async () => {
    const list = vi.fn(async () => []);
    const { invoke } = setup({ 'projects.list': list });
    expect(await invoke(APP, 'projects.list', undefined)).toEqual({ ok: true, result: [] });
    expect(list).toHaveBeenCalledWith({});
  });

  it('passes an ApiError from the handler through, code, message and details', async () => {
    const { invoke } = setup({
      'projects.open': async () =>
        Promise.reject(new ApiError('not_found', "no project 'cat'", [{ field: 'projectId' }])),
    });
    expect(await invoke(APP, 'projects.open', { projectId: 'cat' })).toEqual({
      ok: false,
      error: { code: 'not_found', message: "no project 'cat'", details: [{ field: 'projectId' }] },
    });
  });

  it('maps an engine crash to engine_crashed and any other throw to internal', async () => {
    const { invoke } = setup({
      'system.doctor': async () => Promise.reject(new EngineExitedError(null, 'SIGKILL', 'doctor', '')),
      'jobs.list': async () => Promise.reject(new Error('disk on fire')),
    });
    expect(await invoke(APP, 'system.doctor', {})).toEqual({
      ok: false,
      error: { code: 'engine_crashed', message: 'the engine process exited (signal SIGKILL) during the backend check' },
    });
    expect(await invoke(APP, 'jobs.list', {})).toEqual({
      ok: false,
      error: { code: 'internal', message: 'disk on fire' },
    });
  });

  it('checks the result against the contract', async () => {
    const r = await dispatch(
      allHandlers({ 'projects.delete': async () => ({ deleted: 'yes' }) as never }),
      'projects.delete',
      { projectId: 'dog' },
    );
    expect(r).toMatchObject({ ok: false, error: { code: 'internal', details: [{ field: 'deleted' }] } });
  });

  it('types the handlers: a missing one is a compile error', () => {
    const { 'jobs.list': _dropped, ...incomplete } = allHandlers();
    // @ts-expect-error 'jobs.list' is missing (npm run typecheck fails if this stops being an error)
    const handlers: ApiHandlers = incomplete;
    expect(Object.keys(handlers)).not.toContain('jobs.list');
  });
});

describe('the event channel', () => {
  function service() {
    const listeners = new Set<(name: string, data: unknown) => void>();
    return {
      on: (l: (name: string, data: unknown) => void) => {
        listeners.add(l);
        return () => void listeners.delete(l);
      },
      emit: (name: string, data: unknown) => listeners.forEach((l) => l(name, data)),
      count: () => listeners.size,
    };
  }

  it('forwards the contract events and nothing else', () => {
    const s = service();
    const wc = new FakeWebContents();
    const f = forwardEvents(s.on, wc);
    const job = { id: 'j1' };
    s.emit('job.updated', job);
    s.emit('engine.status', { state: 'ready', message: 'backend cpu' });
    s.emit('secret.internal', { token: 'x' });
    s.emit('__proto__', {});
    s.emit('toString', {});
    expect(wc.sent).toEqual([
      [EVENT_CHANNEL, 'job.updated', job],
      [EVENT_CHANNEL, 'engine.status', { state: 'ready', message: 'backend cpu' }],
    ]);
    f.stop();
    expect(s.count()).toBe(0);
    s.emit('job.updated', job);
    expect(wc.sent).toHaveLength(2);
  });

  it('replays the latest engine status to a reloaded page; sends nothing to a destroyed window', () => {
    const s = service();
    const wc = new FakeWebContents();
    const f = forwardEvents(s.on, wc);
    f.replayState();
    expect(wc.sent).toHaveLength(0);
    s.emit('engine.status', { state: 'crashed', message: 'the engine process exited (code 1)' });
    s.emit('engine.status', { state: 'restarting', message: 'starting a new engine process' });
    wc.sent.length = 0;
    f.replayState();
    expect(wc.sent).toEqual([
      [EVENT_CHANNEL, 'engine.status', { state: 'restarting', message: 'starting a new engine process' }],
    ]);
    wc.destroyed = true;
    s.emit('job.updated', { id: 'j2' });
    f.replayState();
    expect(wc.sent).toHaveLength(1);
  });
});
