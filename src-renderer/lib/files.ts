/**
 * URLs of project files. The API returns URLs for generated images; photos (`photo.file`) and
 * training samples (`sample.file`) come as paths, which the server serves under
 *   /files/<projectId>/<path relative to the project>      e.g. photos/0001.jpg
 *   /files/<projectId>/runs/<runId>/<path relative to the run>   e.g. samples/step-000100-0.png
 * Every URL goes through the transport, which adds the session token for the browser.
 */
import type { Transport } from './transport/types.ts';

const encodePath = (p: string) => p.split('/').filter(Boolean).map(encodeURIComponent).join('/');

export class Files {
  constructor(private readonly transport: Pick<Transport, 'fileUrl'>) {}

  /** A URL the API returned (opaque). */
  url(apiUrl: string): string {
    return this.transport.fileUrl(apiUrl);
  }

  project(projectId: string, path: string): string {
    return this.transport.fileUrl(`/files/${encodeURIComponent(projectId)}/${encodePath(path)}`);
  }

  run(projectId: string, runId: string, path: string): string {
    return this.project(projectId, `runs/${runId}/${path}`);
  }
}
