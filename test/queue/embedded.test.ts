/**
 * Issue 29: the embedded queue stays the default. `singlora serve` without `--queue` (and with no
 * SINGLORA_QUEUE) runs its jobs in its own engine process with no Redis anywhere: `jobs.queue`
 * answers `embedded` with the server's own process as the one worker, and a job record names it.
 */
import { hostname } from 'node:os';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cluster, newProject, toyImage, type Served } from '../helpers/queueCluster.ts';

describe('serve without --queue (the embedded default)', () => {
  let cluster: Cluster;
  let server: Served;

  beforeAll(async () => {
    cluster = new Cluster();
    server = await cluster.serve();
  });
  afterAll(async () => cluster?.dispose());

  it('runs a generate job in its own engine, no Redis needed; the job names the server process', async () => {
    const own = `${hostname()}:${server.proc.pid}`;
    const queue = await server.call('jobs.queue', {});
    expect(queue.mode).toBe('embedded');
    expect(queue.workers.map((w) => [w.name, w.alive])).toEqual([[own, true]]);

    const projectId = await newProject(server, 'Embedded');
    const { jobId } = await server.call('generation.start', { projectId, settings: toyImage(1) });
    const job = await server.waitJob(jobId, 120_000);
    expect(job, cluster.report()).toMatchObject({ status: 'done', error: null, worker: own });
    expect(await server.call('generation.list', { projectId })).toHaveLength(1);
    expect(server.proc.output).not.toMatch(/redis|ECONNREFUSED/i);
  });
});
