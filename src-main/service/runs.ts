/**
 * Training runs as the service sees them: run ids, the placeholder manifest of a queued run,
 * what happens to a run whose engine died, and the startup pass that makes interrupted runs
 * resumable. The manifest itself is the engine's (engine/train/runFiles.ts: run.json).
 *
 *   | run.json status when the engine stopped | becomes                                     |
 *   | --------------------------------------- | ------------------------------------------- |
 *   | running, with a checkpoint              | paused: resume continues from the last one  |
 *   | running, no checkpoint yet              | failed: start the run again                 |
 *   | queued (training never started)         | cancelled                                    |
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { ApiError } from '../api/contract.ts';
import {
  newRunManifest,
  runManifestSchema,
  type CheckpointEntry,
  type RunManifest,
  type TrainSettings,
} from '../api/schemas.ts';
import {
  portableBasePath,
  portablePhotoPath,
  readRunManifest,
  runBasePath,
  writeRunManifest,
} from '../engine/train/runFiles.ts';
import type { ProjectStore } from './projects.ts';

/** `20250101-120000-ab12`: sorts by creation time, and is a valid contract id. */
export function newRunId(date = new Date()): string {
  const p = (n: number, w = 2) => String(n).padStart(w, '0');
  const stamp = `${date.getFullYear()}${p(date.getMonth() + 1)}${p(date.getDate())}-${p(date.getHours())}${p(date.getMinutes())}${p(date.getSeconds())}`;
  return `${stamp}-${randomBytes(2).toString('hex')}`;
}

/**
 * The manifest of a run that waits in the queue, so the run is listed at once. The engine writes
 * the real one (model hash, backend) when training starts; until then `unetSha256` and `backend`
 * are empty.
 */
export async function writeQueuedRun(
  runDir: string,
  modelsDir: string,
  o: { id: string; settings: TrainSettings; base: string; photos: string[] },
): Promise<RunManifest> {
  const name = basename(o.base).replace(/\.safetensors$/i, '');
  const baseModel = { path: portableBasePath(o.base, modelsDir), name, unetSha256: '' };
  const usedPhotos = o.photos.map((f) => portablePhotoPath(runDir, f));
  const manifest = runManifestSchema.parse(
    newRunManifest({ id: o.id, status: 'queued', settings: o.settings, baseModel, backend: '', usedPhotos }),
  );
  try {
    await writeRunManifest(runDir, manifest);
  } catch (err) {
    // A run folder without run.json is no run: leave nothing behind (a full disk, a read-only one).
    await rm(runDir, { recursive: true, force: true }).catch(() => {});
    throw err;
  }
  return manifest;
}

/** The base model a run was trained on, on this machine, when it is there (else null). */
export function existingRunBase(m: RunManifest, modelsDir: string): string | null {
  const base = runBasePath(m, modelsDir);
  return base && existsSync(base) ? base : null;
}

/** run.json of `runId`, or not_found. */
export async function readRun(store: ProjectStore, projectId: string, runId: string): Promise<RunManifest> {
  const dir = store.runDir(projectId, runId);
  if (!existsSync(join(dir, 'run.json'))) {
    if (!(await store.exists(projectId))) throw new ApiError('not_found', `no project '${projectId}'`);
    throw new ApiError('not_found', `project '${projectId}' has no run '${runId}'`);
  }
  try {
    return await readRunManifest(dir);
  } catch (err) {
    throw new ApiError('internal', (err as Error).message);
  }
}

/** Sets the status of a run whose status is one of `when`; returns the manifest, or null if left alone. */
export async function markRun(
  runDir: string,
  status: RunManifest['status'],
  error: string | null,
  when: readonly RunManifest['status'][],
): Promise<RunManifest | null> {
  if (!existsSync(join(runDir, 'run.json'))) return null;
  const m = await readRunManifest(runDir);
  if (!when.includes(m.status)) return null;
  const next = { ...m, status, error };
  await writeRunManifest(runDir, next);
  return next;
}

/**
 * A run whose training stopped without the trainer's say (the engine died, the service
 * stopped, a write failed): paused at its last checkpoint, or failed without one (`failed`: its
 * job failed, so a queued run becomes failed rather than cancelled). Returns the sentence for the
 * user: `<why>; the run keeps its last checkpoint (step N) and can be resumed`.
 */
export async function settleInterruptedRun(runDir: string, why: string, o: { failed?: boolean } = {}): Promise<string> {
  let m: RunManifest;
  try {
    m = await readRunManifest(runDir);
  } catch {
    return `${why}; the run has no readable run.json`;
  }
  const last = m.checkpoints.reduce<CheckpointEntry | null>((a, c) => (!a || c.step > a.step ? c : a), null);
  const message = last
    ? `${why}; the run keeps its last checkpoint (step ${last.step}) and can be resumed`
    : `${why}; no checkpoint was written yet, so start the run again`;
  if (m.status === 'running' || m.status === 'queued') {
    // A queued run that never started was cancelled, unless its job failed (o.failed).
    const status = last ? 'paused' : m.status === 'queued' && !o.failed ? 'cancelled' : 'failed';
    await writeRunManifest(runDir, { ...m, status, error: message });
  } else if (o.failed && m.status === 'failed') {
    // The trainer recorded its failure: with a checkpoint the run is paused there, as the message
    // says (resumable); without one it stays failed. Either way with the readable reason.
    const status = last ? 'paused' : 'failed';
    if (status !== m.status || m.error !== message) await writeRunManifest(runDir, { ...m, status, error: message });
  }
  return message;
}

/** Startup: every run left `running` or `queued` by a previous service is settled. */
export async function recoverRuns(store: ProjectStore, log: (line: string) => void): Promise<string[]> {
  const settled: string[] = [];
  for (const projectId of await store.ids()) {
    for (const runId of await store.runIds(projectId)) {
      const dir = store.runDir(projectId, runId);
      try {
        const m = await readRunManifest(dir);
        if (m.status !== 'running' && m.status !== 'queued') continue;
        const why =
          m.status === 'running'
            ? 'the service stopped during training'
            : 'the service stopped before this run started';
        log(`runs: ${projectId}/${runId}: ${await settleInterruptedRun(dir, why)}`);
        settled.push(`${projectId}/${runId}`);
      } catch (err) {
        log(`runs: ${dir}: ${(err as Error).message}`);
      }
    }
  }
  return settled;
}

/**
 * The checkpoint an adapter reference means: `step` exactly, or for null the user's choice, else
 * the evaluation's best, else the latest.
 */
export function pickCheckpoint(m: RunManifest, step: number | null, field = 'adapter.step'): CheckpointEntry {
  if (!m.checkpoints.length) throw new ApiError('conflict', `run '${m.id}' has no checkpoint yet`);
  const byStep = (s: number) => m.checkpoints.find((c) => c.step === s);
  if (step !== null) {
    const c = byStep(step);
    if (!c)
      throw new ApiError(
        'invalid_params',
        `${field}: run '${m.id}' has no checkpoint at step ${step} (it has ${m.checkpoints.map((x) => x.step).join(', ')})`,
        [{ field, message: `no checkpoint at step ${step}` }],
      );
    return c;
  }
  const preferred = m.evaluation?.chosen ?? m.evaluation?.best ?? null;
  return (
    (preferred !== null ? byStep(preferred) : undefined) ?? m.checkpoints.reduce((a, c) => (c.step > a.step ? c : a))
  );
}
