/**
 * `singlora worker` (issue 29): takes jobs from the Redis queue and runs them on its own engine
 * process, through the same handler registry as the embedded queue (jobHandlers.ts), over a
 * service opened on the shared data folder as a reader (no lock file, no jobs.json).
 *
 *   queue    taken when
 *   -------  -----------------------------------------------------------------------------
 *   train    --allow-cpu-training, or a GPU provider (--provider cuda|dml|coreml|webgpu, or
 *            `auto` and the engine's doctor finds a GPU provider that can train)
 *   engine   always (generate, evaluate, export)
 *   io       always (downloads into the models folder)
 *
 * The handler's events and progress go back through the job's BullMQ progress (redisQueue.ts);
 * the server relays them. ONNX graphs are cached on this machine (SINGLORA_CACHE_DIR, else
 * `<repo>/.cache`), not on the share; base models are read through the models folder
 * (`--models-dir`, default `<data-dir>/models` when it exists).
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { PROVIDERS } from '../api/schemas.ts';

type Provider = (typeof PROVIDERS)[number];
import { parseJobData, type JobData, type QueueName } from './jobData.ts';
import { defaultWorkerName } from './jobs.ts';
import { startQueueWorker, type QueueJobContext, type RunningQueueWorker } from './redisQueue.ts';
import { refuseEmbeddedOwner, Service, type ServiceOptions } from './service.ts';

export interface WorkerOptions {
  queue: string;
  dataDir: string;
  modelsDir?: string;
  /** Default: `<host>:<pid>`. */
  name?: string;
  allowCpuTraining?: boolean;
  /** The ONNX Runtime provider this worker runs every job on (default: what each job asks for). */
  provider?: Provider;
  backend?: string;
  log: (line: string) => void;
  /** More options of the service the worker opens (a test gives its engine here: spawnEngine). */
  service?: Partial<ServiceOptions>;
}

export interface RunningWorker {
  name: string;
  queues: QueueName[];
  dataDir: string;
  modelsDir: string;
  /** Stops taking jobs; running training pauses at a checkpoint and goes back to the queue. */
  close(): Promise<void>;
}

const GPU_PROVIDERS: readonly Provider[] = ['cuda', 'dml', 'coreml', 'webgpu'];

/** The models folder a worker reads: `--models-dir`, else the share's `models/` when present. */
function modelsDirFor(o: WorkerOptions): string | undefined {
  if (o.modelsDir) return o.modelsDir;
  const shared = join(o.dataDir, 'models');
  return existsSync(shared) ? shared : undefined;
}

/** Whether this worker takes training: asked for, a GPU provider named, or one found that can train. */
async function takesTraining(o: WorkerOptions, service: Service): Promise<boolean> {
  if (o.allowCpuTraining) return true;
  if (o.provider && o.provider !== 'auto') return GPU_PROVIDERS.includes(o.provider);
  const doctor = await service.engine.request('doctor', {});
  return doctor.providers.some((p) => p.name !== 'cpu' && p.available && p.training.ok);
}

/** A job as this worker runs it: its provider, when the worker was given one. */
function withProvider(data: JobData, provider: Provider | undefined): JobData {
  if (!provider || data.kind === 'export' || data.kind === 'download') return data;
  return { ...data, params: { ...data.params, compute: { ...data.params.compute, provider } } } as JobData;
}

export async function startWorker(o: WorkerOptions): Promise<RunningWorker> {
  const name = o.name ?? defaultWorkerName();
  await refuseEmbeddedOwner(o.dataDir);
  const service = await Service.open({
    dataDir: o.dataDir,
    modelsDir: modelsDirFor(o),
    exclusive: false,
    backend: o.backend,
    log: o.log,
    ...o.service,
  });
  let worker: RunningQueueWorker;
  let queues: QueueName[];
  try {
    queues = [...((await takesTraining(o, service)) ? (['train'] as const) : []), 'engine', 'io'];
    // Each running job's events (they carry its id) go to that job's progress.
    const jobs = new Map<string, QueueJobContext>();
    service.on((event, data) => {
      const jobId = (data as { jobId?: unknown } | null)?.jobId;
      if (typeof jobId === 'string' && event !== 'job.updated') jobs.get(jobId)?.emit(event, data);
    });
    worker = await startQueueWorker({
      url: o.queue,
      name,
      queues,
      lockMs: Number(process.env.SINGLORA_QUEUE_LOCK_MS) || undefined,
      log: o.log,
      run: async (raw, ctx) => {
        const data = withProvider(parseJobData(raw, `queue job ${ctx.jobId}`), o.provider);
        jobs.set(ctx.jobId, ctx);
        try {
          return await service.runJob(data, { jobId: ctx.jobId, signal: ctx.signal, progress: ctx.progress });
        } finally {
          jobs.delete(ctx.jobId);
        }
      },
    });
  } catch (err) {
    await service.close();
    throw err;
  }
  return {
    name,
    queues,
    dataDir: service.dataDir,
    modelsDir: service.modelsDir,
    async close() {
      await worker.close();
      await service.close();
    },
  };
}
