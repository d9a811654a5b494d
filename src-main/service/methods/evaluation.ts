/** evaluation.*: score a run's checkpoints (a job), read the scores, choose a checkpoint. */
import { ApiError } from '../../api/contract.ts';
import { runManifestSchema } from '../../api/schemas.ts';
import { locateDino } from '../../engine/eval/modelRegistry.ts';
import { quickEvalPrompts } from '../../engine/eval/prompts.ts';
import { writeRunManifest } from '../../engine/train/runFiles.ts';
import { assertIdle, submit, usablePhotos, type ServiceContext } from '../context.ts';
import { validState } from '../projects.ts';
import { readRun } from '../runs.ts';
import type { NamespaceHandlers } from './handlers.ts';

export function evaluationHandlers(c: ServiceContext): NamespaceHandlers<'evaluation'> {
  return {
    'evaluation.start': async (p) =>
      c.store.withLock(p.projectId, async () => {
        const project = await c.store.open(p.projectId);
        const m = await readRun(c.store, p.projectId, p.runId);
        assertIdle(c, p.projectId, p.runId, 'evaluate');
        if (!m.checkpoints.length) throw new ApiError('conflict', `run '${p.runId}' has no checkpoint to evaluate yet`);
        const photos = await usablePhotos(c, p.projectId);
        let dinoModel: string;
        try {
          dinoModel = locateDino(c.modelsDir, c.opts.dinoModel);
        } catch (err) {
          throw new ApiError('not_found', `${(err as Error).message} (Models screen: download DINO)`);
        }
        const runDir = c.store.runDir(p.projectId, p.runId);
        // A quick check: one prompt per category, one image each (explicit prompts and counts win).
        const prompts = p.prompts ?? (p.quick ? quickEvalPrompts(project.subject.type, m.settings.triggerToken, m.settings.classWord) : undefined);
        const imagesPerPrompt = p.imagesPerPrompt ?? (p.quick ? 1 : undefined);
        const job = await submit(c, {
          kind: 'evaluate',
          projectId: p.projectId,
          runId: p.runId,
          run: async (ctx) => {
            const ev = await c.engine.request(
              'evaluate',
              { runDir, photos, checkpoints: p.checkpoints, subjectType: project.subject.type, prompts, imagesPerPrompt, steps: c.opts.evaluationSteps, dinoModel, modelsDir: c.modelsDir },
              {
                signal: ctx.signal,
                onProgress: ({ done, total, label }) => {
                  c.emit('evaluation.progress', { jobId: ctx.jobId, done, total, label });
                  ctx.progress({ done, total, label });
                },
              },
            );
            return { label: ev.best !== null ? `best: step ${ev.best}` : 'evaluated' };
          },
        });
        return { jobId: job.id };
      }),

    'evaluation.get': async (p) => (await readRun(c.store, p.projectId, p.runId)).evaluation,

    'evaluation.choose': async (p) =>
      c.store.withLock(p.projectId, async () => {
        const m = await readRun(c.store, p.projectId, p.runId);
        assertIdle(c, p.projectId, p.runId, 'choose a checkpoint');
        if (!m.evaluation) throw new ApiError('conflict', `run '${p.runId}' has not been evaluated yet; evaluate it before choosing a checkpoint`);
        if (!m.checkpoints.some((cp) => cp.step === p.step)) throw new ApiError('invalid_params', `step: run '${p.runId}' has no checkpoint at step ${p.step} (it has ${m.checkpoints.map((cp) => cp.step).join(', ')})`, [{ field: 'step', message: `no checkpoint at step ${p.step}` }]);
        const evaluation = { ...m.evaluation, chosen: p.step };
        await writeRunManifest(c.store.runDir(p.projectId, p.runId), validState(runManifestSchema, { ...m, evaluation }, 'evaluation.choose'));
        return evaluation;
      }),
  };
}
