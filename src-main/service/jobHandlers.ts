/**
 * The one handler registry (issue 29): job kind -> what runs it, `handler(context, data, job)`.
 * The embedded runner (jobs.ts, inside the service) and `singlora worker` (queueWorker.ts, on any
 * machine) both run jobs through `runJob`, over the same context (context.ts) and the same engine
 * process host. The method handlers (methods/*.ts) only check the request and build the data
 * (jobData.ts).
 *
 * A handler's events (`train.event`, `generation.*`, `evaluation.progress`) go out through
 * `c.emit`, its progress through `job.progress`: the service relays both to its clients, a worker
 * sends both through the queue.
 */
import { existsSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { join, relative, sep } from 'node:path';
import { EVAL_MODELS, modelFilePath } from '../engine/eval/modelRegistry.ts';
import { writeRoot } from '../engine/io/atomic.ts';
import { download } from '../engine/io/download.ts';
import { readRunManifest } from '../engine/train/runFiles.ts';
import { fileUrl, imageInfo, projectWriteRoots, runEvent, type ServiceContext } from './context.ts';
import { EngineExitedError } from './engineHost.ts';
import { readableError } from './fsErrors.ts';
import { localPath, type JobData, type JobDataOf, type PathRoots } from './jobData.ts';
import type { JobContext, JobOutcome } from './jobs.ts';
import { markRun, settleInterruptedRun } from './runs.ts';

type Handler<K extends JobData['kind']> = (
  c: ServiceContext,
  data: JobDataOf<K>,
  job: JobContext,
) => Promise<JobOutcome>;

/** Where this process finds a job's portable paths. */
export function rootsOf(c: ServiceContext): PathRoots {
  return { projectDir: (id) => c.store.dir(id), modelsDir: c.modelsDir };
}

export const JOB_HANDLERS: { [K in JobData['kind']]: Handler<K> } = {
  train: runTraining,
  generate: runGeneration,
  evaluate: runEvaluation,
  export: runExport,
  download: runDownload,
};

/** Runs one job's work: the registry's handler for its kind. */
export function runJob(c: ServiceContext, data: JobData, job: JobContext): Promise<JobOutcome> {
  return (JOB_HANDLERS[data.kind] as Handler<JobData['kind']>)(c, data, job);
}

/** What a job leaves behind when it is cancelled before it started: a new run reads `cancelled`. */
export async function cancelQueuedJob(c: ServiceContext, data: JobData): Promise<void> {
  if (data.kind === 'train' && !data.params.resume)
    await markRun(c.store.runDir(data.projectId, data.runId), 'cancelled', 'cancelled before training started', [
      'queued',
    ]);
}

/**
 * Whether the run already holds a checkpoint to continue from: a job that a dead worker left
 * (BullMQ hands it to another) resumes instead of starting over. The trainer's resume cuts the
 * loss log back to that checkpoint, so every step is logged once.
 */
async function resumable(runDir: string): Promise<{ resume: boolean; completed: number | null }> {
  const m = await readRunManifest(runDir).catch(() => null);
  if (!m) return { resume: false, completed: null };
  return { resume: m.checkpoints.length > 0, completed: m.status === 'completed' ? m.step : null };
}

async function runTraining(c: ServiceContext, data: JobDataOf<'train'>, job: JobContext): Promise<JobOutcome> {
  const { projectId, runId, params } = data;
  const runDir = c.store.runDir(projectId, runId);
  const roots = rootsOf(c);
  const found = await resumable(runDir);
  if (found.completed !== null) return { status: 'done', label: `completed ${found.completed} steps` };
  let total = params.settings.steps;
  let done = 0;
  try {
    // The class-image folder is checked again now: it is used now.
    const classImagesDir =
      params.settings.classImagesDir === undefined
        ? undefined
        : await c.paths.classImagesDir(c.store.dir(projectId), params.settings.classImagesDir);
    const r = await c.engine.request(
      'train',
      {
        base: localPath(roots, projectId, params.base),
        photos: params.photos.map((p) => localPath(roots, projectId, p)),
        runDir,
        settings: params.settings, // run.json keeps the folder as the project has it (relative), so it can resume
        classImagesDir,
        modelsDir: c.modelsDir,
        resume: params.resume || found.resume,
        compute: params.compute,
      },
      {
        signal: job.signal,
        // Every write stays in the project (and the class-image folder checked just above).
        writeRoots: await projectWriteRoots(c, projectId, ...(classImagesDir ? [classImagesDir] : [])),
        onProgress: (event) => {
          c.emit('train.event', { jobId: job.jobId, projectId, runId, event: runEvent(projectId, runId, event) });
          if (event.event === 'step') {
            done = event.step;
            total = event.steps;
            job.progress({
              done,
              total,
              label: `step ${event.step}/${event.steps}, loss ${event.smoothed.toFixed(4)}`,
            });
          } else if (event.event === 'prepare') {
            const detail = event.detail ? ` (${event.detail})` : '';
            job.progress({ done, total, label: `preparing: ${event.stage}${detail}` });
          } else if (event.event === 'checkpoint') {
            job.progress({ done, total, label: `checkpoint at step ${event.step}` });
          }
        },
      },
    );
    if (r.status === 'failed')
      return { status: 'failed', error: await settleFailedRun(c, runDir, readableError(r.error ?? 'training failed')) };
    if (r.status === 'paused' || r.status === 'cancelled')
      return { status: 'cancelled', label: `${r.status} at step ${r.step}` };
    return { status: 'done', label: `completed ${r.step} steps` };
  } catch (err) {
    if (err instanceof EngineExitedError)
      return { status: 'failed', error: await settleFailedRun(c, runDir, err.message, { failed: false }) };
    // A new run that never reached the trainer (cancelled while the engine started) is cancelled.
    if (job.signal.aborted) {
      await markRun(runDir, 'cancelled', 'cancelled before training started', ['queued']).catch(() => null);
      throw err;
    }
    return { status: 'failed', error: await settleFailedRun(c, runDir, readableError(err)) };
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

async function runGeneration(c: ServiceContext, data: JobDataOf<'generate'>, job: JobContext): Promise<JobOutcome> {
  const { projectId, params } = data;
  const roots = rootsOf(c);
  const r = await c.engine.request(
    'generate',
    {
      base: localPath(roots, projectId, params.base),
      settings: params.settings,
      adapters: params.adapters.map((a) => ({ path: localPath(roots, projectId, a.path), strength: a.strength })),
      outDir: join(c.store.dir(projectId), 'images'),
      compute: params.compute,
    },
    {
      signal: job.signal,
      writeRoots: await projectWriteRoots(c, projectId),
      onProgress: (g) => {
        if (g.type === 'step') {
          const e = { jobId: job.jobId, image: g.image + 1, images: g.images, step: g.step, steps: g.steps };
          c.emit('generation.step', e);
          job.progress({
            done: g.image * g.steps + g.step,
            total: g.images * g.steps,
            label: `image ${e.image}/${g.images}, step ${g.step}/${g.steps}`,
          });
        } else if (g.type === 'image') {
          c.emit('generation.image', { jobId: job.jobId, projectId, image: imageInfo(projectId, g.sidecar) });
        }
      },
    },
  );
  return { label: `${r.files.length} image${r.files.length === 1 ? '' : 's'} in images/` };
}

async function runEvaluation(c: ServiceContext, data: JobDataOf<'evaluate'>, job: JobContext): Promise<JobOutcome> {
  const { projectId, runId, params } = data;
  const roots = rootsOf(c);
  const ev = await c.engine.request(
    'evaluate',
    {
      runDir: c.store.runDir(projectId, runId),
      photos: params.photos.map((p) => localPath(roots, projectId, p)),
      checkpoints: params.checkpoints,
      subjectType: params.subjectType,
      prompts: params.prompts,
      imagesPerPrompt: params.imagesPerPrompt,
      steps: params.steps,
      ...(params.scorer.kind === 'dino'
        ? { dinoModel: localPath(roots, projectId, params.scorer.model) }
        : { scorer: 'toy' as const }),
      modelsDir: c.modelsDir,
      compute: params.compute,
    },
    {
      signal: job.signal,
      writeRoots: await projectWriteRoots(c, projectId),
      onProgress: ({ done, total, label }) => {
        c.emit('evaluation.progress', { jobId: job.jobId, done, total, label });
        job.progress({ done, total, label });
      },
    },
  );
  return { label: ev.best !== null ? `best: step ${ev.best}` : 'no checkpoint beats the base model' };
}

async function runExport(c: ServiceContext, data: JobDataOf<'export'>, job: JobContext): Promise<JobOutcome> {
  const { projectId, params } = data;
  const roots = rootsOf(c);
  const projectDir = c.store.dir(projectId);
  const merged = params.format === 'merged-diffusers' || params.format === 'merged-single-file';
  const folder = params.format === 'merged-diffusers';
  // Checked again now: a symlink or file made since the request must not redirect the write;
  // one made after this check is refused by the engine's writes (held inside adapters/).
  const out = await c.paths.exportTarget(projectDir, params.outPath, merged);
  const rel = relative(projectDir, out).split(sep).join('/');
  await c.engine.request(
    'export',
    {
      adapter: localPath(roots, projectId, params.adapter),
      format: params.format,
      out,
      base: params.base && localPath(roots, projectId, params.base),
    },
    {
      signal: job.signal,
      writeRoots: [await writeRoot(join(projectDir, 'adapters'))],
      onProgress: ({ done, total }) => job.progress({ done, total, label: `writing ${rel}` }),
    },
  );
  // A merged diffusers export is a folder: the server sends it as one .tar (packed on the fly).
  return { label: rel, result: { path: rel, url: fileUrl(projectId, folder ? `${rel}.tar` : rel) } };
}

/** No network (no DNS, refused, unreachable): in words, and how to do it by hand. */
const OFFLINE = /ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ENETUNREACH|EHOSTUNREACH|ETIMEDOUT|getaddrinfo|cannot connect/;

async function runDownload(c: ServiceContext, data: JobDataOf<'download'>, job: JobContext): Promise<JobOutcome> {
  const spec = (c.opts.evalModels ?? EVAL_MODELS).find((m) => m.id === data.params.name);
  if (!spec) throw new Error(`no downloadable model '${data.params.name}'`);
  const files = spec.files.filter((f) => !existsSync(modelFilePath(c.modelsDir, spec.id, f.file)));
  const known = files.reduce((n, f) => n + (f.approxBytes ?? 0), 0);
  let finished = 0;
  for (const [i, f] of files.entries()) {
    const dest = modelFilePath(c.modelsDir, spec.id, f.file);
    await download(f.url, dest, {
      sha256: f.sha256,
      signal: job.signal,
      onProgress: (pr) =>
        job.progress({
          done: finished + pr.bytes,
          total: Math.max(known, finished + (pr.total ?? pr.bytes)),
          label: `${spec.id}/${f.file} (${i + 1}/${files.length})`,
        }),
    }).catch((err: Error) => {
      if (OFFLINE.test(err.message))
        throw new Error(
          `cannot reach ${new URL(f.url).host} (is this machine offline?). Download ${f.url} on a machine with internet and place it at ${dest}, then press Check again.`,
        );
      throw err;
    });
    finished += (await stat(dest)).size;
  }
  return {
    label: files.length
      ? `${spec.id}: ${files.length} file${files.length === 1 ? '' : 's'} in ${join(c.modelsDir, spec.id)}`
      : `${spec.id}: already present`,
  };
}
