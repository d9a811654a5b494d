/**
 * Atomic file writes: a temp file beside the target, fsync, rename over the target.
 * A crash at any point leaves either the old file or the new one, never a half-written one.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, open, rename, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

export async function atomicWrite(path: string, write: (fh: FileHandle) => Promise<void>): Promise<void> {
  try {
    await writeThenRename(path, write);
  } catch (err) {
    // A file handle's errors carry no path ("ENOSPC: no space left on device, write"): name it.
    const e = err as NodeJS.ErrnoException;
    if (e && typeof e === 'object' && e.code && !e.path) {
      e.path = path;
      e.message = `${e.message} '${path}'`;
    }
    throw err;
  }
}

async function writeThenRename(path: string, write: (fh: FileHandle) => Promise<void>): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const tmp = join(dirname(path), `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
  const fh = await open(tmp, 'w');
  try {
    await write(fh);
    await fh.sync();
  } catch (err) {
    await fh.close();
    await unlink(tmp).catch(() => {});
    throw err;
  }
  await fh.close();
  try {
    await rename(tmp, path);
  } catch (err) {
    await unlink(tmp).catch(() => {}); // e.g. `path` is a folder: leave nothing behind
    throw err;
  }
}

export function atomicWriteFile(path: string, data: string | Uint8Array): Promise<void> {
  return atomicWrite(path, async (fh) => {
    await fh.writeFile(data);
  });
}

/** Pretty JSON with a trailing newline, written atomically. */
export function atomicWriteJson(path: string, value: unknown): Promise<void> {
  return atomicWriteFile(path, `${JSON.stringify(value, null, 2)}\n`);
}
