/**
 * Where the service keeps its files, and the lock that lets one service own them.
 *
 *   <dataDir>/projects/<id>/     one folder per subject (projects.ts)
 *   <dataDir>/jobs.json          the job list (jobs.ts)
 *   <dataDir>/service.lock       {pid, startedAt} of the service that owns this folder
 *
 * `dataDir`: an explicit option (`--data-dir`, the Electron shell's userData folder), else
 * `SINGLORA_DATA_DIR`, else `<repo>/.data` (the CLI and the headless server).
 *
 * The lock: the service that runs jobs takes it, so two servers never both recover and rewrite
 * jobs.json and run.json files. A lock whose process is gone is stale and taken over. Readers such
 * as `singlora projects list` do not take it; they check it before deleting anything.
 */
import { readFile, unlink, writeFile } from 'node:fs/promises';
import { mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { REPO_ROOT } from '../engine/paths.ts';

export function resolveDataDir(explicit?: string, env: NodeJS.ProcessEnv = process.env): string {
  if (explicit?.trim()) return resolve(explicit.trim());
  const fromEnv = env.SINGLORA_DATA_DIR?.trim();
  return fromEnv ? resolve(fromEnv) : resolve(REPO_ROOT, '.data');
}

export const projectsDirOf = (dataDir: string) => join(dataDir, 'projects');
export const jobsFileOf = (dataDir: string) => join(dataDir, 'jobs.json');
const lockFileOf = (dataDir: string) => join(dataDir, 'service.lock');

export interface LockInfo {
  pid: number;
  startedAt: string;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The live owner of `dataDir`, or null when the folder is free (no lock, or a stale one). */
export async function lockOwner(dataDir: string): Promise<LockInfo | null> {
  try {
    const info = JSON.parse(await readFile(lockFileOf(dataDir), 'utf8')) as LockInfo;
    return Number.isInteger(info.pid) && alive(info.pid) ? info : null;
  } catch {
    return null;
  }
}

/** Takes the lock, or throws naming the process that holds it. Returns the release function. */
export async function acquireLock(dataDir: string): Promise<() => Promise<void>> {
  await mkdir(dataDir, { recursive: true });
  const path = lockFileOf(dataDir);
  const mine: LockInfo = { pid: process.pid, startedAt: new Date().toISOString() };
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      await writeFile(path, `${JSON.stringify(mine)}\n`, { flag: 'wx' });
      return async () => {
        const now = await readFile(path, 'utf8').catch(() => '');
        if (now.includes(`"pid":${mine.pid},`) && now.includes(mine.startedAt)) await unlink(path).catch(() => {});
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const owner = await lockOwner(dataDir);
      if (owner) {
        throw new Error(
          `another SingLoRA Studio service (pid ${owner.pid}, started ${owner.startedAt}) is using ${dataDir}; stop it, or use another data folder (--data-dir / SINGLORA_DATA_DIR)`,
        );
      }
      await unlink(path).catch(() => {}); // stale: its process is gone
    }
  }
  throw new Error(`cannot take the lock ${path}; remove it if no SingLoRA Studio service is running`);
}
