/**
 * File-system failures as sentences a user can act on. Node's errors read
 * "ENOSPC: no space left on device, write '/data/projects/x/run.json'"; the user needs
 * "disk full: /data/projects/x/run.json (free some space, then resume)".
 *
 *   | errno          | message                                                       |
 *   | -------------- | ------------------------------------------------------------- |
 *   | ENOSPC, EDQUOT | disk full: <path> (free some space, then try again)           |
 *   | EACCES, EPERM  | permission denied: <path> (check the folder's permissions)    |
 *   | EROFS          | read-only file system: <path>                                 |
 *   | EMFILE, ENFILE | too many open files: <path> (close other programs, try again) |
 *   | ENAMETOOLONG   | name too long: <path> (use a shorter name)                    |
 *   | ENOENT         | no such file or folder: <path> (moved or deleted while in use) |
 *
 * Engine errors arrive as text (the engine process sends messages, not Error objects), so the
 * same table reads the errno and path out of the message too.
 */

const FS_ERRORS: Readonly<Record<string, (path: string) => string>> = {
  ENOSPC: (p) => `disk full: ${p} (free some space, then try again)`,
  EDQUOT: (p) => `disk full: ${p} (the disk quota is used up; free some space, then try again)`,
  EACCES: (p) => `permission denied: ${p} (check the folder's permissions)`,
  EPERM: (p) => `permission denied: ${p} (check the folder's permissions)`,
  EROFS: (p) => `read-only file system: ${p} (move the data folder to a writable disk)`,
  EMFILE: (p) => `too many open files: ${p} (close other programs, then try again)`,
  ENFILE: (p) => `too many open files: ${p} (close other programs, then try again)`,
  ENAMETOOLONG: (p) => `name too long: ${p} (use a shorter name)`,
  ENOENT: (p) => `no such file or folder: ${p} (it was moved or deleted while in use; try again)`,
};

/** The contract's error code for a file-system failure: the client's doing, or the server's. */
export function fsErrorCode(err: unknown): 'invalid_params' | 'not_found' | 'internal' {
  const code = parse(err)?.code;
  return code === 'ENAMETOOLONG' ? 'invalid_params' : code === 'ENOENT' ? 'not_found' : 'internal';
}

/** The errno code and path of a file-system error (an Error with `code`, or Node's message text). */
function parse(err: unknown): { code: string; path: string } | null {
  const e = err as NodeJS.ErrnoException | null;
  const message = typeof err === 'string' ? err : (e?.message ?? '');
  const code = (e && typeof e.code === 'string' && e.code) || /\b(E[A-Z]+):/.exec(message)?.[1];
  if (!code || !FS_ERRORS[code]) return null;
  const path =
    (e && typeof e.path === 'string' && e.path) ||
    /'([^']+)'\s*(?:->|$)/.exec(message)?.[1] ||
    /'([^']+)'/.exec(message)?.[1] ||
    '(unknown file)';
  return { code, path };
}

/** A readable sentence for a file-system failure; null when `err` is not one. */
export function fsErrorMessage(err: unknown): string | null {
  const p = parse(err);
  return p ? FS_ERRORS[p.code](p.path) : null;
}

/** `err`'s message, made readable when it is a file-system failure. */
export function readableError(err: unknown): string {
  return fsErrorMessage(err) ?? (typeof err === 'string' ? err : ((err as Error)?.message ?? String(err)));
}
