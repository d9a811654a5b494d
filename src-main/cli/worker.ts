/**
 * `singlora worker`: takes jobs from a Redis queue (`singlora serve --queue`) and runs them on this
 * machine's engine (service/queueWorker.ts). Any number of workers, on any machine that mounts the
 * shared data folder; Ctrl-C / SIGTERM pauses running training at a checkpoint and hands the job
 * back to the queue, where another worker resumes it. See docs/scale-out.md.
 */
import { Option, type Command } from 'commander';
import { PROVIDERS } from '../api/schemas.ts';
import {
  action,
  onCancel,
  parse,
  printResult,
  queueFromEnv,
  redacted,
  requireNotFile,
  UsageError,
  withCommon,
  type GlobalOptions,
} from './common.ts';

interface WorkerOptions extends GlobalOptions {
  queue?: string;
  dataDir?: string;
  modelsDir?: string;
  name?: string;
  allowCpuTraining?: boolean;
  provider?: (typeof PROVIDERS)[number];
}

export function register(program: Command): void {
  withCommon(
    program
      .command('worker')
      .description(
        'run jobs from a Redis queue (singlora serve --queue) on this machine: train, generate, evaluate, export, download',
      )
      .option(
        '--queue <url>',
        'the Redis queue: redis://host:port or rediss://:password@host:port (default: SINGLORA_QUEUE)',
        parse.queueUrl,
      )
      .option('--data-dir <dir>', 'the shared data folder, as this machine mounts it (default: SINGLORA_DATA_DIR)')
      .option(
        '--models-dir <dir>',
        'models folder (default: <data-dir>/models when present, else SINGLORA_MODELS_DIR or <repo>/models)',
      )
      .option('--name <name>', "this worker's name in job records and the Jobs panel (default: <host>:<pid>)")
      .option('--allow-cpu-training', 'take training jobs without a GPU provider (slow; for tests and small models)')
      .addOption(
        new Option(
          '--provider <name>',
          'the ONNX Runtime provider for every job (default: what each job asks for)',
        ).choices(PROVIDERS),
      ),
  ).action(
    action(async (o: WorkerOptions) => {
      const queue = o.queue ?? queueFromEnv();
      if (!queue) throw new UsageError('--queue: give the Redis queue (redis://host:port), or set SINGLORA_QUEUE');
      const dataDir = o.dataDir ?? (process.env.SINGLORA_DATA_DIR?.trim() || undefined);
      if (!dataDir) throw new UsageError('--data-dir: give the shared data folder (the one the server serves)');
      requireNotFile(dataDir, '--data-dir');
      if (o.modelsDir) requireNotFile(o.modelsDir, '--models-dir');
      const stopRequested = new Promise<void>((resolve) => onCancel(() => resolve()));
      const { startWorker } = await import('../service/queueWorker.ts');
      const worker = await startWorker({
        queue,
        dataDir,
        modelsDir: o.modelsDir,
        name: o.name,
        allowCpuTraining: o.allowCpuTraining,
        provider: o.provider,
        backend: o.backend && o.backend !== 'auto' ? o.backend : undefined,
        log: (line) => process.stderr.write(`${line}\n`),
      });
      printResult(
        o,
        {
          event: 'worker',
          name: worker.name,
          queues: worker.queues,
          dataDir: worker.dataDir,
          modelsDir: worker.modelsDir,
        },
        `worker ${worker.name} takes ${worker.queues.join(', ')} jobs from ${redacted(queue)} (data ${worker.dataDir}, models ${worker.modelsDir}); Ctrl-C stops it`,
      );
      await stopRequested;
      process.stderr.write('\nstopping: running training pauses at a checkpoint and goes back to the queue...\n');
      await worker.close();
    }),
  );
}
