/**
 * The one policy for paths on the engine machine that clients name. Every handler asks it, at the
 * moment the path is used (a job re-checks its paths when it runs, not only when it is queued).
 *
 *   | use                         | 'deny' (server open to the network) | 'allow' (loopback server, CLI) | 'desktop'     |
 *   | --------------------------- | ----------------------------------- | ------------------------------ | ------------- |
 *   | base model (setBase, update) | inside the models folder only       | any absolute path              | same          |
 *   | photo import (photos.add)   | refused: upload                     | image files up to the upload limit | same      |
 *   | adapter file (import, refs) | refused: upload                     | any absolute path              | same          |
 *   | class-image folder          | inside the project                  | inside the project             | also a folder the user picked |
 *   | export target               | inside the project's adapters/, new | same                           | same          |
 *
 * Paths inside a project go through `safeResolve` (no `..`, no absolute path, no symlink out).
 * A refused host path says nothing about whether the path exists.
 */
import { constants } from 'node:fs';
import { type FileHandle, lstat, open, realpath, stat } from 'node:fs/promises';
import { basename, extname, isAbsolute, join, resolve } from 'node:path';
import { ApiError } from '../api/contract.ts';
import { IMAGE_EXTENSIONS, isImageExtension } from '../api/schemas.ts';
import { isInside, safeResolve } from './safePath.ts';

export type HostAccess = 'allow' | 'deny' | 'desktop';
export type HostUse = 'base-model' | 'photo' | 'adapter';

export const MAX_PHOTO_BYTES = 25 * 2 ** 20;
/** How long reading one photo from a path may take (a stuck network share must not hold the request). */
const PHOTO_READ_MS = 30_000;
const MIB = 2 ** 20;

const invalid = (field: string, message: string, detail = message) =>
  new ApiError('invalid_params', `${field}: ${message}`, [{ field, message: detail }]);

export class PathPolicy {
  constructor(
    readonly access: HostAccess,
    /** Per-photo limit, uploads and path imports alike. */
    readonly maxPhotoBytes: number,
    /** The models folder: base models inside it are allowed even when host paths are denied. */
    readonly modelsDir: string,
  ) {}

  /** A path on this machine named by a client for `use`: absolute, and allowed by the policy. */
  async hostPath(path: string, field: string, use: HostUse): Promise<string> {
    if (path.includes('\0')) throw invalid(field, 'contains a NUL byte');
    if (!isAbsolute(path))
      throw invalid(field, `'${path}' must be an absolute path on the engine machine`, 'not an absolute path');
    const abs = resolve(path);
    if (this.access !== 'deny') return abs;
    if (use === 'base-model') {
      const real = await realpath(abs).catch(() => null);
      const root = await realpath(this.modelsDir).catch(() => this.modelsDir);
      if (real && isInside(root, real)) return abs;
      throw invalid(
        field,
        `this server only uses base models inside its models folder (${this.modelsDir}) (it is open to the network); put the model there, or start the server with --base`,
        'outside the models folder',
      );
    }
    throw invalid(
      field,
      'this server does not read files outside its projects (it is open to the network); upload the file instead',
      'paths on the server are not allowed',
    );
  }

  /** A file a client names for `use`: inside the project when relative, a host path when absolute. */
  async clientFile(
    projectDir: string,
    file: string,
    field: string,
    use: HostUse,
  ): Promise<{ path: string; rel: string | null }> {
    if (isAbsolute(file)) return { path: await this.hostPath(file, field, use), rel: null };
    const path = await safeResolve(projectDir, file, field);
    return {
      path,
      rel: file
        .split('/')
        .filter((s) => s && s !== '.')
        .join('/'),
    };
  }

  /**
   * A photo on this machine (photos.add `paths`): an image file by its extension, a regular file,
   * at most the upload limit (read with a bound, so /proc files that claim size 0 are capped too).
   * The file is looked at (lstat, then stat through a link) before it is opened, and opened
   * non-blocking: a FIFO or device named like a photo is refused, never waited on (a blocked open
   * holds one of Node's few file-I/O threads). The read has a deadline.
   */
  async readPhoto(path: string, field: string): Promise<{ name: string; data: Buffer }> {
    const abs = await this.hostPath(path, field, 'photo');
    const ext = extname(abs).toLowerCase();
    if (!isImageExtension(ext))
      throw invalid(field, `${basename(abs)} is not a photo (${IMAGE_EXTENSIONS.join(', ')})`, 'not an image file');
    const seen = await lstat(abs).catch(() => null);
    const target = seen?.isSymbolicLink() ? await stat(abs).catch(() => null) : seen;
    if (!target) throw invalid(field, `${abs} is not a readable file`, 'not a file');
    if (!target.isFile()) throw invalid(field, `${abs} is not a file`, 'not a file');
    const fh = await open(abs, constants.O_RDONLY | (constants.O_NONBLOCK ?? 0)).catch(() => null);
    if (!fh) throw invalid(field, `${abs} is not a readable file`, 'not a file');
    try {
      return await withDeadline(this.#readBounded(fh, abs, field), PHOTO_READ_MS, () =>
        invalid(field, `${abs} did not finish reading in ${PHOTO_READ_MS / 1000} s`, 'read timed out'),
      );
    } finally {
      void fh.close().catch(() => {}); // not awaited: after a deadline the read may still hold it
    }
  }

  async #readBounded(fh: FileHandle, abs: string, field: string): Promise<{ name: string; data: Buffer }> {
    const info = await fh.stat(); // again: the name may have been swapped since the lstat
    if (!info.isFile()) throw invalid(field, `${abs} is not a file`, 'not a file');
    const limit = this.maxPhotoBytes;
    const buf = Buffer.alloc(Math.min(limit + 1, Math.max(info.size + 1, 64 * 1024)));
    let n = 0;
    for (;;) {
      if (n === buf.length) break;
      const { bytesRead } = await fh.read(buf, n, buf.length - n, n);
      if (!bytesRead) break;
      n += bytesRead;
    }
    if (n > limit)
      throw new ApiError(
        'too_large',
        `${field}: ${basename(abs)} is over ${(limit / MIB).toFixed(0)} MiB, the limit per photo`,
        [{ field, message: 'too large' }],
      );
    if (n === 0) throw invalid(field, `${abs} is empty`, 'empty');
    return { name: basename(abs), data: buf.subarray(0, n) };
  }

  /**
   * Where class images are made and read: relative values are folders inside the project; an
   * absolute folder only on the desktop app (the user picked it there). Checked when training runs.
   */
  async classImagesDir(projectDir: string, dir: string, field = 'settings.classImagesDir'): Promise<string> {
    if (isAbsolute(dir)) {
      if (this.access === 'desktop') return resolve(dir);
      throw invalid(
        field,
        `'${dir}' is outside the project; give a folder inside it (e.g. class-images/person), or pick a folder in the desktop app`,
        'outside the project',
      );
    }
    return safeResolve(projectDir, dir, field);
  }

  /**
   * An export destination: inside the project's adapters/ folder, not there yet, a .safetensors
   * file unless the format writes a folder. Checked when the export is asked for and again when
   * it runs (a symlink made in between is caught).
   */
  async exportTarget(projectDir: string, outPath: string, folder: boolean, field = 'outPath'): Promise<string> {
    const adaptersDir = join(projectDir, 'adapters');
    const out = await safeResolve(projectDir, outPath, field);
    if (!isInside(adaptersDir, out) || out === adaptersDir)
      throw invalid(
        field,
        `'${outPath}' must be inside the project's adapters/ folder (e.g. adapters/export.safetensors)`,
        'must be inside adapters/',
      );
    if (!folder && extname(out).toLowerCase() !== '.safetensors')
      throw invalid(field, `'${outPath}' must end in .safetensors`, 'must end in .safetensors');
    if (
      await lstat(out).then(
        () => true,
        () => false,
      )
    )
      throw new ApiError('conflict', `${field}: '${outPath}' already exists; choose another name or delete it first`);
    return out;
  }
}

/** `work`, or `timeout()` thrown after `ms` (the work is left to finish on its own). */
function withDeadline<T>(work: Promise<T>, ms: number, timeout: () => Error): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(timeout()), ms);
  });
  return Promise.race([work, late]).finally(() => clearTimeout(timer));
}
