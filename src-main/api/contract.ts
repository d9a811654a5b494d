/**
 * The one typed contract for everything the app does. The Electron preload, the local server and
 * the renderer's client are all typed from `api` below: a method missing on either side is a
 * compile error, and every request and response is validated with these schemas at the boundary.
 *
 * Transport-neutral messages:
 *   request   { id, method, params }
 *   response  { id, ok: true, result } | { id, ok: false, error: { code, message, details? } }
 *   event     { event, data }            (progress of jobs; see `events`)
 */
import { z } from 'zod';
import {
  computeSettingsSchema,
  CROP_MODES,
  ENGINES,
  PROVIDERS,
  EXPORT_FORMATS,
  EVAL_CHECKPOINTS,
  LIMITS,
  METHODS,
  wordSchema,
  evaluationSchema,
  generateSettingsSchema,
  imageSidecarSchema,
  runManifestSchema,
  SUBJECT_TYPES,
  DEFAULT_SUBJECT_TYPE,
  trainEventKinds,
  trainSettingsSchema,
  patchOf,
  modelDefaultsSchema,
} from './schemas.ts';

export const idSchema = z
  .string()
  .min(1)
  .max(80)
  .regex(/^[A-Za-z0-9][A-Za-z0-9_-]*$/, 'ids are letters, digits, - and _');

const empty = z.object({}).strict();

/**
 * `/files/<projectId>/<path in the project>`: the URL of a project file, as the service returns
 * it (photos, samples, generated images, exports). The server adds its token; the Electron shell
 * maps it to its own protocol.
 */
export function projectFileUrl(projectId: string, rel: string): string {
  return `/files/${encodeURIComponent(projectId)}/${rel.split('/').map(encodeURIComponent).join('/')}`;
}

/** In a patch, `classImagesDir: null` (or '') clears the folder: class images go back to the cache per model. */
export const trainSettingsPatchSchema = patchOf(trainSettingsSchema).extend({
  classImagesDir: z.string().max(LIMITS.pathChars).nullable().optional(),
});
export type TrainSettingsPatch = z.infer<typeof trainSettingsPatchSchema>;

/** A path a client names (a file in the project, or on the engine machine where the method allows it). */
const pathSchema = z.string().min(1).max(LIMITS.pathChars);
const nameSchema = z.string().trim().min(1).max(LIMITS.nameChars);
const jobIdSchema = z.string().min(1).max(80);

export const subjectSchema = z.object({ triggerToken: wordSchema, classWord: wordSchema, type: z.enum(SUBJECT_TYPES) });

/** project.json: what every handler validates a new state against before it is written. */
export const projectSchema = z.object({
  schemaVersion: z.number().int(),
  id: idSchema,
  name: nameSchema,
  createdAt: z.string(),
  updatedAt: z.string(),
  subject: subjectSchema,
  /** Base model: a diffusers folder or a .safetensors file; null = the app default. */
  baseModel: pathSchema.nullable(),
  /** Training settings the user last chose (defaults filled in). */
  settings: trainSettingsSchema,
});
export type Project = z.infer<typeof projectSchema>;

export const projectSummarySchema = projectSchema
  .pick({ id: true, name: true, createdAt: true, updatedAt: true, subject: true })
  .extend({
    photos: z.number().int(),
    runs: z.number().int(),
    /**
     * Set when the folder holds no readable project: why (e.g. "project.json: not valid JSON").
     * Then `name` is the folder's name, the dates its modification time, the subject the defaults.
     */
    broken: z.string().optional(),
  });
export type ProjectSummary = z.infer<typeof projectSummarySchema>;

export const photoSchema = z.object({
  id: z.string(),
  file: z.string(),
  originalName: z.string(),
  status: z.enum(['ok', 'warning', 'rejected']),
  reason: z.string().nullable(),
  width: z.number().int().nullable(),
  height: z.number().int().nullable(),
  bytes: z.number().int(),
  /** `projectFileUrl(projectId, file)`. */
  url: z.string(),
});
export type Photo = z.infer<typeof photoSchema>;

export const jobKinds = ['train', 'evaluate', 'generate', 'export', 'download'] as const;
export const jobSchema = z.object({
  id: z.string(),
  kind: z.enum(jobKinds),
  projectId: z.string().nullable(),
  runId: z.string().nullable(),
  status: z.enum(['queued', 'running', 'done', 'failed', 'cancelled']),
  createdAt: z.string(),
  error: z.string().nullable(),
  progress: z.object({ done: z.number(), total: z.number(), label: z.string() }).nullable(),
  /**
   * What a finished job made, when it made a file: export jobs set `path` (relative to the
   * project, `adapters/...`) and the `url` to download it (a folder: `<path>.tar`, packed by the
   * server). Absent or null otherwise.
   */
  result: z.object({ path: z.string().optional(), url: z.string().optional() }).nullable().optional(),
  /**
   * The worker that runs or ran the job: `singlora worker --name`, by default `<host>:<pid>`; the
   * embedded queue names its own process the same way. Null while queued; absent from older servers.
   */
  worker: z.string().nullable().optional(),
  /** Why a queued job is still waiting (e.g. no connected worker can take training), in words. */
  waiting: z.string().nullable().optional(),
});
export type Job = z.infer<typeof jobSchema>;

/** Where jobs run: `jobs.queue`'s answer. */
export const queueStatusSchema = z.object({
  /** `embedded`: the in-process queue and one engine; `redis`: BullMQ, workers on any machine. */
  mode: z.enum(['embedded', 'redis']),
  /** Per queue (embedded: its lanes `engine` and `io`; redis: one queue per capability). */
  queues: z.array(z.object({ name: z.string(), waiting: z.number().int(), active: z.number().int() })),
  workers: z.array(
    z.object({
      name: z.string(),
      /** The queues it takes jobs from. */
      queues: z.array(z.string()),
      /** Its last heartbeat (ISO time). */
      lastSeen: z.string(),
      /** False once it has been silent for 30 s: it counts as gone and its running job is handed on. */
      alive: z.boolean(),
      /** The job it is running, if any. */
      jobId: z.string().nullable(),
    }),
  ),
});
export type QueueStatus = z.infer<typeof queueStatusSchema>;

export const runSummarySchema = runManifestSchema
  .pick({ id: true, createdAt: true, updatedAt: true, status: true, step: true, error: true })
  .extend({
    steps: z.number().int(),
    method: z.enum(METHODS),
    /** The run's learning rate (settings.learningRate); absent from servers that predate it. */
    learningRate: z.number().optional(),
    best: z.number().int().nullable(),
    /** Set when the run's folder holds no readable run.json: why (then status 'failed', error the same). */
    broken: z.string().optional(),
  });

export const generatedImageSchema = imageSidecarSchema.extend({ url: z.string() });
export type GeneratedImageInfo = z.infer<typeof generatedImageSchema>;

/** A run's manifest as clients get it (`training.status`): each sample also has its URL. */
export const runStatusSchema = runManifestSchema.extend({
  samples: z.array(runManifestSchema.shape.samples.element.extend({ url: z.string() })),
});
export type RunStatusInfo = z.infer<typeof runStatusSchema>;

/** A training event as clients get it (`train.event`): the trainer's, with a sample's URL added. */
export const runEventSchema = z.discriminatedUnion('event', [
  trainEventKinds.prepare,
  trainEventKinds.step,
  trainEventKinds.checkpoint,
  trainEventKinds.sample.extend({ url: z.string() }),
  trainEventKinds.warning,
  trainEventKinds.done,
]);
export type RunEvent = z.infer<typeof runEventSchema>;

export const adapterInfoSchema = z.object({
  file: z.string(),
  method: z.string(),
  rank: z.number().int(),
  alpha: z.number(),
  targets: z.number().int(),
  parameters: z.number().int(),
  bytes: z.number().int(),
  format: z.enum(['native', 'kohya', 'peft', 'diffusers-procs', 'mixed', 'unknown']),
  metadata: z.record(z.string(), z.string()),
});
export type AdapterInfo = z.infer<typeof adapterInfoSchema>;

export const exportFormats = EXPORT_FORMATS;

/**
 * A base model the service found: in the models folder, in the Hugging Face cache, or named by a
 * project (recent); `isDefault` for the one projects without a base model use. `native`: the size
 * it was trained at (512 for SD 1.5, 64 for the tiny demo model), null when its configs cannot be read.
 */
export const baseModelSchema = z.object({
  path: z.string(),
  name: z.string(),
  source: z.enum(['models folder', 'Hugging Face cache', 'recent', 'server default']),
  isDefault: z.boolean(),
  native: z.number().int().nullable(),
  /** Its singlora-defaults.json (recommended training and sampling settings); null: none. */
  defaults: modelDefaultsSchema.nullable().optional(),
});
export type BaseModelInfo = z.infer<typeof baseModelSchema>;

/** An adapter's multiplier at generation, within ±LIMITS.adapterStrength. */
const adapterStrength = z.number().min(-LIMITS.adapterStrength).max(LIMITS.adapterStrength);

const adapterRef = z.union([
  z.object({
    runId: idSchema,
    step: z
      .number()
      .int()
      .min(0)
      .max(LIMITS.steps)
      .nullable()
      .describe('null: the chosen/best checkpoint, else the latest'),
  }),
  z.object({
    file: pathSchema.describe('a file in the project (adapters/...) or an absolute path on the engine machine'),
  }),
]);

/**
 * A request's own engine and provider (training.start, generation.start), over the app's settings
 * (settings.get) for this request only.
 */
const computeOverride = {
  engine: z.enum(ENGINES).optional().describe("default: the app's settings (settings.get)"),
  provider: z.enum(PROVIDERS).optional().describe("default: the app's settings (settings.get)"),
};

/** Every method: params schema and result schema. */
export const api = {
  'system.doctor': {
    params: empty,
    result: z.object({
      node: z.string(),
      platform: z.string(),
      /** ONNX Runtime providers: whether each starts (inference) and whether it can run a training step. */
      providers: z.array(
        z.object({
          name: z.string(),
          available: z.boolean(),
          detail: z.string(),
          training: z.object({ ok: z.boolean(), detail: z.string() }),
        }),
      ),
      backends: z.array(
        z.object({
          name: z.string(),
          available: z.boolean(),
          reason: z.string().optional(),
          device: z.string().optional(),
          memoryBytes: z.number().optional(),
          software: z.boolean().optional(),
        }),
      ),
      selected: z.union([
        z.object({ name: z.string(), device: z.string().optional() }),
        z.object({ error: z.string() }),
      ]),
      memory: z.record(z.string(), z.unknown()),
    }),
  },
  'system.info': {
    params: empty,
    result: z.object({
      version: z.string(),
      projectsDir: z.string(),
      modelsDir: z.string(),
      defaultBaseModel: z.string(),
      demoModel: z.boolean(),
    }),
  },

  /** The app's compute settings: the engine and ONNX Runtime provider that train and generate. */
  'settings.get': { params: empty, result: computeSettingsSchema },
  /** Changes the fields given; returns the settings now in force. */
  'settings.set': { params: patchOf(computeSettingsSchema), result: computeSettingsSchema },

  'projects.list': { params: empty, result: z.array(projectSummarySchema) },
  'projects.create': {
    params: z
      .object({
        name: nameSchema,
        classWord: trainSettingsSchema.shape.classWord,
        triggerToken: trainSettingsSchema.shape.triggerToken,
        type: z.enum(SUBJECT_TYPES).default(DEFAULT_SUBJECT_TYPE),
        baseModel: pathSchema
          .optional()
          .describe(
            'a diffusers folder or .safetensors checkpoint (models.bases lists the ones found); default: none, the app default',
          ),
      })
      .strict(),
    result: projectSchema,
  },
  'projects.open': { params: z.object({ projectId: idSchema }).strict(), result: projectSchema },
  'projects.update': {
    params: z
      .object({
        projectId: idSchema,
        name: nameSchema.optional(),
        subject: subjectSchema.partial().strict().optional(),
        baseModel: pathSchema.nullable().optional(),
        settings: trainSettingsPatchSchema.optional(),
      })
      .strict(),
    result: projectSchema,
  },
  'projects.delete': { params: z.object({ projectId: idSchema }).strict(), result: z.object({ deleted: z.boolean() }) },

  'photos.add': {
    params: z
      .object({
        projectId: idSchema,
        paths: z.array(pathSchema).max(200).optional(),
        files: z
          .array(z.object({ name: z.string().min(1).max(255), dataBase64: z.string() }).strict())
          .max(50)
          .optional(),
      })
      .strict(),
    result: z.array(photoSchema),
  },
  'photos.list': { params: z.object({ projectId: idSchema }).strict(), result: z.array(photoSchema) },
  'photos.remove': {
    params: z.object({ projectId: idSchema, photoId: pathSchema }).strict(),
    result: z.object({ removed: z.boolean() }),
  },
  'photos.cropPreview': {
    params: z
      .object({
        projectId: idSchema,
        photoId: pathSchema,
        crop: z.enum(CROP_MODES),
        size: z.number().int().min(32).max(1024).default(256),
      })
      .strict(),
    result: z.object({ pngBase64: z.string() }),
  },

  'training.start': {
    params: z
      .object({ projectId: idSchema, settings: trainSettingsPatchSchema.default({}), ...computeOverride })
      .strict(),
    result: z.object({ jobId: z.string(), runId: z.string() }),
  },
  'training.cancel': {
    params: z.object({ jobId: jobIdSchema }).strict(),
    result: z.object({ cancelled: z.boolean() }),
  },
  'training.resume': {
    params: z.object({ projectId: idSchema, runId: idSchema }).strict(),
    result: z.object({ jobId: z.string(), runId: z.string() }),
  },
  'training.runs': { params: z.object({ projectId: idSchema }).strict(), result: z.array(runSummarySchema) },
  'training.status': { params: z.object({ projectId: idSchema, runId: idSchema }).strict(), result: runStatusSchema },

  'evaluation.start': {
    params: z
      .object({
        projectId: idSchema,
        runId: idSchema,
        checkpoints: z.enum(EVAL_CHECKPOINTS).default('all'),
        /** true: one prompt per category and (unless imagesPerPrompt says otherwise) one image each; fast and noisy. */
        quick: z.boolean().default(false),
        imagesPerPrompt: z.number().int().min(1).max(16).optional(),
        prompts: z.array(z.string().trim().min(1).max(LIMITS.promptChars)).min(1).max(LIMITS.prompts).optional(),
      })
      .strict(),
    result: z.object({ jobId: z.string() }),
  },
  /** What an evaluation of this project's runs needs, before it is started: the DINO model it would use, or what is missing. */
  'evaluation.check': {
    params: z.object({ projectId: idSchema }).strict(),
    /** `metric` 'toy': the toy model without DINO is scored by the toy world's pixel score (`dino` null). */
    result: z.object({
      ready: z.boolean(),
      dino: z.string().nullable(),
      bundled: z.boolean(),
      metric: z.enum(['dino', 'toy']).optional(),
      message: z.string().nullable(),
    }),
  },
  /** The images the last evaluation generated, per checkpoint (step null: the base model). */
  'evaluation.images': {
    params: z.object({ projectId: idSchema, runId: idSchema }).strict(),
    result: z.array(z.object({ step: z.number().int().nullable(), file: z.string(), url: z.string() })),
  },
  'evaluation.get': {
    params: z.object({ projectId: idSchema, runId: idSchema }).strict(),
    result: evaluationSchema.nullable(),
  },
  'evaluation.choose': {
    params: z
      .object({ projectId: idSchema, runId: idSchema, step: z.number().int().min(0).max(LIMITS.steps) })
      .strict(),
    result: evaluationSchema,
  },

  'generation.start': {
    params: z
      .object({
        projectId: idSchema,
        settings: generateSettingsSchema,
        adapters: z
          .array(adapterRef.and(z.object({ strength: adapterStrength.default(1) })))
          .max(8)
          .default([]),
        ...computeOverride,
      })
      .strict(),
    result: z.object({ jobId: z.string() }),
  },
  'generation.list': { params: z.object({ projectId: idSchema }).strict(), result: z.array(generatedImageSchema) },

  'adapters.list': { params: z.object({ projectId: idSchema }).strict(), result: z.array(adapterInfoSchema) },
  'adapters.export': {
    params: z
      .object({
        projectId: idSchema,
        adapter: adapterRef,
        format: z.enum(exportFormats),
        outPath: pathSchema.optional().describe('default: <project>/adapters/'),
      })
      .strict(),
    result: z.object({ jobId: z.string() }),
  },
  'adapters.import': {
    params: z.object({ projectId: idSchema, path: pathSchema }).strict(),
    result: adapterInfoSchema,
  },
  'adapters.inspect': {
    params: z.object({ projectId: idSchema, file: pathSchema }).strict(),
    result: adapterInfoSchema,
  },

  'models.list': {
    params: empty,
    result: z.array(
      z.object({
        name: z.string(),
        kind: z.string(),
        present: z.boolean(),
        path: z.string(),
        bytes: z.number().nullable(),
        verified: z.boolean().nullable(),
        hint: z.string().nullable(),
      }),
    ),
  },
  /** Base models found on this machine, for the New project form and the Models screen. */
  'models.bases': { params: empty, result: z.array(baseModelSchema) },
  'models.setBase': {
    params: z.object({ projectId: idSchema, path: pathSchema }).strict(),
    result: z.object({ name: z.string(), format: z.string() }),
  },
  'models.download': {
    params: z.object({ name: z.enum(['dino', 'clip']) }).strict(),
    result: z.object({ jobId: z.string() }),
  },

  /**
   * The desktop app's own: the OS file manager and file dialogs. The service (and so
   * `singlora serve`) answers not_found; the Electron main process handles them (app/desktopMethods.ts).
   */
  'desktop.reveal': {
    params: z
      .object({ projectId: idSchema, file: pathSchema.describe('a file or export folder in the project') })
      .strict(),
    result: z.object({ revealed: z.boolean() }),
  },
  'desktop.pickBaseModel': {
    params: z.object({ kind: z.enum(['folder', 'file']) }).strict(),
    result: z.object({ path: z.string().nullable() }),
  },

  'jobs.list': { params: empty, result: z.array(jobSchema) },
  /** Queue mode, waiting/active counts per queue, and the workers with their heartbeats. */
  'jobs.queue': { params: empty, result: queueStatusSchema },
  'jobs.cancel': { params: z.object({ jobId: jobIdSchema }).strict(), result: z.object({ cancelled: z.boolean() }) },
} as const;

export type Api = typeof api;
export type Method = keyof Api;
export type Params<M extends Method> = z.input<Api[M]['params']>;
export type ParsedParams<M extends Method> = z.infer<Api[M]['params']>;
export type Result<M extends Method> = z.infer<Api[M]['result']>;

/** Events pushed to clients. */
export const events = {
  'job.updated': jobSchema,
  'train.event': z.object({ jobId: z.string(), projectId: z.string(), runId: z.string(), event: runEventSchema }),
  'generation.image': z.object({ jobId: z.string(), projectId: z.string(), image: generatedImageSchema }),
  'generation.step': z.object({
    jobId: z.string(),
    image: z.number().int(),
    images: z.number().int(),
    step: z.number().int(),
    steps: z.number().int(),
  }),
  'evaluation.progress': z.object({
    jobId: z.string(),
    done: z.number().int(),
    total: z.number().int(),
    label: z.string(),
  }),
  'engine.status': z.object({
    state: z.enum(['starting', 'ready', 'crashed', 'restarting']),
    message: z.string().nullable(),
  }),
} as const;
export type Events = typeof events;
export type EventName = keyof Events;
export type EventData<E extends EventName> = z.infer<Events[E]>;

export const ERROR_CODES = [
  'invalid_params',
  'not_found',
  'conflict',
  'unauthorized',
  'too_large',
  'engine_error',
  'engine_crashed',
  'internal',
] as const;
export type ErrorCode = (typeof ERROR_CODES)[number];

export interface ApiErrorBody {
  code: ErrorCode;
  message: string;
  details?: unknown;
}

export class ApiError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly details?: unknown,
  ) {
    super(message);
    this.name = 'ApiError';
  }

  toBody(): ApiErrorBody {
    return { code: this.code, message: this.message, ...(this.details === undefined ? {} : { details: this.details }) };
  }
}

export type RequestMessage = { id: number | string; method: string; params?: unknown };
export type ResponseMessage =
  | { id: number | string; ok: true; result: unknown }
  | { id: number | string; ok: false; error: ApiErrorBody };
export type EventMessage = { event: string; data: unknown };

export function isMethod(m: string): m is Method {
  return Object.hasOwn(api, m);
}

/**
 * How much of a validation failure an error echoes. A request with 2,000,000 unknown keys once got
 * a 53.8 MB answer (every key twice); now at most 20 problems, 10 keys each, 400 characters a part.
 */
const ECHO = { issues: 20, keys: 10, chars: 400 } as const;

function clip(s: string, max: number = ECHO.chars): string {
  return s.length > max ? `${s.slice(0, max)}...` : s;
}

/** The fields of a validation failure, capped (ECHO): what a client reads, never the whole request. */
export function issueFields(
  issues: readonly z.core.$ZodIssue[],
  root = '(params)',
): Array<{ field: string; message: string }> {
  const fields = issues.slice(0, ECHO.issues).map((i) => ({
    field: clip(i.path.map(String).join('.') || root),
    message: clip(issueMessage(i)),
  }));
  if (issues.length > ECHO.issues)
    fields.push({ field: root, message: `and ${issues.length - ECHO.issues} more problems` });
  return fields;
}

function issueMessage(i: z.core.$ZodIssue): string {
  if (i.code !== 'unrecognized_keys') return i.message;
  const shown = i.keys.slice(0, ECHO.keys).map((k) => JSON.stringify(clip(k, 40)));
  const more = i.keys.length > ECHO.keys ? ` and ${i.keys.length - ECHO.keys} more` : '';
  return `unknown ${i.keys.length === 1 ? 'key' : `keys (${i.keys.length})`}: ${shown.join(', ')}${more}`;
}

/** Validates params for `method`; throws ApiError('invalid_params') naming the bad fields (capped). */
export function parseParams<M extends Method>(method: M, params: unknown): ParsedParams<M> {
  const r = api[method].params.safeParse(params ?? {});
  if (!r.success) {
    const fields = issueFields(r.error.issues);
    throw new ApiError(
      'invalid_params',
      `${method}: ${fields.map((f) => `${f.field}: ${f.message}`).join('; ')}`,
      fields,
    );
  }
  return r.data as ParsedParams<M>;
}

/** The client-side view: one async function per method. */
export type ApiClient = { [M in Method]: (params: Params<M>) => Promise<Result<M>> };
/** The server-side view: one handler per method; a missing one is a compile error. */
export type ApiHandlers = { [M in Method]: (params: ParsedParams<M>) => Promise<Result<M>> };
