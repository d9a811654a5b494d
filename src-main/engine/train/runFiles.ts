/**
 * A training run on disk, read by the CLI and the app alike:
 *
 *   <run>/run.json                                  the manifest (api/schemas.ts: runManifestSchema)
 *   <run>/checkpoints/step-000100/adapter.safetensors   native adapter at that step
 *   <run>/checkpoints/step-000100/optimizer.safetensors AdamW moments (m.<i>, v.<i>)
 *   <run>/checkpoints/step-000100/state.json            step, RNG state, optimizer step
 *   <run>/samples/step-000100-0.png                     previews
 *
 * Paths in run.json are portable (issue 29: the project folder is shared, each machine mounts it at
 * its own path): `baseModel.path` is relative to the models folder when the base model is inside
 * it, and `images.used` / `images.rejected[].file` are relative to the run's project folder
 * (`<project>/runs/<run>`, the folder that holds project.json) when the photo is inside it. A path
 * elsewhere stays absolute: it exists only on the machine that trained. Readers resolve them with
 * `runBasePath` and `runPhotoPaths` against their own folders; run.json files written before this
 * (absolute paths) read as they are.
 *
 * Every write is atomic; a checkpoint folder is written under a temporary name and renamed
 * into place, so a crash mid-write leaves the previous checkpoint intact.
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rename, rm } from 'node:fs/promises';
import { dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { runManifestSchema, type CheckpointEntry, type RunManifest } from '../../api/schemas.ts';
import { atomicWriteJson, ensureDir } from '../io/atomic.ts';
import { readAllFloat32, writeSafetensors, type TensorToWrite } from '../io/safetensors.ts';
import type { RngState } from '../random.ts';
import type { AdamWState } from './adamw.ts';

export const RUN_MANIFEST = 'run.json';

export function checkpointName(step: number): string {
  return `step-${String(step).padStart(6, '0')}`;
}

/** The project folder of a run folder `<project>/runs/<run>` (whether or not it holds a project). */
function runRoot(runDir: string): string {
  return dirname(dirname(resolve(runDir)));
}

const toPosix = (rel: string) => rel.split(sep).join('/');

/** `abs` relative to `root` (POSIX separators) when it lies inside it, else `abs` resolved. */
function relativeInside(root: string, abs: string): string {
  const path = resolve(abs);
  const rel = relative(resolve(root), path);
  return rel && rel !== '..' && !rel.startsWith(`..${sep}`) && !isAbsolute(rel) ? toPosix(rel) : path;
}

/** The base model as run.json records it: relative to `modelsDir` when inside it, else absolute. */
export function portableBasePath(base: string, modelsDir: string | undefined): string {
  return modelsDir ? relativeInside(modelsDir, base) : base;
}

/**
 * A photo as run.json records it: relative to the run's project folder when the run belongs to a
 * project (its grandparent holds project.json) and the photo is inside it, else absolute.
 */
export function portablePhotoPath(runDir: string, file: string): string {
  const root = runRoot(runDir);
  return existsSync(join(root, 'project.json')) ? relativeInside(root, file) : resolve(file);
}

/** A relative path of run.json on this machine: under `root`, or as an older run.json meant it (from the working folder). */
function localRunPath(root: string, p: string): string {
  if (isAbsolute(p)) return p;
  const under = join(root, p);
  return existsSync(under) || !existsSync(p) ? under : resolve(p);
}

/** The base model of a run on this machine (`modelsDir`: this machine's models folder). */
export function runBasePath(manifest: RunManifest, modelsDir: string): string {
  return manifest.baseModel.path && localRunPath(modelsDir, manifest.baseModel.path);
}

/** The photos a run used, as paths on this machine. */
export function runPhotoPaths(runDir: string, manifest: RunManifest): string[] {
  return manifest.images.used.map((f) => localRunPath(runRoot(runDir), f));
}

export async function readRunManifest(runDir: string): Promise<RunManifest> {
  const path = join(runDir, RUN_MANIFEST);
  let raw: unknown;
  try {
    raw = JSON.parse(await readFile(path, 'utf8'));
  } catch (err) {
    throw new Error(`${path}: cannot read the run manifest (${(err as Error).message})`);
  }
  const version = (raw as { schemaVersion?: unknown })?.schemaVersion;
  if (typeof version === 'number' && version > 1)
    throw new Error(`${path}: made by a newer SingLoRA Studio (schema ${version}); update the app to open it`);
  const r = runManifestSchema.safeParse(raw);
  if (!r.success)
    throw new Error(
      `${path}: not a valid run manifest: ${r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`,
    );
  return r.data;
}

export async function writeRunManifest(runDir: string, manifest: RunManifest): Promise<void> {
  await atomicWriteJson(join(runDir, RUN_MANIFEST), { ...manifest, updatedAt: new Date().toISOString() });
}

export interface CheckpointState {
  step: number;
  rng: RngState;
  optimizer: AdamWState;
  /** The named adapter tensors (AdapterSet.namedTensors order) as float32 data. */
  smoothedLoss: number | null;
}

/**
 * Writes a checkpoint folder atomically. `writeAdapter(path)` writes the native adapter file
 * (the caller knows its metadata).
 */
export async function writeCheckpoint(
  runDir: string,
  state: CheckpointState,
  writeAdapter: (path: string) => Promise<void>,
  loss: number | null,
): Promise<CheckpointEntry> {
  const name = checkpointName(state.step);
  const parent = join(runDir, 'checkpoints');
  await ensureDir(parent);
  const tmp = join(parent, `.${name}.${randomBytes(4).toString('hex')}.tmp`);
  await mkdir(tmp);
  try {
    await writeAdapter(join(tmp, 'adapter.safetensors'));
    const moments = new Map<string, TensorToWrite>();
    state.optimizer.m.forEach((m, i) => moments.set(`m.${String(i).padStart(4, '0')}`, { shape: [m.length], data: m }));
    state.optimizer.v.forEach((v, i) => moments.set(`v.${String(i).padStart(4, '0')}`, { shape: [v.length], data: v }));
    const scale = state.optimizer.lossScale;
    await writeSafetensors(join(tmp, 'optimizer.safetensors'), moments, {
      optimizer: 'adamw',
      step: String(state.optimizer.step),
      ...(scale ? { loss_scale: String(scale.scale), loss_scale_good_steps: String(scale.goodSteps) } : {}),
    });
    await atomicWriteJson(join(tmp, 'state.json'), {
      step: state.step,
      rng: state.rng,
      optimizerStep: state.optimizer.step,
      smoothedLoss: state.smoothedLoss,
    });
    const final = join(parent, name);
    if (existsSync(final)) await rm(final, { recursive: true, force: true });
    await rename(tmp, final);
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    throw err;
  }
  return {
    step: state.step,
    dir: `checkpoints/${name}`,
    adapter: `checkpoints/${name}/adapter.safetensors`,
    createdAt: new Date().toISOString(),
    loss,
  };
}

export async function readCheckpoint(
  runDir: string,
  entry: CheckpointEntry,
): Promise<{ step: number; rng: RngState; optimizer: AdamWState; smoothedLoss: number | null; adapterPath: string }> {
  const dir = join(runDir, entry.dir);
  let state: { step: number; rng: RngState; optimizerStep: number; smoothedLoss: number | null };
  try {
    state = JSON.parse(await readFile(join(dir, 'state.json'), 'utf8'));
  } catch (err) {
    throw new Error(`${join(dir, 'state.json')}: cannot read the checkpoint state (${(err as Error).message})`);
  }
  const { tensors, metadata } = await readAllFloat32(join(dir, 'optimizer.safetensors'));
  const keys = [...tensors.keys()].sort();
  const m = keys.filter((k) => k.startsWith('m.')).map((k) => tensors.get(k)!.data);
  const v = keys.filter((k) => k.startsWith('v.')).map((k) => tensors.get(k)!.data);
  const lossScale =
    metadata.loss_scale === undefined
      ? undefined
      : { scale: Number(metadata.loss_scale), goodSteps: Number(metadata.loss_scale_good_steps ?? 0) };
  return {
    step: state.step,
    rng: state.rng,
    optimizer: { step: state.optimizerStep, m, v, lossScale },
    smoothedLoss: state.smoothedLoss ?? null,
    adapterPath: join(dir, 'adapter.safetensors'),
  };
}
