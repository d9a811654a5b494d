/**
 * evaluation.*: what an evaluation needs (checked before the click), score a run's checkpoints (a
 * job), read the scores and the images they were computed on, choose a checkpoint.
 *
 * The DINO model: `<modelsDir>/dino/model.onnx` (or the service's `dinoModel`). When that is
 * missing, the demo models still evaluate offline: the tiny demo model with the bundled tiny DINO,
 * the toy model with the toy world's pixel score (modelRegistry.ts `scorerFor`).
 */
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { ApiError } from '../../api/contract.ts';
import { runManifestSchema } from '../../api/schemas.ts';
import { scorerFor, type SubjectScorer } from '../../engine/eval/modelRegistry.ts';
import { quickEvalPrompts } from '../../engine/eval/prompts.ts';
import { checkpointName, runBasePath, writeRunManifest } from '../../engine/train/runFiles.ts';
import { assertIdle, defaultBase, fileUrl, submitJob, usablePhotos, type ServiceContext } from '../context.ts';
import { sharedPath } from '../jobData.ts';
import { rootsOf } from '../jobHandlers.ts';
import { computeFor } from '../appSettings.ts';
import { validState } from '../projects.ts';
import { readRun } from '../runs.ts';
import type { NamespaceHandlers } from './handlers.ts';

export function evaluationHandlers(c: ServiceContext): NamespaceHandlers<'evaluation'> {
  return {
    'evaluation.start': async (p) =>
      c.store.withLock(p.projectId, async () => {
        const project = await c.store.open(p.projectId);
        const m = await readRun(c.store, p.projectId, p.runId);
        await assertIdle(c, p.projectId, p.runId, 'evaluate');
        if (!m.checkpoints.length) throw new ApiError('conflict', `run '${p.runId}' has no checkpoint to evaluate yet`);
        const photos = await usablePhotos(c, p.projectId);
        let scorer: SubjectScorer;
        try {
          scorer = scorerFor(runBasePath(m, c.modelsDir), c.modelsDir, c.opts.dinoModel);
        } catch (err) {
          throw new ApiError('not_found', `${(err as Error).message} (Models screen: download DINO)`);
        }
        // A quick check: one prompt per category, one image each (explicit prompts and counts win);
        // the toy model keeps its own probes (made from the run), one image each.
        const prompts =
          p.prompts ??
          (p.quick && scorer.kind === 'dino'
            ? quickEvalPrompts(project.subject.type, m.settings.triggerToken, m.settings.classWord)
            : undefined);
        const imagesPerPrompt = p.imagesPerPrompt ?? (p.quick ? 1 : undefined);
        const compute = await computeFor(c.dataDir, {}, c.opts.engineEnv);
        const roots = rootsOf(c);
        const job = await submitJob(c, {
          kind: 'evaluate',
          projectId: p.projectId,
          runId: p.runId,
          params: {
            photos: photos.map((photo) => sharedPath(roots, p.projectId, photo)),
            checkpoints: p.checkpoints,
            subjectType: project.subject.type,
            prompts,
            imagesPerPrompt,
            steps: c.opts.evaluationSteps,
            scorer:
              scorer.kind === 'dino'
                ? { kind: 'dino', model: sharedPath(roots, p.projectId, scorer.path) }
                : { kind: 'toy' },
            compute,
          },
        });
        return { jobId: job.id };
      }),

    'evaluation.check': async (p) => {
      const project = await c.store.open(p.projectId);
      try {
        const d = scorerFor(project.baseModel ?? defaultBase(c), c.modelsDir, c.opts.dinoModel);
        if (d.kind === 'toy')
          return {
            ready: true,
            dino: null,
            bundled: false,
            metric: 'toy' as const,
            message:
              "no DINO installed: the toy model is scored with the toy world's own subject fidelity (the colours of the object and their layout)",
          };
        return {
          ready: true,
          dino: d.path,
          bundled: d.bundled,
          metric: 'dino' as const,
          message: d.bundled
            ? 'uses the tiny DINO bundled with the demo model (scores only mean something for the demo)'
            : null,
        };
      } catch (err) {
        return {
          ready: false,
          dino: null,
          bundled: false,
          metric: 'dino' as const,
          message: `${(err as Error).message}. Download it on the Models & Settings screen (about 87 MB), or place the file there by hand when this machine is offline.`,
        };
      }
    },

    'evaluation.images': async (p) => {
      const m = await readRun(c.store, p.projectId, p.runId);
      if (!m.evaluation) return [];
      const perLabel = m.evaluation.prompts.length * m.evaluation.imagesPerPrompt;
      const evalDir = join(c.store.runDir(p.projectId, p.runId), 'eval');
      const out: Array<{ step: number | null; file: string; url: string }> = [];
      for (const row of [m.evaluation.baseline, ...m.evaluation.rows]) {
        const label = row.step === null ? 'base' : checkpointName(row.step);
        const names = (await readdir(join(evalDir, label)).catch(() => [] as string[])).filter((n) =>
          n.toLowerCase().endsWith('.png'),
        );
        // The folder keeps earlier evaluations' images too: the newest ones are this evaluation's.
        const dated = await Promise.all(
          names.map(async (n) => ({ n, t: (await stat(join(evalDir, label, n))).mtimeMs })),
        );
        for (const { n } of dated.sort((a, b) => a.t - b.t || a.n.localeCompare(b.n)).slice(-perLabel)) {
          const file = `runs/${p.runId}/eval/${label}/${n}`;
          out.push({ step: row.step, file, url: fileUrl(p.projectId, file) });
        }
      }
      return out;
    },

    'evaluation.get': async (p) => (await readRun(c.store, p.projectId, p.runId)).evaluation,

    'evaluation.choose': async (p) =>
      c.store.withLock(p.projectId, async () => {
        const m = await readRun(c.store, p.projectId, p.runId);
        await assertIdle(c, p.projectId, p.runId, 'choose a checkpoint');
        if (!m.evaluation)
          throw new ApiError(
            'conflict',
            `run '${p.runId}' has not been evaluated yet; evaluate it before choosing a checkpoint`,
          );
        if (!m.checkpoints.some((cp) => cp.step === p.step))
          throw new ApiError(
            'invalid_params',
            `step: run '${p.runId}' has no checkpoint at step ${p.step} (it has ${m.checkpoints.map((cp) => cp.step).join(', ')})`,
            [{ field: 'step', message: `no checkpoint at step ${p.step}` }],
          );
        const evaluation = { ...m.evaluation, chosen: p.step };
        await writeRunManifest(
          c.store.runDir(p.projectId, p.runId),
          validState(runManifestSchema, { ...m, evaluation }, 'evaluation.choose'),
        );
        return evaluation;
      }),
  };
}
