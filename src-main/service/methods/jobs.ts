/** jobs.*: the job list and cancelling. */
import { ApiError } from '../../api/contract.ts';
import type { ServiceContext } from '../context.ts';
import type { NamespaceHandlers } from './handlers.ts';

export function jobsHandlers(c: ServiceContext): NamespaceHandlers<'jobs'> {
  return {
    'jobs.list': async () => c.jobs.list(),
    'jobs.queue': async () => c.jobs.queueStatus(),
    'jobs.cancel': async (p) => {
      const r = await c.jobs.cancel(p.jobId, 'cancel');
      if (r === undefined) throw new ApiError('not_found', `no job '${p.jobId}'`);
      return { cancelled: r };
    },
  };
}
