/**
 * Every file the engine writes goes through here: a temp file beside the target, fsync, then
 * rename over the target (or, for a file that must be new, a hard link that fails when the name
 * is taken). A crash at any point leaves either the old file or the new one, never a half-written one.
 *
 * Node has no openat/renameat, so a folder on the way can be swapped for a symbolic link between
 * the moment a path is checked and the moment it is written. The window is closed as far as the
 * OS allows:
 *
 *   1. the folder's real path is taken, and must lie inside the request's write roots (below);
 *   2. the temp file is created exclusively (`O_CREAT | O_EXCL`, plus `O_NOFOLLOW` where the
 *      platform has it), so it never opens a file or link that is already there;
 *   3. after writing, the folder's real path is taken again: it must be the one of step 1;
 *   4. a symbolic link at the final path is refused (and, for `exclusive`, any file at all);
 *   5. rename (or link) inside that folder.
 *
 * Write roots: the service hands the engine paths under folders it checked (a project, its
 * adapters/ folder, a class-image folder the user picked). A request runs inside
 * `withWriteRoots(roots, fn)`; from then on every write to a path lexically under a root's `path`
 * must really be under its `real` path (taken by the service when it checked), so a folder swapped
 * for a link after that check is refused, not followed. Writes elsewhere (caches) get steps 2-5.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { link, lstat, mkdir, open, realpath, rename, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';

/** A folder the service checked: paths lexically under `path` must really be under `real`. */
export interface WriteRoot {
  path: string;
  real: string;
}

export interface AtomicOptions {
  /** The target must not exist yet (exports): refused with EEXIST instead of replaced. */
  exclusive?: boolean;
}

const roots = new AsyncLocalStorage<readonly WriteRoot[]>();

/** Runs `fn` with every engine write under `writeRoots` held inside them (see above). */
export function withWriteRoots<T>(writeRoots: readonly WriteRoot[] | undefined, fn: () => Promise<T>): Promise<T> {
  return writeRoots?.length ? roots.run(writeRoots, fn) : fn();
}

/** A write root for `path` as it is now: its real path (of the deepest existing part, plus the rest). */
export async function writeRoot(path: string): Promise<WriteRoot> {
  const abs = resolve(path);
  return { path: abs, real: await realOfDeepest(abs) };
}

/** Creates the file exclusively: O_NOFOLLOW where the platform defines it (not on Windows). */
const CREATE_FLAGS = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | (constants.O_NOFOLLOW ?? 0);

export async function atomicWrite(
  path: string,
  write: (fh: FileHandle) => Promise<void>,
  o: AtomicOptions = {},
): Promise<void> {
  try {
    await writeThenRename(resolve(path), write, o);
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

async function writeThenRename(path: string, write: (fh: FileHandle) => Promise<void>, o: AtomicOptions) {
  const dir = dirname(path);
  const realDir = await ensureDir(dir, path);
  const tmp = join(dir, `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
  const fh = await open(tmp, CREATE_FLAGS, 0o666);
  try {
    try {
      await write(fh);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await assertSameFolder(dir, realDir, path);
    const existing = await lstat(path).catch(() => null);
    if (existing?.isSymbolicLink())
      throw writeError(
        'EEXIST',
        `refusing to write ${path}: it is a symbolic link (remove it, or choose another name)`,
        path,
      );
    if (o.exclusive) await linkNew(tmp, path, existing !== null);
    else await rename(tmp, path);
  } catch (err) {
    await unlink(tmp).catch(() => {}); // e.g. `path` is a folder: leave nothing behind
    throw err;
  }
}

/** `tmp` to the new name `path`; link() fails when the name is taken, so nothing is replaced. */
async function linkNew(tmp: string, path: string, exists: boolean): Promise<void> {
  const taken = () => writeError('EEXIST', `${path} already exists; choose another name or delete it first`, path);
  if (exists) throw taken();
  try {
    await link(tmp, path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') throw taken();
    if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'ENOSYS') throw err;
    // A file system without hard links (FAT, some network shares): checked just above, renamed.
    await rename(tmp, path);
    return;
  }
  await unlink(tmp);
}

/**
 * `mkdir -p dir`, held inside the write roots: the deepest existing part is checked before the
 * folders are made and the folder after. Returns the folder's real path.
 */
export async function ensureDir(dir: string, target = dir): Promise<string> {
  const abs = resolve(dir);
  assertInRoots(abs, await realOfDeepest(abs), target);
  await mkdir(abs, { recursive: true });
  const real = await realpath(abs);
  assertInRoots(abs, real, target);
  return real;
}

/** Makes `dir` itself, which must not exist yet (a folder export); its parents as needed. */
export async function makeNewDir(dir: string): Promise<void> {
  const abs = resolve(dir);
  await ensureDir(dirname(abs));
  try {
    await mkdir(abs);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST')
      throw writeError('EEXIST', `${abs} already exists; choose another name or delete it first`, abs);
    throw err;
  }
  await assertSameFolder(abs, await realpath(abs), abs);
}

async function assertSameFolder(dir: string, realDir: string, target: string): Promise<void> {
  const now = await realpath(dir);
  if (now !== realDir)
    throw writeError(
      'ELOOP',
      `refusing to write ${target}: its folder ${dir} was replaced while writing (it now leads to ${now}, a symbolic link)`,
      target,
    );
  assertInRoots(dir, now, target);
}

function assertInRoots(dir: string, real: string, target: string): void {
  for (const root of roots.getStore() ?? []) {
    if (!isInside(resolve(root.path), dir)) continue;
    if (!isInside(root.real, real))
      throw writeError(
        'ELOOP',
        `refusing to write ${target}: ${dir} leads to ${real}, outside ${root.path} (a symbolic link was put on the way)`,
        target,
      );
  }
}

/** The real path of `abs`, or of its deepest existing ancestor joined with the rest. */
async function realOfDeepest(abs: string): Promise<string> {
  let probe = abs;
  const rest: string[] = [];
  for (;;) {
    try {
      return join(await realpath(probe), ...rest);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if ((code !== 'ENOENT' && code !== 'ENOTDIR') || dirname(probe) === probe) throw err;
      rest.unshift(basename(probe));
      probe = dirname(probe);
    }
  }
}

function isInside(root: string, child: string): boolean {
  const rel = relative(root, child);
  return rel === '' || (!rel.startsWith(`..${sep}`) && rel !== '..' && !isAbsolute(rel));
}

/** An error that already names its file (atomicWrite adds the path to those that do not). */
function writeError(code: string, message: string, path: string): NodeJS.ErrnoException {
  return Object.assign(new Error(message), { code, path });
}

export function atomicWriteFile(path: string, data: string | Uint8Array, o?: AtomicOptions): Promise<void> {
  return atomicWrite(
    path,
    async (fh) => {
      await fh.writeFile(data);
    },
    o,
  );
}

/** A copy of `src` (streamed), written atomically like any other file. */
export async function atomicCopyFile(src: string, dest: string, o?: AtomicOptions): Promise<void> {
  const from = await open(src, 'r');
  try {
    await atomicWrite(
      dest,
      async (fh) => {
        const buf = Buffer.alloc(4 * 2 ** 20);
        for (;;) {
          const { bytesRead } = await from.read(buf, 0, buf.length, null);
          if (!bytesRead) return;
          await fh.writeFile(buf.subarray(0, bytesRead));
        }
      },
      o,
    );
  } finally {
    await from.close();
  }
}

/** Pretty JSON with a trailing newline, written atomically. */
export function atomicWriteJson(path: string, value: unknown, o?: AtomicOptions): Promise<void> {
  return atomicWriteFile(path, `${JSON.stringify(value, null, 2)}\n`, o);
}
