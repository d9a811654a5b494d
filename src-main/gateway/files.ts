/**
 * The one `/files/` resolver, for the server and the Electron app protocol:
 *
 *   /files/<projectId>/<path in the project>
 *     1. split, then decode each segment once (an encoded '/' or '..' stays inside its segment,
 *        where safeResolve refuses it)                                  else invalid_params
 *     2. the project id must be an id                                   else invalid_params
 *     3. the service resolves the file (safeResolve: no '..', no absolute path, no symlink out)
 *     4. its type: images, JSON and text are shown; pages and scripts (.html, .svg, .js, ...) are
 *        never served (they would run as the app); anything else is a download (attachment)
 */
import { extname } from 'node:path';
import { ApiError, idSchema } from '../api/contract.ts';
import { FILE_TYPES, STATIC_TYPES } from './contentTypes.ts';

/** `/files/<projectId>/<rel>` -> its parts. Throws ApiError. */
export function parseFilesPath(pathname: string): { projectId: string; rel: string } {
  let segments: string[];
  try {
    segments = pathname
      .replace(/^\/files\/?/, '')
      .split('/')
      .map((s) => decodeURIComponent(s));
  } catch {
    throw new ApiError('invalid_params', `${pathname}: not valid percent-encoding`);
  }
  const [projectId, ...rest] = segments;
  if (!idSchema.safeParse(projectId).success)
    throw new ApiError('invalid_params', `'${projectId ?? ''}' is not a project id`);
  return { projectId, rel: rest.join('/') };
}

export interface ProjectFile {
  file: string;
  type: string;
  /** Sent as a download, never shown. */
  attachment: boolean;
}

/** The file behind a `/files/` path, with how to send it. Throws ApiError. */
export async function resolveProjectFile(
  resolveFile: (projectId: string, rel: string) => Promise<string>,
  pathname: string,
): Promise<ProjectFile> {
  const { projectId, rel } = parseFilesPath(pathname);
  const ext = extname(rel).toLowerCase();
  const type = FILE_TYPES[ext];
  if (!type && STATIC_TYPES[ext])
    throw new ApiError('not_found', `/files/ does not serve '${ext}' files (they would run as the app): '${rel}'`);
  const file = await resolveFile(projectId, rel);
  return { file, type: type ?? 'application/octet-stream', attachment: !type };
}

/** The Content-Disposition of a download. */
export function attachmentHeader(file: string): string {
  return `attachment; filename="${encodeURIComponent(file.split(/[\\/]/).pop() ?? 'file')}"`;
}
