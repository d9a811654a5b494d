/** photos.*: uploads and path imports (one size limit for both), the list, removal, crop previews. */
import { ApiError } from '../../api/contract.ts';
import { decodeImage, encodeImage, fitToSize } from '../../engine/image/sharp.ts';
import type { ServiceContext } from '../context.ts';
import type { PhotoSource } from '../projects.ts';
import type { NamespaceHandlers } from './handlers.ts';

const MIB = 2 ** 20;

export function photosHandlers(c: ServiceContext): NamespaceHandlers<'photos'> {
  return {
    'photos.add': async (p) => {
      const sources: PhotoSource[] = [];
      for (const [i, path] of (p.paths ?? []).entries())
        sources.push({ kind: 'bytes', ...(await c.paths.readPhoto(path, `paths.${i}`)) });
      const limit = c.paths.maxPhotoBytes;
      for (const [i, f] of (p.files ?? []).entries()) {
        const field = `files.${i}.dataBase64`;
        const b64 = f.dataBase64.replace(/\s+/g, '');
        if (!/^[A-Za-z0-9+/]*={0,2}$/.test(b64) || b64.length % 4 === 1)
          throw new ApiError('invalid_params', `${field}: ${f.name} is not base64`, [{ field, message: 'not base64' }]);
        const size = Math.floor((b64.length * 3) / 4) - (b64.endsWith('==') ? 2 : b64.endsWith('=') ? 1 : 0);
        if (size > limit)
          throw new ApiError(
            'too_large',
            `files.${i}: ${f.name} is ${(size / MIB).toFixed(1)} MiB; the limit is ${(limit / MIB).toFixed(0)} MiB per photo`,
            [{ field, message: 'too large' }],
          );
        if (size === 0)
          throw new ApiError('invalid_params', `${field}: ${f.name} is empty`, [{ field, message: 'empty' }]);
        sources.push({ kind: 'bytes', name: f.name, data: Buffer.from(b64, 'base64') });
      }
      if (!sources.length)
        throw new ApiError('invalid_params', 'photos.add: give photos in paths or files', [
          { field: 'files', message: 'no photos given' },
        ]);
      return c.store.addPhotos(p.projectId, sources);
    },
    'photos.list': async (p) => c.store.photos(p.projectId),
    'photos.remove': async (p) => ({ removed: await c.store.removePhoto(p.projectId, p.photoId) }),
    'photos.cropPreview': async (p) => {
      const path = await c.store.photoPath(p.projectId, p.photoId);
      let img: Awaited<ReturnType<typeof decodeImage>>;
      try {
        img = await decodeImage(path, { maxPixels: 64_000_000 });
      } catch (err) {
        throw new ApiError('conflict', `photo '${p.photoId}' cannot be decoded: ${(err as Error).message}`);
      }
      const fitted = await fitToSize(img, p.size, p.size, { crop: p.crop });
      return { pngBase64: (await encodeImage(fitted, 'png')).toString('base64') };
    },
  };
}
