/**
 * The server's smaller holes of issue 27 (items 3, 5, 6, 7), each reproduced first: a run with a
 * class-image folder that could never resume, a FIFO named like a photo that hung the file-I/O
 * pool, an error that echoed every unknown key, raw "internal" answers for file-system failures.
 */
import { execFileSync } from 'node:child_process';
import { closeSync, constants, existsSync, openSync } from 'node:fs';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { readRunManifest, writeRunManifest } from '../../src-main/engine/train/runFiles.ts';
import { train } from '../../src-main/engine/train/trainer.ts';
import { startServer } from '../../src-main/server.ts';
import { toApiError } from '../../src-main/service/errors.ts';
import { readableError } from '../../src-main/service/fsErrors.ts';
import { useBackend } from '../helpers/backend.ts';
import { fast } from '../helpers/training.ts';
import { trainInput } from './fakeEngine.ts';
import { apiError, fakeServices, finished, shapePng } from './helpers.ts';

const open = fakeServices('singlora-hardening-');

async function projectWithPhotos(call: Awaited<ReturnType<typeof open>>['call'], size = 64): Promise<string> {
  const { id } = await call('projects.create', { name: 'Dog' });
  await call('photos.add', {
    projectId: id,
    files: await Promise.all(
      [0, 1, 2].map(async (k) => ({ name: `p${k}.png`, dataBase64: (await shapePng(k, size)).toString('base64') })),
    ),
  });
  return id;
}

describe('issue 27 item 3: a run with a class-image folder resumes; the folder can be cleared', () => {
  useBackend('wasm');

  it('run.json keeps the folder as given (relative), resume works, and null or "" clears the setting', async () => {
    let pauseAtCheckpoint = true;
    let trainer = true;
    const { service, call } = await open({
      // The real trainer; the first run is paused right after its first checkpoint.
      train: async (p, progress, signal) => {
        if (!trainer) return { status: 'completed', step: 0, error: null, fixedLoss: null };
        const pause = new AbortController();
        signal.addEventListener('abort', () => pause.abort(signal.reason));
        const r = await train(trainInput(p), {
          signal: pause.signal,
          onEvent: (e) => {
            progress(e);
            if (pauseAtCheckpoint && e.event === 'checkpoint') pause.abort('pause');
          },
        });
        return { status: r.manifest.status, step: r.manifest.step, error: r.manifest.error, fixedLoss: r.fixedLoss };
      },
    });
    const projectId = await projectWithPhotos(call);
    await mkdir(join(service.store.dir(projectId), 'class-images'));
    const settings = { ...fast({ steps: 3, checkpointEvery: 1 }), priorPreservation: true, numClassImages: 1 };
    const { jobId, runId } = await call('training.start', {
      projectId,
      settings: { ...settings, classImagesDir: 'class-images' },
    });
    expect((await finished(service, jobId)).status).toBe('cancelled');
    const runDir = service.store.runDir(projectId, runId);
    const paused = await readRunManifest(runDir);
    expect(paused.status).toBe('paused');
    expect(paused.settings.classImagesDir).toBe('class-images');
    expect(await readdir(join(service.store.dir(projectId), 'class-images'))).toEqual(['class-00000.png']);

    // Runs paused before the fix hold the resolved folder: they resume too.
    await writeRunManifest(runDir, {
      ...paused,
      settings: { ...paused.settings, classImagesDir: join(service.store.dir(projectId), 'class-images') },
    });
    pauseAtCheckpoint = false;
    const resumed = await call('training.resume', { projectId, runId });
    const job = await finished(service, resumed.jobId);
    expect(job.error).toBeNull();
    expect((await readRunManifest(runDir)).status).toBe('completed');

    for (const cleared of [null, ''] as const) {
      await call('projects.update', { projectId, settings: { classImagesDir: 'class-images' } });
      const p = await call('projects.update', { projectId, settings: { classImagesDir: cleared } });
      expect(p.settings.classImagesDir).toBeUndefined();
      expect((await call('projects.open', { projectId })).settings.classImagesDir).toBeUndefined();
    }
    // training.start takes the same patch (run.json as queued; no training needed to see it).
    trainer = false;
    await call('projects.update', { projectId, settings: { classImagesDir: 'class-images' } });
    const again = await call('training.start', { projectId, settings: { classImagesDir: null } });
    await finished(service, again.jobId);
    expect(
      (await readRunManifest(service.store.runDir(projectId, again.runId))).settings.classImagesDir,
    ).toBeUndefined();
    expect((await apiError(call('projects.update', { projectId, settings: { classImagesDir: '/etc' } }))).code).toBe(
      'invalid_params',
    );
  });
});

describe('issue 27 item 5: a FIFO named like a photo is refused at once', () => {
  it('four photos.add of a FIFO answer "is not a file" quickly, and projects.list still answers (was: hung, the I/O pool used up)', async () => {
    const { call, dir } = await open();
    const { id } = await call('projects.create', { name: 'Fifo' });
    const fifo = join(dir, 'fifo.png');
    execFileSync('mkfifo', [fifo]);
    try {
      const t0 = performance.now();
      const answers = await Promise.all(
        Array.from({ length: 4 }, () => within(5000, apiError(call('photos.add', { projectId: id, paths: [fifo] })))),
      );
      for (const e of answers) expect(e.message).toMatch(/fifo\.png is not a file/);
      expect((await within(5000, call('projects.list', {}))).map((p) => p.id)).toEqual([id]);
      console.log(`4 x photos.add of a FIFO + projects.list: ${(performance.now() - t0).toFixed(0)} ms`);
    } finally {
      // Before the fix the opens wait for a writer: give them one, so the test process can end.
      for (let i = 0; i < 4; i++) {
        try {
          closeSync(openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK));
        } catch {
          break; // ENXIO: nobody is waiting on it
        }
      }
    }
  });
});

/** `p`, or a failure naming the deadline: a hang must fail the test, not stall it. */
function within<T>(ms: number, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

describe('issue 27 item 6: an error echoes a bounded part of the request', () => {
  it('200,000 unknown keys (top level and in settings) get a short answer, quickly (was: every key twice)', async () => {
    const { service, call, dir } = await open();
    const server = await startServer({ port: 0, service, rendererDir: join(dir, 'no-renderer'), log: () => {} });
    try {
      const { id } = await call('projects.create', { name: 'Keys' });
      const keys = Object.fromEntries(Array.from({ length: 200_000 }, (_, i) => [`unknown_key_${i}`, 1]));
      for (const [method, params] of [
        ['projects.open', { projectId: id, ...keys }],
        ['projects.update', { projectId: id, settings: keys }],
      ] as const) {
        const body = JSON.stringify(params);
        const t0 = performance.now();
        const res = await fetch(`http://127.0.0.1:${server.port}/api/${method}`, {
          method: 'POST',
          headers: { Authorization: `Bearer ${server.token}`, 'Content-Type': 'application/json' },
          body,
        });
        const answer = await res.text();
        const ms = performance.now() - t0;
        console.log(
          `${method}: ${(body.length / 2 ** 20).toFixed(1)} MiB asked, ${answer.length} bytes answered in ${ms.toFixed(0)} ms`,
        );
        expect(res.status).toBe(400);
        const error = JSON.parse(answer).error;
        expect(error.code).toBe('invalid_params');
        expect(error.message).toMatch(/unknown keys \(200000\): "unknown_key_0", .* and 199990 more/);
        expect(answer.length).toBeLessThan(4096);
        // A guard against work per key in the answer, not a benchmark: the bound scales with this
        // machine's speed at the moment, as 50 local JSON round trips of the same body (a shared,
        // loaded CI machine measured 5.3 s here; alone it takes under 1 s).
        const t1 = performance.now();
        JSON.stringify(JSON.parse(body));
        const roundTrip = performance.now() - t1;
        expect(ms).toBeLessThan(Math.max(5000, 50 * roundTrip));
      }
    } finally {
      await server.close();
    }
  });
});

describe('issue 27 item 7: file-system failures answer what to do, with the right code', () => {
  it('a 300-character name is invalid_params, not a raw 500; ENOENT and ENAMETOOLONG read as sentences', async () => {
    const { call } = await open();
    const { id } = await call('projects.create', { name: 'Long' });
    const long = `adapters/${'x'.repeat(300)}.safetensors`;
    const e = await apiError(
      call('adapters.export', {
        projectId: id,
        adapter: { file: 'adapters/a.safetensors' },
        format: 'kohya',
        outPath: long,
      }),
    );
    expect(e.code).toBe('not_found'); // the adapter is checked first
    const f = await apiError(call('adapters.inspect', { projectId: id, file: long }));
    expect(f).toMatchObject({ code: 'invalid_params' });
    expect(f.message).toMatch(/^file: 'adapters\/x+\.\.\.' is too long a name for the file system$/);
    const nametoolong = Object.assign(new Error("ENAMETOOLONG: name too long, open '/d/x'"), {
      code: 'ENAMETOOLONG',
      path: '/d/x',
    });
    expect(toApiError(nametoolong).toBody()).toEqual({
      code: 'invalid_params',
      message: 'name too long: /d/x (use a shorter name)',
    });
    // An export job's engine error arrives as text.
    expect(readableError("ENOENT: no such file or directory, rename '/p/adapters/.x.tmp' -> '/p/adapters/x'")).toBe(
      'no such file or folder: /p/adapters/.x.tmp (it was moved or deleted while in use; try again)',
    );
  });
});

describe('issue 27 item 7: a failed training job settles its run as the docs say', () => {
  it('a trainer that records "failed" after a checkpoint leaves the run paused and resumable (was: failed)', async () => {
    let fail = true;
    const { service, call } = await open({
      train: async (p) => {
        if (!fail) return { status: 'completed', step: 2, error: null, fixedLoss: null };
        const m = await readRunManifest(p.runDir);
        const error = 'the UNet produced NaN at step 2';
        const checkpoint = {
          step: 1,
          dir: 'checkpoints/step-000001',
          adapter: 'checkpoints/step-000001/adapter.safetensors',
          createdAt: m.createdAt,
          loss: 0.1,
        };
        await writeRunManifest(p.runDir, { ...m, status: 'failed', step: 1, error, checkpoints: [checkpoint] });
        return { status: 'failed', step: 1, error, fixedLoss: null };
      },
    });
    const projectId = await projectWithPhotos(call);
    const { jobId, runId } = await call('training.start', { projectId, settings: { steps: 2, resolution: 64 } });
    const job = await finished(service, jobId);
    expect(job.status).toBe('failed');
    expect(job.error).toBe(
      'the UNet produced NaN at step 2; the run keeps its last checkpoint (step 1) and can be resumed',
    );
    const run = await call('training.status', { projectId, runId });
    expect(run).toMatchObject({ status: 'paused', error: job.error });
    fail = false;
    expect((await finished(service, (await call('training.resume', { projectId, runId })).jobId)).status).toBe('done');
  });
});

describe('issue 27 item 7: broken projects and runs are listed, marked, and logged once', () => {
  it('projects.list and training.runs show what they cannot read, with why; a broken project can be deleted (was: hidden, logged on every call)', async () => {
    const lines: string[] = [];
    const { service, call } = await open({}, { log: (l) => lines.push(l) });
    const good = await call('projects.create', { name: 'Good' });
    const damaged = await call('projects.create', { name: 'Damaged' });
    await writeFile(join(service.store.dir(damaged.id), 'project.json'), '{"schemaVersion": 1, "name"');
    const orphan = 'orphan-abc123'; // what a generation recreated after a delete: images/ and no project.json
    await mkdir(join(service.projectsDir, orphan, 'images'), { recursive: true });
    for (let i = 0; i < 2; i++) {
      const list = await call('projects.list', {});
      expect(list.map((p) => [p.id, p.broken === undefined ? 'ok' : 'broken']).sort()).toEqual(
        [
          [good.id, 'ok'],
          [damaged.id, 'broken'],
          [orphan, 'broken'],
        ].sort(),
      );
      expect(list.find((p) => p.id === orphan)!.broken).toBe(
        'the folder has no project.json (delete it, or restore the file)',
      );
      expect(list.find((p) => p.id === damaged.id)!.broken).toMatch(/project\.json/);
    }
    expect(lines.filter((l) => l.startsWith('projects:'))).toHaveLength(2); // once each, not once per call
    expect(await call('projects.delete', { projectId: orphan })).toEqual({ deleted: true });
    expect(existsSync(join(service.projectsDir, orphan))).toBe(false);

    const runs = join(service.store.dir(good.id), 'runs');
    await mkdir(join(runs, '20250101-120000-ab12'), { recursive: true });
    await writeFile(join(runs, '20250101-120000-ab12', 'run.json'), 'not json');
    await mkdir(join(runs, '20250102-120000-cd34'));
    for (let i = 0; i < 2; i++) {
      const listed = await call('training.runs', { projectId: good.id });
      expect(listed.map((r) => [r.id, r.status])).toEqual([
        ['20250102-120000-cd34', 'failed'],
        ['20250101-120000-ab12', 'failed'],
      ]);
      expect(listed[0].broken).toBe("the run's folder has no run.json (it never started)");
      expect(listed[1].broken).toMatch(/run\.json: cannot read the run manifest/);
    }
    expect(lines.filter((l) => l.startsWith('runs:'))).toHaveLength(2);
  });
});
