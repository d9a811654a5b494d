/**
 * models.*: the base and evaluation models, the base models found on this machine, a project's
 * base model, downloads (a job in the io lane).
 *
 * Where base models are looked for (`models.bases`), in this order:
 *   | source             | what counts                                                           |
 *   | ------------------ | --------------------------------------------------------------------- |
 *   | models folder      | a folder with model_index.json, or a .safetensors file, at its top    |
 *   | Hugging Face cache | `<hub>/models--<org>--<name>/snapshots/<rev>/`: an SD 1.x pipeline    |
 *   | recent             | the base model of any project                                         |
 *   | server default     | `serve --base` (when it is none of the above)                          |
 * The hub is HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub (`hfCacheDir` overrides).
 * A server open to the network (hostPaths 'deny') lists the models folder only.
 */
import { existsSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { basename, join, resolve } from 'node:path';
import { ApiError, type BaseModelInfo } from '../../api/contract.ts';
import { EVAL_MODELS, listModels } from '../../engine/eval/modelRegistry.ts';
import {
  checkBase,
  defaultBase,
  demoModelDir,
  modelTrainingDefaults,
  submitJob,
  type ServiceContext,
} from '../context.ts';
import { readModelDefaults } from '../../engine/io/modelDefaults.ts';
import type { NamespaceHandlers } from './handlers.ts';

/** A diffusers pipeline folder that is not SDXL (the cache holds every kind of model; SD 1.x is what trains here). */
async function isSd1Pipeline(dir: string): Promise<boolean> {
  const index = await readFile(join(dir, 'model_index.json'), 'utf8').then(
    (t) => JSON.parse(t) as Record<string, unknown>,
    () => null,
  );
  return (
    index !== null && !('text_encoder_2' in index) && !/XL/.test(String(index._class_name ?? '')) && 'unet' in index
  );
}

/** A listed model's defaults; a bad file lists as none (choosing the model reports its error). */
function listedDefaults(path: string): BaseModelInfo['defaults'] {
  try {
    return readModelDefaults(path);
  } catch {
    return null;
  }
}

export function modelsHandlers(c: ServiceContext): NamespaceHandlers<'models'> {
  return {
    'models.list': async () => {
      const rows = [];
      const demo = demoModelDir(c.modelsDir);
      const basePath = defaultBase(c) ?? demo;
      rows.push({
        name: basename(basePath),
        kind: 'base',
        present: existsSync(basePath),
        path: basePath,
        bytes: null,
        verified: null,
        hint: existsSync(basePath)
          ? null
          : `no default base model: choose one per project (models.setBase), start the server with --base, or build the demo model into ${demo}`,
      });
      for (const m of await listModels(c.modelsDir)) {
        const present = m.files.filter((f) => f.present);
        const verified = m.files.some((f) => f.verified === false)
          ? false
          : m.files.length && m.files.every((f) => f.verified === true)
            ? true
            : null;
        rows.push({
          name: m.id,
          kind: m.required ? 'evaluation' : 'evaluation (optional)',
          present: m.present,
          path: join(c.modelsDir, m.id),
          bytes: present.length ? present.reduce((n, f) => n + (f.bytes ?? 0), 0) : null,
          verified,
          // One line for the Models screen (the registry's per-file notes, with every URL, are for the CLI).
          hint: m.present
            ? verified === false
              ? m.files
                  .filter((f) => f.verified === false)
                  .map((f) => f.note)
                  .join('; ')
              : null
            : `missing ${m.files
                .filter((f) => !f.present)
                .map((f) => f.file)
                .join(
                  ', ',
                )} in ${join(c.modelsDir, m.id)}: download (singlora models download ${m.id}) or place the files there`,
        });
      }
      return rows;
    },

    'models.bases': async () => {
      const found = new Map<string, Omit<BaseModelInfo, 'native' | 'isDefault'>>();
      const add = (path: string, name: string, source: BaseModelInfo['source']) => {
        if (!found.has(path)) found.set(path, { path, name, source });
      };
      for (const d of await readdir(c.modelsDir, { withFileTypes: true }).catch(() => [])) {
        const path = join(c.modelsDir, d.name);
        if (d.name.startsWith('.')) continue;
        if ((d.isDirectory() || d.isSymbolicLink()) && existsSync(join(path, 'model_index.json')))
          add(path, d.name, 'models folder');
        else if (d.isFile() && d.name.toLowerCase().endsWith('.safetensors')) add(path, d.name, 'models folder');
      }
      const open = c.opts.hostPaths !== 'deny';
      if (open) {
        const hub =
          c.opts.hfCacheDir ??
          process.env.HF_HUB_CACHE ??
          join(process.env.HF_HOME ?? join(homedir(), '.cache', 'huggingface'), 'hub');
        for (const repo of (await readdir(hub).catch(() => [] as string[]))
          .filter((n) => n.startsWith('models--'))
          .sort()) {
          for (const rev of await readdir(join(hub, repo, 'snapshots')).catch(() => [] as string[])) {
            const path = join(hub, repo, 'snapshots', rev);
            if (await isSd1Pipeline(path))
              add(path, repo.slice('models--'.length).replace('--', '/'), 'Hugging Face cache');
          }
        }
      }
      const def = defaultBase(c);
      const recent = open ? (await c.store.list()).filter((s) => !s.broken).map((s) => s.id) : [];
      for (const id of recent) {
        const base = await c.store
          .open(id)
          .then((p) => p.baseModel)
          .catch(() => null);
        if (base && existsSync(base)) add(resolve(base), basename(base), 'recent');
      }
      if (def && existsSync(def)) add(def, basename(def), 'server default');
      // Offer only what models.setBase accepts (a link out of the models folder is refused there
      // by a server open to the network); the server's own default is always usable.
      const usable = [];
      for (const m of found.values()) {
        const ok =
          m.source === 'server default' ||
          (await c.paths.hostPath(m.path, 'path', 'base-model').then(
            () => true,
            () => false,
          ));
        if (ok) usable.push(m);
      }
      return Promise.all(
        usable.map(async (m) => ({
          ...m,
          isDefault: m.path === def,
          native: await c.nativeResolution(m.path),
          defaults: listedDefaults(m.path),
        })),
      );
    },

    'models.setBase': async (p) => {
      await c.store.open(p.projectId);
      const { path, name, format } = await checkBase(c, p.path, 'path');
      // A new model brings its recommended training settings (singlora-defaults.json), if it has any.
      const settings = modelTrainingDefaults(path, 'path');
      await c.store.update(p.projectId, { baseModel: path, ...(settings ? { settings } : {}) });
      return { name, format };
    },

    'models.download': async (p) => {
      const spec = (c.opts.evalModels ?? EVAL_MODELS).find((m) => m.id === p.name);
      if (!spec) throw new ApiError('not_found', `no downloadable model '${p.name}'`);
      const busy = await c.jobs.active({ kind: 'download' });
      if (busy.length) throw new ApiError('conflict', `a download is already ${busy[0].status} (${busy[0].id})`);
      const job = await submitJob(c, { kind: 'download', projectId: null, runId: null, params: { name: spec.id } });
      return { jobId: job.id };
    },
  };
}
