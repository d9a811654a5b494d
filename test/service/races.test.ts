/**
 * The races of issue 27 (found by the security probe), each forced, not slept into: the fake
 * engine runs a hook between the service's last check of a path and the engine's write to it,
 * and the hook swaps a file or folder for a symbolic link out of the project. The real engine code
 * (exportAdapter, io/atomic.ts) does the write and must refuse to follow the link.
 */
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rename, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { metadataToStrings, type AdapterMetadata } from '../../src-main/engine/adapters/adapterFile.ts';
import { exportAdapter } from '../../src-main/engine/adapters/exportAdapter.ts';
import { train } from '../../src-main/engine/train/trainer.ts';
import { atomicWriteFile } from '../../src-main/engine/io/atomic.ts';
import { writeSafetensors } from '../../src-main/engine/io/safetensors.ts';
import type { ExportRequest } from '../../src-main/service/protocol.ts';
import type { Service } from '../../src-main/service/service.ts';
import { type FakeHandlers, trainInput } from './fakeEngine.ts';
import { useBackend } from '../helpers/backend.ts';
import { fast } from '../helpers/training.ts';
import { fakeServices, finished, shapePng } from './helpers.ts';

const openService = fakeServices('singlora-races-');

/** A service on `handlers`, with an empty folder `outside` its data folders. */
async function open(handlers: FakeHandlers) {
  const opened = await openService(handlers);
  const outside = join(opened.dir, 'outside');
  await mkdir(outside, { recursive: true });
  return { service: opened.service, call: opened.call, outside };
}

/** A native SingLoRA adapter with one 8x8 target, written without TensorFlow.js. */
async function tinyAdapter(path: string): Promise<void> {
  const target = 'down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q';
  const meta: AdapterMetadata = {
    format: 'singlora-studio-adapter',
    format_version: 1,
    method: 'singlora',
    rank: 2,
    alpha: 2,
    ramp_steps: 0,
    trained_steps: 10,
    effective_u: 1,
    init_std: 0.1,
    targets: ['to_q'],
    target_shapes: { [target]: [8, 8] },
    trigger_token: 'sks',
    class_word: 'dog',
    base_model_name: 'tiny',
    base_model_unet_sha256: '0'.repeat(64),
    created_at: new Date(0).toISOString(),
  };
  const data = Float32Array.from({ length: 16 }, (_, i) => (i - 8) / 10);
  await writeSafetensors(path, { [`unet.${target}.singlora_A`]: { shape: [8, 2], data } }, metadataToStrings(meta));
}

/** A project named 'Race' holding tinyAdapter as adapters/mine.safetensors: its id and folder. */
async function projectWithAdapter(
  service: Service,
  call: Awaited<ReturnType<typeof open>>['call'],
): Promise<{ id: string; dir: string }> {
  const { id } = await call('projects.create', { name: 'Race' });
  const dir = service.store.dir(id);
  await tinyAdapter(join(dir, 'adapters', 'mine.safetensors'));
  return { id, dir };
}

/** The real export, after `hook` ran: the interleaving the probe hit 15 times in 40. */
function exportAfter(hook: (p: ExportRequest) => Promise<void>): FakeHandlers {
  return {
    export: async (p) => {
      await hook(p);
      const r = await exportAdapter({ adapter: p.adapter, format: p.format, out: p.out, base: p.base });
      return { format: r.format, path: r.path, tensors: r.tensors };
    },
  };
}

describe('issue 27 item 1: an export never writes through a link swapped in after the check', () => {
  it('a symlink at the destination (singlora format, was: the victim overwritten by copyFile)', async () => {
    let victim = '';
    const { service, call, outside } = await open(
      exportAfter(async (p) => {
        await symlink(victim, p.out);
      }),
    );
    victim = join(outside, 'victim.txt');
    await writeFile(victim, 'precious');
    const { id } = await projectWithAdapter(service, call);
    const { jobId } = await call('adapters.export', {
      projectId: id,
      adapter: { file: 'adapters/mine.safetensors' },
      format: 'singlora',
      outPath: 'adapters/x.safetensors',
    });
    const job = await finished(service, jobId);
    expect(job.status).toBe('failed');
    expect(job.error).toMatch(/x\.safetensors: it is a symbolic link|x\.safetensors already exists/);
    expect(await readFile(victim, 'utf8')).toBe('precious');
    expect(await readdir(outside)).toEqual(['victim.txt']);
  });

  for (const format of ['kohya', 'singlora'] as const) {
    it(`a parent folder swapped for a symlink out of the project (${format}, was: written outside)`, async () => {
      let outside = '';
      const { service, call, ...rest } = await open(
        exportAfter(async (p) => {
          const sub = join(p.out, '..');
          await rename(sub, `${sub}-moved`);
          await symlink(outside, sub);
        }),
      );
      outside = rest.outside;
      const { id, dir } = await projectWithAdapter(service, call);
      await mkdir(join(dir, 'adapters', 'sub'));
      const { jobId } = await call('adapters.export', {
        projectId: id,
        adapter: { file: 'adapters/mine.safetensors' },
        format,
        outPath: 'adapters/sub/x.safetensors',
      });
      const job = await finished(service, jobId);
      expect(job.status).toBe('failed');
      expect(job.error).toMatch(/refusing to write .*x\.safetensors: .*sub leads to .*outside/);
      expect(await readdir(outside)).toEqual([]);
      expect(existsSync(join(dir, 'adapters', 'sub-moved', 'x.safetensors'))).toBe(false);
    });
  }

  it('without a swap the same export is written (the hook alone changes nothing)', async () => {
    const { service, call } = await open(exportAfter(async () => {}));
    const { id } = await projectWithAdapter(service, call);
    const { jobId } = await call('adapters.export', {
      projectId: id,
      adapter: { file: 'adapters/mine.safetensors' },
      format: 'kohya',
      outPath: 'adapters/sub/x.safetensors',
    });
    const job = await finished(service, jobId);
    expect(job.error).toBeNull();
    expect(existsSync(join(service.store.dir(id), 'adapters', 'sub', 'x.safetensors'))).toBe(true);
  });
});

describe('issue 27 item 2: class images are never written through a folder swapped for a link', () => {
  useBackend('wasm');

  it('classImagesDir replaced by a symlink after the check: the real trainer refuses, nothing is written outside', async () => {
    let outside = '';
    const { service, call, ...rest } = await open({
      train: async (p, progress, signal) => {
        // The hook: after the service checked settings.classImagesDir, before the trainer writes there.
        const dir = p.classImagesDir!;
        expect(dir).toBe(join(p.runDir, '../../class-images'));
        await rename(dir, `${dir}-moved`);
        await symlink(outside, dir);
        const r = await train(trainInput(p), { onEvent: progress, signal }).catch((err: Error) => ({ failed: err }));
        if ('failed' in r) throw r.failed;
        return { status: r.manifest.status, step: r.manifest.step, error: r.manifest.error, fixedLoss: r.fixedLoss };
      },
    });
    outside = rest.outside;
    const { id } = await call('projects.create', { name: 'Race' });
    await call('photos.add', {
      projectId: id,
      files: await Promise.all(
        [0, 1, 2].map(async (k) => ({ name: `p${k}.png`, dataBase64: (await shapePng(k, 64)).toString('base64') })),
      ),
    });
    await mkdir(join(service.store.dir(id), 'class-images'));
    const { jobId } = await call('training.start', {
      projectId: id,
      settings: { ...fast({ steps: 1 }), priorPreservation: true, numClassImages: 1, classImagesDir: 'class-images' },
    });
    const job = await finished(service, jobId);
    expect(job.status).toBe('failed');
    expect(job.error).toMatch(/refusing to write .*class-images.* leads to .*outside/);
    expect(await readdir(outside)).toEqual([]);
  });
});

describe('issue 27 item 4: generation.start and projects.delete take the same lock', () => {
  it('10 concurrent generation.start with a projects.delete leave no folder without a project (was: images/ recreated, undeletable)', async () => {
    let k = 0;
    const { service, call } = await open({
      generate: async (p) => {
        // What the engine writes: a PNG and its sidecar per image, under the request's write roots.
        const file = join(p.outDir, `img-${k++}.png`);
        await atomicWriteFile(file, 'png');
        await atomicWriteFile(file.replace(/\.png$/, '.json'), '{}');
        return { files: [file] };
      },
    });
    const { id, dir } = await projectWithAdapter(service, call);
    const settings = { prompt: 'a dog', steps: 2, width: 64, height: 64 };
    const starts = Array.from({ length: 10 }, () =>
      call('generation.start', {
        projectId: id,
        settings,
        adapters: [{ file: 'adapters/mine.safetensors', strength: 1 }],
      }),
    );
    const deleting = call('projects.delete', { projectId: id });
    const [started, deleted] = await Promise.all([
      Promise.allSettled(starts),
      deleting.then(
        (r) => ({ ok: true as const, r }),
        (e: { code: string }) => ({ ok: false as const, code: e.code }),
      ),
    ]);
    for (const s of started) if (s.status === 'fulfilled') await finished(service, s.value.jobId);
    const jobs = started.filter((s) => s.status === 'fulfilled').length;
    if (deleted.ok && deleted.r.deleted) {
      // Deleted first: every start after it is refused, and nothing was written back.
      expect(jobs).toBe(0);
      expect(existsSync(dir)).toBe(false);
    } else {
      // The starts came first: the delete is refused while their jobs exist, the project is intact.
      expect(deleted).toEqual({ ok: false, code: 'conflict' });
      expect(jobs).toBe(10);
      expect(existsSync(join(dir, 'project.json'))).toBe(true);
      expect((await readdir(join(dir, 'images'))).length).toBe(20);
    }
  });
});
