/**
 * A queue worker in its own process, for the stalled-job test (redisQueue.test.ts): it takes
 * `train` jobs with a 1 s lock, reports progress, prints `running <jobId>` and then never ends the
 * job, so that the test can SIGKILL it mid-job.
 *
 *   node --import tsx test/service/queueWorkerChild.ts <redis url> <worker name>
 */
import { startQueueWorker } from '../../src-main/service/redisQueue.ts';

const [url, name] = process.argv.slice(2);
await startQueueWorker({
  url,
  name,
  queues: ['train'],
  lockMs: 1_000,
  log: (line) => process.stderr.write(`${line}\n`),
  run: async (_data, ctx) => {
    ctx.progress({ done: 1, total: 10, label: 'step 1/10' });
    process.stdout.write(`running ${ctx.jobId}\n`);
    return new Promise(() => {});
  },
});
process.stdout.write('ready\n');
