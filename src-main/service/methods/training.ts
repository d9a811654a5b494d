/**
 * training.*: start (settings validated as a whole, saved, run.json written, then the job),
 * resume, cancel, the run list and a run's status.
 *
 * The job itself runs in jobHandlers.ts (the registry): a training job that fails leaves its run
 * `paused` at its last checkpoint or `failed`, with a readable reason; a run that still reads
 * `running` with no job behind it counts as interrupted.
 */
import { existsSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { isAbsolute, join, relative, resolve, sep } from 'node:path';
import { ApiError, type Result, type RunStatusInfo } from '../../api/contract.ts';
import { trainSettingsSchema, type ComputeSettings, type TrainSettings } from '../../api/schemas.ts';
import { computeFor } from '../appSettings.ts';
import { rootsOf } from '../jobHandlers.ts';
import { sharedPath } from '../jobData.ts';
import { patchSettings, validState } from '../projects.ts';
import { isInside } from '../safePath.ts';
import { existingRunBase, newRunId, readRun, settleInterruptedRun, writeQueuedRun } from '../runs.ts';
import {
  assertIdle,
  assertNoTraining,
  baseFor,
  fileUrl,
  submitJob,
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
        await assertNoTraining(c, p.projectId);
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
        await writeQueuedRun(c.store.runDir(p.projectId, runId), c.modelsDir, { id: runId, settings, base, photos });
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
      const job = await c.jobs.get(p.jobId);
      if (!job) throw new ApiError('not_found', `no job '${p.jobId}'`);
      if (job.kind !== 'train')
        throw new ApiError(
          'invalid_params',
          `jobId: job '${p.jobId}' is a ${job.kind} job, not training; use jobs.cancel`,
          [{ field: 'jobId', message: 'not a training job' }],
        );
      return { cancelled: (await c.jobs.cancel(p.jobId, 'cancel')) === true };
    },

    'training.resume': async (p) =>
      c.store.withLock(p.projectId, async () => {
        const project = await c.store.open(p.projectId);
        let m = await readRun(c.store, p.projectId, p.runId);
        await assertNoTraining(c, p.projectId);
        await assertIdle(c, p.projectId, p.runId, 'resume');
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
        const base = existingRunBase(m, c.modelsDir) ?? baseFor(c, project);
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

/** The training job, as data: paths relative to the project and the models folder (jobData.ts). */
function submitTraining(c: ServiceContext, o: TrainingJob) {
  const roots = rootsOf(c);
  return submitJob(c, {
    kind: 'train',
    projectId: o.projectId,
    runId: o.runId,
    params: {
      base: sharedPath(roots, o.projectId, o.base),
      photos: o.photos.map((photo) => sharedPath(roots, o.projectId, photo)),
      settings: o.settings,
      resume: o.resume,
      compute: o.compute,
    },
  });
}
