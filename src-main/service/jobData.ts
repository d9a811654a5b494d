/**
 * Jobs as data (issue 29): what a job does, as a plain object that survives JSON and a trip through
 * Redis, validated by zod where it is read (the embedded runner and `singlora worker` alike).
 *
 *   { kind, projectId, runId, params }     params: what the kind's handler needs (jobHandlers.ts)
 *
 * Paths are portable: a file inside the project is kept relative to the project, one inside the
 * models folder relative to that folder, so a worker that mounts the shared data folder (and its
 * models folder) at another path finds them. Anything else (a host file the desktop user picked)
 * stays absolute: it exists only on the machine that named it.
 *
 *   | kind     | queue (redis) | embedded lane | params                                              |
 *   | -------- | ------------- | ------------- | --------------------------------------------------- |
 *   | train    | train         | engine        | base, photos, settings, resume, compute              |
 *   | evaluate | engine        | engine        | photos, checkpoints, subject, prompts, scorer, ...   |
 *   | generate | engine        | engine        | base, settings, adapters, compute                    |
 *   | export   | engine        | engine        | adapter, format, outPath (in the project), base      |
 *   | download | io            | io            | name (an evaluation model of the registry)           |
 */
import { isAbsolute, join, relative, resolve, sep } from 'node:path';
import { z } from 'zod';
import { exportFormats, idSchema, type Job } from '../api/contract.ts';
import { computeSettingsSchema, generateSettingsSchema, trainSettingsSchema } from '../api/schemas.ts';
import { isInside } from './safePath.ts';

/** A path as a job carries it: inside the project, inside the models folder, or on this host only. */
export const sharedPathSchema = z.discriminatedUnion('in', [
  z.object({ in: z.literal('project'), rel: z.string() }),
  z.object({ in: z.literal('models'), rel: z.string() }),
  z.object({ in: z.literal('host'), path: z.string() }),
]);
export type SharedPath = z.infer<typeof sharedPathSchema>;

/** Where a process finds the shared folders: its projects folder and its models folder. */
export interface PathRoots {
  projectDir(projectId: string): string;
  readonly modelsDir: string;
}

const toPosix = (rel: string) => rel.split(sep).join('/');

/** `abs` as a job carries it, relative to the project or the models folder when inside one. */
export function sharedPath(roots: PathRoots, projectId: string | null, abs: string): SharedPath {
  const path = resolve(abs);
  if (projectId !== null) {
    const dir = resolve(roots.projectDir(projectId));
    if (isInside(dir, path) && path !== dir) return { in: 'project', rel: toPosix(relative(dir, path)) };
  }
  const models = resolve(roots.modelsDir);
  if (isInside(models, path) && path !== models) return { in: 'models', rel: toPosix(relative(models, path)) };
  return { in: 'host', path };
}

/** The path on this machine of a path a job carries. */
export function localPath(roots: PathRoots, projectId: string | null, p: SharedPath): string {
  if (p.in === 'host') return p.path;
  if (isAbsolute(p.rel) || p.rel.split('/').includes('..'))
    throw new Error(`job data: the ${p.in} path '${p.rel}' leaves its folder`);
  if (p.in === 'models') return join(roots.modelsDir, p.rel);
  if (projectId === null) throw new Error(`job data: the project path '${p.rel}' belongs to no project`);
  return join(roots.projectDir(projectId), p.rel);
}

const compute = computeSettingsSchema;
const projectId = idSchema;

export const trainJobSchema = z.object({
  kind: z.literal('train'),
  projectId,
  runId: idSchema,
  params: z.object({
    base: sharedPathSchema,
    photos: z.array(sharedPathSchema),
    settings: trainSettingsSchema,
    /** Resume from the run's last checkpoint (a worker that takes over a run resumes it whatever this says). */
    resume: z.boolean(),
    compute,
  }),
});

export const generateJobSchema = z.object({
  kind: z.literal('generate'),
  projectId,
  runId: z.null(),
  params: z.object({
    base: sharedPathSchema,
    settings: generateSettingsSchema,
    adapters: z.array(z.object({ path: sharedPathSchema, strength: z.number() })),
    compute,
  }),
});

export const evaluateJobSchema = z.object({
  kind: z.literal('evaluate'),
  projectId,
  runId: idSchema,
  params: z.object({
    photos: z.array(sharedPathSchema),
    checkpoints: z.enum(['all', 'latest']),
    subjectType: z.enum(['object', 'live']),
    prompts: z.array(z.string()).optional(),
    imagesPerPrompt: z.number().int().positive().optional(),
    steps: z.number().int().positive().optional(),
    /** DINO's ONNX file, or the toy world's pixel score. */
    scorer: z.discriminatedUnion('kind', [
      z.object({ kind: z.literal('dino'), model: sharedPathSchema }),
      z.object({ kind: z.literal('toy') }),
    ]),
    compute,
  }),
});

export const exportJobSchema = z.object({
  kind: z.literal('export'),
  projectId,
  runId: idSchema.nullable(),
  params: z.object({
    adapter: sharedPathSchema,
    format: z.enum(exportFormats),
    /** The destination inside the project's adapters/ folder (checked again when the job runs). */
    outPath: z.string(),
    /** The base model a merged export folds the adapter into. */
    base: sharedPathSchema.optional(),
  }),
});

export const downloadJobSchema = z.object({
  kind: z.literal('download'),
  projectId: z.null(),
  runId: z.null(),
  params: z.object({ name: z.string() }),
});

export const jobDataSchema = z.discriminatedUnion('kind', [
  trainJobSchema,
  generateJobSchema,
  evaluateJobSchema,
  exportJobSchema,
  downloadJobSchema,
]);
export type JobData = z.infer<typeof jobDataSchema>;
export type JobDataOf<K extends JobData['kind']> = Extract<JobData, { kind: K }>;

/** Job data read from a queue or a file: validated, or an error naming the field. */
export function parseJobData(value: unknown, where: string): JobData {
  const r = jobDataSchema.safeParse(value);
  if (r.success) return r.data;
  const issue = r.error.issues[0];
  throw new Error(`${where}: not a valid job (${issue?.path.join('.') || 'job'}: ${issue?.message})`);
}

/** The Redis queues, one per capability: BullMQ workers take every job of a queue they listen to. */
export const QUEUES = ['train', 'engine', 'io'] as const;
export type QueueName = (typeof QUEUES)[number];

export function queueOf(kind: Job['kind']): QueueName {
  return kind === 'train' ? 'train' : kind === 'download' ? 'io' : 'engine';
}

/** The embedded runner's lane: one engine process runs training and the other engine jobs in turn. */
export function laneOf(kind: Job['kind']): 'engine' | 'io' {
  return kind === 'download' ? 'io' : 'engine';
}
