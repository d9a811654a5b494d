/**
 * Path safety for every path a client supplies: photo ids, project files, `/files/` URLs, export
 * destinations, adapter files. One function decides, `safeResolve(root, rel)`:
 *
 *   | input                                   | verdict                                   |
 *   | --------------------------------------- | ----------------------------------------- |
 *   | empty, or contains a NUL byte            | rejected                                  |
 *   | absolute (`/x`, `C:\x`, `\\host\x`)      | rejected                                  |
 *   | any backslash                            | rejected (a separator on Windows)         |
 *   | a `..` segment                           | rejected (even where it would stay inside)|
 *   | resolves outside `root`                  | rejected                                  |
 *   | a symlink on the way leads outside root  | rejected (realpath of the deepest existing ancestor) |
 *
 * Callers decode URLs once before calling; a `%2e%2e` left after that is a literal name.
 */
import { realpath } from 'node:fs/promises';
import { isAbsolute, relative, resolve, sep, win32 } from 'node:path';
import { ApiError } from '../api/contract.ts';

/** True when `child` is `root` or inside it (both absolute, already normalised). */
export function isInside(root: string, child: string): boolean {
  const rel = relative(root, child);
  return rel === '' || (!rel.startsWith(`..${sep}`) && rel !== '..' && !isAbsolute(rel));
}

/** The lexical checks (no file system): returns the '/'-separated segments, or throws. */
export function checkRelative(rel: string, field = 'path'): string[] {
  const bad = (why: string) =>
    new ApiError('invalid_params', `${field}: '${printable(rel)}' ${why}`, [{ field, message: why }]);
  if (typeof rel !== 'string' || rel.length === 0) throw bad('is empty');
  if (rel.includes('\0')) throw bad('contains a NUL byte');
  if (rel.includes('\\')) throw bad('contains a backslash; use / between folders');
  if (isAbsolute(rel) || win32.isAbsolute(rel) || /^[A-Za-z]:/.test(rel))
    throw bad('is absolute; give a path inside the project');
  const segments = rel.split('/').filter((s) => s !== '' && s !== '.');
  if (segments.some((s) => s === '..')) throw bad("contains '..'; give a path inside the project");
  if (!segments.length) throw bad('names no file');
  return segments;
}

/**
 * `root/rel` as an absolute path, after the lexical checks and a realpath check of the deepest
 * part that exists (so a symlink inside the project cannot point outside it). The target itself
 * need not exist (export destinations).
 */
export async function safeResolve(root: string, rel: string, field = 'path'): Promise<string> {
  const segments = checkRelative(rel, field);
  const absRoot = resolve(root);
  const target = resolve(absRoot, ...segments);
  if (!isInside(absRoot, target))
    throw new ApiError('invalid_params', `${field}: '${printable(rel)}' resolves outside its folder`, [
      { field, message: 'outside the folder' },
    ]);
  const realRoot = await realpath(absRoot).catch(() => absRoot);
  // The deepest existing ancestor (or the target itself) must really be inside the root.
  let probe = target;
  for (;;) {
    try {
      const real = await realpath(probe);
      if (!isInside(realRoot, real))
        throw new ApiError(
          'invalid_params',
          `${field}: '${printable(rel)}' leads outside its folder through a symbolic link`,
          [{ field, message: 'a symbolic link leads outside the folder' }],
        );
      break;
    } catch (err) {
      if (err instanceof ApiError) throw err;
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENAMETOOLONG')
        throw new ApiError('invalid_params', `${field}: '${printable(rel)}' is too long a name for the file system`, [
          { field, message: 'name too long' },
        ]);
      if (code !== 'ENOENT' && code !== 'ENOTDIR') throw err;
      if (probe === absRoot) break;
      probe = resolve(probe, '..');
    }
  }
  return target;
}

/**
 * A file name safe to create: the base name only, letters, digits, `.`, `-`, `_`; no leading dot;
 * the extension kept (lower-cased); at most `max` characters. `fallback` when nothing is left.
 */
export function safeFileName(name: string, fallback = 'file', max = 80): string {
  const base = name.split(/[\\/]/).pop() ?? '';
  const dot = base.lastIndexOf('.');
  const rawExt = dot > 0 ? base.slice(dot + 1) : '';
  const ext = rawExt
    .toLowerCase()
    .replace(/[^a-z0-9]/g, '')
    .slice(0, 16);
  const stem = (dot > 0 ? base.slice(0, dot) : base)
    .normalize('NFKD')
    .replace(/[\u0300-\u036f]/g, '')
    .replace(/[^A-Za-z0-9._-]+/g, '-')
    .replace(/^[.\-_]+|[.\-_]+$/g, '')
    .slice(0, Math.max(1, max - ext.length - 1));
  return `${stem || fallback}${ext ? `.${ext}` : ''}`;
}

/** `name`, or `name-2`, `name-3`, ... (before the extension) so it is not in `taken`. */
export function uniqueName(name: string, taken: ReadonlySet<string>): string {
  if (!taken.has(name)) return name;
  const dot = name.lastIndexOf('.');
  const stem = dot > 0 ? name.slice(0, dot) : name;
  const ext = dot > 0 ? name.slice(dot) : '';
  for (let i = 2; ; i++) {
    const candidate = `${stem}-${i}${ext}`;
    if (!taken.has(candidate)) return candidate;
  }
}

function printable(s: string): string {
  // eslint-disable-next-line no-control-regex
  const clean = String(s).replace(/[\u0000-\u001f]/g, '?');
  return clean.length > 120 ? `${clean.slice(0, 120)}...` : clean;
}
