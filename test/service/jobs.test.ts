import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Job } from '../../src-main/api/contract.ts';
import { INTERRUPTED_QUEUED, INTERRUPTED_RUNNING, JobRunner, type JobContext } from '../../src-main/service/jobs.ts';
import { tempDir } from './helpers.ts';

let dir: string;
let cleanup: () => Promise<void>;
beforeEach(async () => ({ dir, cleanup } = await tempDir()));
afterEach(() => cleanup());

/** A job body that runs until released (or aborted), recording when it started. */
function gate(log: string[], name: string) {
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  return {
    release,
    run: async (ctx: JobContext) => {
      log.push(`start ${name}`);
      await Promise.race([released, new Promise((r) => ctx.signal.addEventListener('abort', r))]);
      log.push(`end ${name}${ctx.signal.aborted ? ` (${String(ctx.signal.reason)})` : ''}`);
    },
  };
}

describe('job runner', () => {
  it('runs engine jobs one at a time, first in first out, and io jobs beside them', async () => {
    const updates: Job[] = [];
    const { runner } = await JobRunner.open({ file: join(dir, 'jobs.json'), onUpdate: (j) => updates.push(j) });
    const log: string[] = [];
    const [a, b, c, d] = ['train', 'generate', 'export', 'download'].map((n) => gate(log, n));
    const ja = runner.submit({ kind: 'train', projectId: 'p', runId: 'r', run: a.run });
    const jb = runner.submit({ kind: 'generate', projectId: 'p', runId: null, run: b.run });
    const jc = runner.submit({ kind: 'export', projectId: 'p', runId: null, run: c.run });
    const jd = runner.submit({ kind: 'download', projectId: null, runId: null, lane: 'io', run: d.run });
    await new Promise((r) => setTimeout(r, 20));
    expect(log).toEqual(['start train', 'start download']);
    expect(runner.get(jb.id)!.status).toBe('queued');
    b.release(); // releasing a queued job's gate does nothing until it runs
    a.release();
    await runner.wait(ja.id);
    await runner.wait(jb.id);
    c.release();
    d.release();
    await runner.idle();
    expect(log.filter((l) => !l.includes('download'))).toEqual([
      'start train',
      'end train',
      'start generate',
      'end generate',
      'start export',
      'end export',
    ]);
    expect([ja, jb, jc, jd].map((j) => runner.get(j.id)!.status)).toEqual(['done', 'done', 'done', 'done']);
    expect(updates.filter((u) => u.id === ja.id).map((u) => u.status)).toEqual(['queued', 'running', 'done']);
  });

  it('names the worker on each job it runs and reports its lanes as queues (issue 29, embedded mode)', async () => {
    const { runner } = await JobRunner.open({ file: null, onUpdate: () => {}, workerName: 'studio-1' });
    const log: string[] = [];
    const a = gate(log, 'a');
    const ja = runner.submit({ kind: 'train', projectId: 'p', runId: 'r', run: a.run });
    const jb = runner.submit({ kind: 'generate', projectId: 'p', runId: null, run: async () => {} });
    const jc = runner.submit({ kind: 'download', projectId: null, runId: null, lane: 'io', run: async () => {} });
    await new Promise((r) => setTimeout(r, 10));
    expect(runner.get(ja.id)!.worker).toBe('studio-1');
    expect(runner.get(jb.id)!.worker ?? null).toBeNull();
    const status = runner.queueStatus();
    expect(status.mode).toBe('embedded');
    expect(status.queues).toEqual([
      { name: 'engine', waiting: 1, active: 1 },
      { name: 'io', waiting: 0, active: 0 },
    ]);
    expect(status.workers).toMatchObject([{ name: 'studio-1', alive: true, jobId: ja.id }]);
    expect((await runner.wait(jc.id)).worker).toBe('studio-1');
    a.release();
    expect((await runner.wait(jb.id)).worker).toBe('studio-1');
    expect(runner.queueStatus().queues.every((q) => q.waiting === 0 && q.active === 0)).toBe(true);
  });

  it('cancels a queued job at once and signals a running one', async () => {
    const { runner } = await JobRunner.open({ file: null, onUpdate: () => {} });
    const log: string[] = [];
    const a = gate(log, 'a');
    const ja = runner.submit({ kind: 'train', projectId: 'p', runId: 'r', run: a.run });
    let cancelledQueued = false;
    const jb = runner.submit({
      kind: 'generate',
      projectId: 'p',
      runId: null,
      run: async () => void log.push('b ran'),
      onCancelQueued: () => void (cancelledQueued = true),
    });
    await new Promise((r) => setTimeout(r, 10));
    expect(runner.cancel(jb.id)).toBe(true);
    expect(runner.get(jb.id)!.status).toBe('cancelled');
    expect(cancelledQueued).toBe(true);
    expect(runner.cancel(ja.id, 'pause')).toBe(true);
    const done = await runner.wait(ja.id);
    expect(done.status).toBe('cancelled');
    expect(log).toEqual(['start a', 'end a (pause)']);
    expect(runner.cancel(ja.id)).toBe(false);
    expect(runner.cancel('no-such-job')).toBeUndefined();
  });

  it('records failures and the outcome a job reports', async () => {
    const { runner } = await JobRunner.open({ file: null, onUpdate: () => {} });
    const f = runner.submit({
      kind: 'export',
      projectId: 'p',
      runId: null,
      run: async () => Promise.reject(new Error('disk full')),
    });
    const o = runner.submit({
      kind: 'train',
      projectId: 'p',
      runId: 'r',
      run: async (ctx) => (
        ctx.progress({ done: 3, total: 4, label: 'x' }), { status: 'failed', error: 'loss became NaN' }
      ),
    });
    const l = runner.submit({
      kind: 'export',
      projectId: 'p',
      runId: null,
      run: async () => ({
        label: 'adapters/out.safetensors',
        result: { path: 'adapters/out.safetensors', url: '/files/p/adapters/out.safetensors' },
      }),
    });
    await runner.idle();
    expect(runner.get(f.id)).toMatchObject({ status: 'failed', error: 'disk full' });
    expect(runner.get(o.id)).toMatchObject({
      status: 'failed',
      error: 'loss became NaN',
      progress: { done: 3, total: 4 },
    });
    expect(runner.get(l.id)).toMatchObject({
      status: 'done',
      error: null,
      progress: { label: 'adapters/out.safetensors' },
      result: { path: 'adapters/out.safetensors', url: '/files/p/adapters/out.safetensors' },
    });
    expect(runner.get(f.id)!.result).toBeUndefined();
  });

  it('persists the list and marks interrupted jobs on the next start', async () => {
    const file = join(dir, 'jobs.json');
    const { runner } = await JobRunner.open({ file, onUpdate: () => {} });
    const log: string[] = [];
    const a = gate(log, 'a');
    const done = runner.submit({ kind: 'export', projectId: 'p', runId: null, run: async () => {} });
    await runner.wait(done.id);
    const running = runner.submit({ kind: 'train', projectId: 'p', runId: 'r', run: a.run });
    const queued = runner.submit({ kind: 'generate', projectId: 'p', runId: null, run: async () => {} });
    await new Promise((r) => setTimeout(r, 10));
    await runner.flushed();
    // The file as a crash would leave it: one running, one queued.
    const onDisk = JSON.parse(await readFile(file, 'utf8'));
    expect(onDisk.jobs.map((j: Job) => j.status)).toEqual(['done', 'running', 'queued']);

    const reopened = await JobRunner.open({ file, onUpdate: () => {} });
    expect(reopened.interrupted.map((j) => [j.id, j.status, j.error])).toEqual([
      [running.id, 'failed', INTERRUPTED_RUNNING],
      [queued.id, 'cancelled', INTERRUPTED_QUEUED],
    ]);
    expect(reopened.runner.get(done.id)!.status).toBe('done');
    await reopened.runner.idle();
    expect(JSON.parse(await readFile(file, 'utf8')).jobs.map((j: Job) => j.status)).toEqual([
      'done',
      'failed',
      'cancelled',
    ]);
    a.release();
    await runner.close();
  });

  it('starts empty when jobs.json is damaged, keeps the bad file aside and says where (issue 27 item 7)', async () => {
    const file = join(dir, 'jobs.json');
    const damaged = '{"schemaVersion": 1, "jobs": [{"id": 3}]}';
    await writeFile(file, damaged);
    const lines: string[] = [];
    const { runner } = await JobRunner.open({ file, onUpdate: () => {}, log: (l) => lines.push(l) });
    expect(runner.list()).toEqual([]);
    const aside = (await readdir(dir)).filter((f) => f.startsWith('jobs.json.damaged-'));
    expect(aside).toHaveLength(1);
    expect(await readFile(join(dir, aside[0]), 'utf8')).toBe(damaged);
    expect(lines.join('\n')).toMatch(
      new RegExp(`jobs\\.json is not a valid job list \\(.*\\); kept it as .*${aside[0]}, starting with an empty list`),
    );
    await runner.close();
  });
});
