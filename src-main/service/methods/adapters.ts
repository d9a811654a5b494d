/**
 * adapters.*: the project's adapter files, exports (a job; the destination is checked when asked
 * for and again when the job runs), imports and inspections. Exports and imports take the
 * project's lock, so a projects.delete comes wholly before or after them.
 */
import { mkdir, readdir, stat } from 'node:fs/promises';
import { basename, extname, isAbsolute, join } from 'node:path';
import { ApiError, type AdapterInfo } from '../../api/contract.ts';
import { atomicCopyFile } from '../../engine/io/atomic.ts';
import { adapterInfo, adapterPath, baseFor, inspect, submitJob, type ServiceContext } from '../context.ts';
import { sharedPath } from '../jobData.ts';
import { rootsOf } from '../jobHandlers.ts';
import { safeFileName, uniqueName } from '../safePath.ts';
import type { NamespaceHandlers } from './handlers.ts';

export function adaptersHandlers(c: ServiceContext): NamespaceHandlers<'adapters'> {
  return {
    'adapters.list': async (p) => {
      await c.store.open(p.projectId);
      const dir = join(c.store.dir(p.projectId), 'adapters');
      const names = (await readdir(dir, { withFileTypes: true }).catch(() => []))
        .filter((d) => d.isFile() && !d.name.startsWith('.') && extname(d.name).toLowerCase() === '.safetensors')
        .map((d) => d.name)
        .sort();
      if (!names.length) return [];
      const results = await inspect(
        c,
        names.map((n) => join(dir, n)),
      );
      const out: AdapterInfo[] = [];
      results.forEach((r, i) => {
        // Merged checkpoints also live here; only files with adapter targets are adapters.
        if (r.ok && r.info.targets > 0) out.push(adapterInfo(r.info, `adapters/${names[i]}`));
        else if (!r.ok) c.log(`adapters: ${names[i]}: ${r.error}`);
      });
      return out;
    },

    'adapters.export': async (p) =>
      c.store.withLock(p.projectId, async () => {
        const project = await c.store.open(p.projectId);
        const adapter = await adapterPath(c, p.projectId, p.adapter, 'adapter');
        const merged = p.format === 'merged-diffusers' || p.format === 'merged-single-file';
        const folder = p.format === 'merged-diffusers';
        const base = merged ? (adapter.runBase ?? baseFor(c, project)) : undefined;
        const projectDir = c.store.dir(p.projectId);
        const adaptersDir = join(projectDir, 'adapters');
        await mkdir(adaptersDir, { recursive: true });
        let outPath: string;
        if (p.outPath !== undefined) {
          // A bare file name goes into adapters/; a file format gets its .safetensors when it has none.
          const bare = !p.outPath.includes('/') && !p.outPath.includes('\\') && !isAbsolute(p.outPath);
          outPath = bare ? `adapters/${p.outPath}` : p.outPath;
          if (!folder && bare && !extname(outPath)) outPath += '.safetensors';
          await c.paths.exportTarget(projectDir, outPath, merged);
        } else {
          const taken = new Set(await readdir(adaptersDir).catch(() => [] as string[]));
          const stem = safeFileName(`${project.id}-${adapter.label}-${p.format}`, 'adapter');
          outPath = `adapters/${uniqueName(folder ? stem : `${stem}.safetensors`, taken)}`;
        }
        const roots = rootsOf(c);
        const job = await submitJob(c, {
          kind: 'export',
          projectId: p.projectId,
          runId: 'runId' in p.adapter ? p.adapter.runId : null,
          params: {
            adapter: sharedPath(roots, p.projectId, adapter.path),
            format: p.format,
            outPath,
            ...(base ? { base: sharedPath(roots, p.projectId, base) } : {}),
          },
        });
        return { jobId: job.id };
      }),

    'adapters.import': async (p) =>
      c.store.withLock(p.projectId, async () => {
        await c.store.open(p.projectId);
        const { path } = await c.paths.clientFile(c.store.dir(p.projectId), p.path, 'path', 'adapter');
        const info = await stat(path).catch(() => null);
        if (!info?.isFile()) throw new ApiError('not_found', `path: ${p.path} is not a file`);
        if (extname(path).toLowerCase() !== '.safetensors')
          throw new ApiError(
            'invalid_params',
            `path: ${p.path} is not a .safetensors file (pickled .ckpt/.pt/.bin files are refused: they can run code)`,
            [{ field: 'path', message: 'not a .safetensors file' }],
          );
        const [r] = await inspect(c, [path]);
        if (!r.ok) throw new ApiError('invalid_params', `path: ${r.error}`, [{ field: 'path', message: r.error }]);
        if (r.info.targets === 0)
          throw new ApiError(
            'invalid_params',
            `path: ${p.path} holds no LoRA/SingLoRA tensors (format ${r.info.format}); is it a full checkpoint? Use it as a base model instead`,
            [{ field: 'path', message: 'not an adapter' }],
          );
        const dir = join(c.store.dir(p.projectId), 'adapters');
        await mkdir(dir, { recursive: true });
        const name = uniqueName(safeFileName(basename(path), 'adapter'), new Set(await readdir(dir)));
        await atomicCopyFile(path, join(dir, name), { exclusive: true });
        return adapterInfo(r.info, `adapters/${name}`);
      }),

    'adapters.inspect': async (p) => {
      await c.store.open(p.projectId);
      const { path, rel } = await c.paths.clientFile(c.store.dir(p.projectId), p.file, 'file', 'adapter');
      if (!(await stat(path).catch(() => null))) throw new ApiError('not_found', `file: ${p.file} does not exist`);
      const [r] = await inspect(c, [path]);
      if (!r.ok) throw new ApiError('invalid_params', `file: ${r.error}`, [{ field: 'file', message: r.error }]);
      return adapterInfo(r.info, rel ?? path);
    },
  };
}
