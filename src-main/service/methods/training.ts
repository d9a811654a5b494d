/**
 * training.*: start (settings validated as a whole, saved, run.json written, then the job),
 * resume, cancel, the run list and a run's status.
 *
 * A training job that fails leaves its run in a state the user can act on: `paused` at its last
 * checkpoint (resume continues), or `failed` without one, with a readable reason ("disk full:
 * <path> ..."). run.json is settled here because the trainer may not have been able to write it
 * (a full disk); a run that still reads `running` with no job behind it counts as interrupted.
 */
import { existsSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { isAbsolute, join, relative, resolve, sep } from 'node:path';
import { ApiError, type Result, type RunStatusInfo } from '../../api/contract.ts';
import { trainSettingsSchema, type ComputeSettings, type TrainSettings } from '../../api/schemas.ts';
import { computeFor } from '../appSettings.ts';
import { EngineExitedError } from '../engineHost.ts';
import { readableError } from '../fsErrors.ts';
import type { JobContext, JobOutcome } from '../jobs.ts';
import { patchSettings, validState } from '../projects.ts';
import { isInside } from '../safePath.ts';
import { markRun, newRunId, readRun, settleInterruptedRun, writeQueuedRun } from '../runs.ts';
import {
  assertIdle,
  assertNoTraining,
  baseFor,
  fileUrl,
  projectWriteRoots,
  runEvent,
  submit,
  usablePhotos,
  type ServiceContext,
} from '../context.ts';
import type { NamespaceHandlers } from './handlers.ts';

type RunSummary = Result<'training.runs'>[number];

interface TrainingJob {
  projectId: string;
  runId: string;
  base: string;
  photos: string[];
  settings: TrainSettings;
  resume: boolean;
  compute: ComputeSettings;
}

export function trainingHandlers(c: ServiceContext): NamespaceHandlers<'training'> {
  return {
    'training.start': async (p) =>
      c.store.withLock(p.projectId, async () => {
        const project = await c.store.open(p.projectId);
        assertNoTraining(c, p.projectId);
        const merged = validState(
          trainSettingsSchema,
          patchSettings(project.settings, p.settings),
          'training.start: settings',
        );
        if (merged.classImagesDir !== undefined)
          await c.paths.classImagesDir(c.store.dir(p.projectId), merged.classImagesDir);
        const base = baseFor(c, project);
        const compute = await computeFor(c.dataDir, p, c.opts.engineEnv);
        // The settings the user last chose are the project's (the subject owns token and class word);
        // a new resolution re-checks the photos, so they are listed after saving.
        const saved = Object.keys(p.settings).length
          ? await c.store.update(p.projectId, { settings: p.settings })
          : project;
        const settings = saved.settings;
        const photos = await usablePhotos(c, p.projectId);
        const runId = newRunId();
        await writeQueuedRun(c.store.runDir(p.projectId, runId), { id: runId, settings, base, photos });
        const job = await submitTraining(c, {
          projectId: p.projectId,
          runId,
          base,
          photos,
          settings,
          resume: false,
          compute,
        });
        return { jobId: job.id, runId };
      }),

    'training.cancel': async (p) => {
      const job = c.jobs.get(p.jobId);
      if (!job) throw new ApiError('not_found', `no job '${p.jobId}'`);
      if (job.kind !== 'train')
        throw new ApiError(
          'invalid_params',
          `jobId: job '${p.jobId}' is a ${job.kind} job, not training; use jobs.cancel`,
          [{ field: 'jobId', message: 'not a training job' }],
        );
      return { cancelled: c.jobs.cancel(p.jobId, 'cancel') === true };
    },

    'training.resume': async (p) =>
      c.store.withLock(p.projectId, async () => {
        const project = await c.store.open(p.projectId);
        let m = await readRun(c.store, p.projectId, p.runId);
        assertNoTraining(c, p.projectId);
        assertIdle(c, p.projectId, p.runId, 'resume');
        // No job of this service runs it, so a run that reads `running` was interrupted (its last
        // write failed): settle it now instead of refusing until a restart.
        if (m.status === 'running') {
          await settleInterruptedRun(c.store.runDir(p.projectId, p.runId), 'training stopped without recording why');
          m = await readRun(c.store, p.projectId, p.runId);
        }
        if (m.status === 'completed')
          throw new ApiError('conflict', `run '${p.runId}' already completed ${m.step} steps`);
        if (m.status === 'running' || m.status === 'queued')
          throw new ApiError('conflict', `run '${p.runId}' is ${m.status}`);
        if (!m.checkpoints.length)
          throw new ApiError('conflict', `run '${p.runId}' has no checkpoint to resume from; start a new run`);
        const base = m.baseModel.path && existsSync(m.baseModel.path) ? m.baseModel.path : baseFor(c, project);
        const photos = await usablePhotos(c, p.projectId);
        const job = await submitTraining(c, {
          projectId: p.projectId,
          runId: p.runId,
          base,
          photos,
          settings: relativeClassImagesDir(c.store.dir(p.projectId), m.settings),
          resume: true,
          compute: await computeFor(c.dataDir, {}, c.opts.engineEnv),
        });
        return { jobId: job.id, runId: p.runId };
      }),

    // Every run, newest first; a folder without a readable run.json is listed as broken, with why.
    'training.runs': async (p) => {
      await c.store.open(p.projectId);
      const out: RunSummary[] = [];
      for (const runId of (await c.store.runFolders(p.projectId)).reverse()) {
        try {
          const m = await readRun(c.store, p.projectId, runId);
          out.push({
            id: m.id,
            createdAt: m.createdAt,
            updatedAt: m.updatedAt,
            status: m.status,
            step: m.step,
            error: m.error,
            steps: m.settings.steps,
            method: m.settings.method,
            learningRate: m.settings.learningRate,
            best: m.evaluation?.chosen ?? m.evaluation?.best ?? null,
          });
        } catch (err) {
          const reason = existsSync(join(c.store.runDir(p.projectId, runId), 'run.json'))
            ? (err as Error).message
            : "the run's folder has no run.json (it never started)";
          c.store.logOnce(c.log, `runs: ${p.projectId}/${runId} is broken: ${reason}`);
          out.push(await brokenRun(c.store.runDir(p.projectId, runId), runId, reason));
        }
      }
      return out;
    },

    'training.status': async (p): Promise<RunStatusInfo> => {
      const m = await readRun(c.store, p.projectId, p.runId);
      return {
        ...m,
        samples: m.samples.map((s) => ({ ...s, url: fileUrl(p.projectId, `runs/${p.runId}/${s.file}`) })),
      };
    },
  };
}

async function brokenRun(runDir: string, id: string, reason: string): Promise<RunSummary> {
  const at = ((await stat(runDir).catch(() => null))?.mtime ?? new Date(0)).toISOString();
  return {
    id,
    createdAt: at,
    updatedAt: at,
    status: 'failed',
    step: 0,
    error: reason,
    steps: 0,
    method: 'singlora',
    best: null,
    broken: reason,
  };
}

/**
 * Runs started before run.json kept the class-image folder as given hold its resolved path; one
 * inside the project becomes relative again, so the path policy accepts it (it refuses absolute
 * folders outside the desktop app).
 */
function relativeClassImagesDir(projectDir: string, settings: TrainSettings): TrainSettings {
  const dir = settings.classImagesDir;
  if (!dir || !isAbsolute(dir) || !isInside(resolve(projectDir), resolve(dir)) || resolve(dir) === resolve(projectDir))
    return settings;
  return { ...settings, classImagesDir: relative(projectDir, dir).split(sep).join('/') };
}

function submitTraining(c: ServiceContext, o: TrainingJob) {
  const runDir = c.store.runDir(o.projectId, o.runId);
  return submit(c, {
    kind: 'train',
    projectId: o.projectId,
    runId: o.runId,
    onCancelQueued: async () => {
      if (!o.resume) await markRun(runDir, 'cancelled', 'cancelled before training started', ['queued']);
    },
    run: async (ctx) => runTraining(c, ctx, { ...o, runDir }),
  });
}

async function runTraining(
  c: ServiceContext,
  ctx: JobContext,
  o: TrainingJob & { runDir: string },
): Promise<JobOutcome> {
  let total = o.settings.steps;
  let done = 0;
  try {
    // The class-image folder is checked again now: it is used now.
    const classImagesDir =
      o.settings.classImagesDir === undefined
        ? undefined
        : await c.paths.classImagesDir(c.store.dir(o.projectId), o.settings.classImagesDir);
    const r = await c.engine.request(
      'train',
      {
        base: o.base,
        photos: o.photos,
        runDir: o.runDir,
        settings: o.settings, // run.json keeps the folder as the project has it (relative), so it can resume
        classImagesDir,
        resume: o.resume,
        compute: o.compute,
      },
      {
        signal: ctx.signal,
        // Every write stays in the project (and the class-image folder checked just above).
        writeRoots: await projectWriteRoots(c, o.projectId, ...(classImagesDir ? [classImagesDir] : [])),
        onProgress: (event) => {
          c.emit('train.event', {
            jobId: ctx.jobId,
            projectId: o.projectId,
            runId: o.runId,
            event: runEvent(o.projectId, o.runId, event),
          });
          if (event.event === 'step') {
            done = event.step;
            total = event.steps;
            ctx.progress({
              done,
              total,
              label: `step ${event.step}/${event.steps}, loss ${event.smoothed.toFixed(4)}`,
            });
          } else if (event.event === 'prepare') {
            ctx.progress({
              done,
              total,
              label: `preparing: ${event.stage}${event.detail ? ` (${event.detail})` : ''}`,
            });
          } else if (event.event === 'checkpoint') {
            ctx.progress({ done, total, label: `checkpoint at step ${event.step}` });
          }
        },
      },
    );
    if (r.status === 'failed')
      return {
        status: 'failed',
        error: await settleFailedRun(c, o.runDir, readableError(r.error ?? 'training failed')),
      };
    if (r.status === 'paused' || r.status === 'cancelled')
      return { status: 'cancelled', label: `${r.status} at step ${r.step}` };
    return { status: 'done', label: `completed ${r.step} steps` };
  } catch (err) {
    if (err instanceof EngineExitedError)
      return { status: 'failed', error: await settleFailedRun(c, o.runDir, err.message, { failed: false }) };
    // A new run that never reached the trainer (cancelled while the engine started) is cancelled.
    if (ctx.signal.aborted) {
      await markRun(o.runDir, 'cancelled', 'cancelled before training started', ['queued']).catch(() => null);
      throw err;
    }
    return { status: 'failed', error: await settleFailedRun(c, o.runDir, readableError(err)) };
  }
}

/**
 * run.json after a failed job: a run left `running` or `queued` becomes `paused` (with a
 * checkpoint) or `failed`, with `why` and what to do next. Returns that sentence. If even this
 * write fails (the disk is still full), the run is settled on the next resume or restart.
 */
async function settleFailedRun(c: ServiceContext, runDir: string, why: string, o = { failed: true }): Promise<string> {
  try {
    return await settleInterruptedRun(runDir, why, o);
  } catch (err) {
    c.log(`runs: cannot record the failure in ${runDir}: ${readableError(err)}`);
    return `${why}; the run could not be updated (${readableError(err)}); resume it once the problem is fixed`;
  }
}
