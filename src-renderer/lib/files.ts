/**
 * URLs of project files. The API returns a URL with everything a page shows: photos
 * (`photo.url`), training samples (`sample.url` in `training.status` and `train.event`),
 * generated images (`image.url`) and exports (`job.result.url`), all of the form
 *   /files/<projectId>/<path relative to the project>
 * The page never builds these paths itself. Every URL goes through the transport; in the browser
 * it stays as it is (no `?token=`): the HttpOnly cookie set on the page's first load authorises it.
 */
import type { Transport } from './transport/types.ts';

export class Files {
  constructor(private readonly transport: Pick<Transport, 'fileUrl'>) {}

  /** A URL the API returned (opaque). */
  url(apiUrl: string): string {
    return this.transport.fileUrl(apiUrl);
  }
}
