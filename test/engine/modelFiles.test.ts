/**
 * openBaseModel: diffusers folders and single-file checkpoints give the same weights under the
 * same names (tiny-b: its single file is the official conversion of its folder, so every tensor
 * must match element-exactly), and every bad input fails with the exact path in the message.
 */
import { createHash } from 'node:crypto';
import { cp, mkdtemp, readFile, rm, stat, unlink, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ComponentName } from '../../src-main/engine/io/keyMap.ts';
import {
  openBaseModel,
  sha256OfFiles,
  SingleFileKeyError,
  unetSha256,
  type BaseModel,
} from '../../src-main/engine/io/modelFiles.ts';
import {
  float32ToFloat16,
  readAllFloat32,
  writeSafetensors,
  type TensorToWrite,
} from '../../src-main/engine/io/safetensors.ts';
import { FIXTURES } from '../helpers/fixtures.ts';

const TINY_B = join(FIXTURES, 'tiny-b/model');
const TINY_B_SINGLE = join(FIXTURES, 'tiny-b/single_file.safetensors');
/** What the shapes of tiny-b cannot tell (REFERENCE.md: groups 8, 6 heads). */
const TINY_B_OVERRIDES = {
  unet: { norm_num_groups: 8 },
  vae: { norm_num_groups: 8 },
  textEncoder: { num_attention_heads: 6 },
};
const COMPONENTS: ComponentName[] = ['unet', 'vae', 'textEncoder'];
const FOLDER: Record<ComponentName, string> = { unet: 'unet', vae: 'vae', textEncoder: 'text_encoder' };

let tmp: string;
beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'singlora-modelfiles-'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

const readJson = async (path: string) => JSON.parse(await readFile(path, 'utf8'));
const bytesOf = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

async function withModel<T>(
  path: string,
  opts: Parameters<typeof openBaseModel>[1],
  fn: (m: BaseModel) => Promise<T>,
): Promise<T> {
  const model = await openBaseModel(path, opts);
  try {
    return await fn(model);
  } finally {
    await model.close();
  }
}

/** A copy of tiny-b/model to break. */
async function tinyBCopy(name: string): Promise<string> {
  const dir = join(tmp, name);
  await cp(TINY_B, dir, { recursive: true });
  return dir;
}

/** Rewrites the tiny-b single file with tensors added and removed. */
async function editedSingleFile(
  name: string,
  add: Record<string, TensorToWrite>,
  remove: string[] = [],
): Promise<string> {
  const { tensors } = await readAllFloat32(TINY_B_SINGLE);
  const out: Record<string, TensorToWrite> = { ...add };
  for (const [k, t] of tensors) if (!remove.includes(k)) out[k] = { shape: t.shape, data: t.data };
  const path = join(tmp, name);
  await writeSafetensors(path, out);
  return path;
}

describe('diffusers folder', () => {
  it('opens tiny-b/model: raw configs, weights under diffusers names, tokenizer and scheduler', async () => {
    await withModel(TINY_B, {}, async (m) => {
      expect(m.format).toBe('diffusers');
      expect(m.name).toBe('model');
      for (const c of COMPONENTS) {
        const configPath = join(TINY_B, FOLDER[c], 'config.json');
        expect(m[c].config, c).toEqual(await readJson(configPath));
        expect(m[c].configSource).toBe(configPath);
      }
      expect(m.unet.files).toEqual([join(TINY_B, 'unet/diffusion_pytorch_model.safetensors')]);
      expect(m.textEncoder.files).toEqual([join(TINY_B, 'text_encoder/model.safetensors')]);
      expect([
        [...m.unet.weights.keys()].length,
        [...m.vae.weights.keys()].length,
        [...m.textEncoder.weights.keys()].length,
      ]).toEqual([684, 244, 52]);
      expect(m.unet.weights.shape('conv_in.weight')).toEqual([32, 4, 3, 3]);
      expect(m.vae.weights.shape('encoder.mid_block.attentions.0.to_q.weight')).toEqual([32, 32]);
      expect(m.tokenizerDir).toBe(join(TINY_B, 'tokenizer'));
      expect(m.schedulerConfig).toEqual(await readJson(join(TINY_B, 'scheduler/scheduler_config.json')));
      expect(m.ignoredKeys).toEqual([]);
    });
  });

  it('names the exact path of a missing unet/config.json', async () => {
    const dir = await tinyBCopy('no-unet-config');
    await unlink(join(dir, 'unet/config.json'));
    await expect(openBaseModel(dir)).rejects.toThrow(`missing unet config: expected ${join(dir, 'unet/config.json')}`);
  });

  it('names the weight file it expected when none is there', async () => {
    const dir = await tinyBCopy('no-unet-weights');
    await unlink(join(dir, 'unet/diffusion_pytorch_model.safetensors'));
    await expect(openBaseModel(dir)).rejects.toThrow(
      `missing weights: expected ${join(dir, 'unet/diffusion_pytorch_model.safetensors')}`,
    );
  });

  it('refuses pickle weights in a folder', async () => {
    const dir = await tinyBCopy('pickle-text-encoder');
    await unlink(join(dir, 'text_encoder/model.safetensors'));
    await writeFile(join(dir, 'text_encoder/pytorch_model.bin'), Buffer.from('PK\x03\x04pickle inside', 'latin1'));
    await expect(openBaseModel(dir)).rejects.toThrow(
      new RegExp(
        `${escapeRegExp(join(dir, 'text_encoder/pytorch_model.bin'))}: refusing to load.*execute arbitrary code`,
      ),
    );
  });

  it('requires model_index.json, and says when it was given a component folder', async () => {
    const dir = await tinyBCopy('no-index');
    await unlink(join(dir, 'model_index.json'));
    await expect(openBaseModel(dir)).rejects.toThrow(`${join(dir, 'model_index.json')} is missing`);
    await expect(openBaseModel(join(TINY_B, 'unet'))).rejects.toThrow(
      /looks like one component folder; pass the pipeline folder above it/,
    );
  });

  it('reads the .fp16 variant when it is the only one', async () => {
    const dir = await tinyBCopy('fp16');
    const original = (await readAllFloat32(join(TINY_B, 'unet/diffusion_pytorch_model.safetensors'))).tensors;
    await unlink(join(dir, 'unet/diffusion_pytorch_model.safetensors'));
    const half: Record<string, TensorToWrite> = {};
    for (const [k, t] of original) half[k] = { dtype: 'F16', shape: t.shape, data: t.data };
    await writeSafetensors(join(dir, 'unet/diffusion_pytorch_model.fp16.safetensors'), half);
    await withModel(dir, {}, async (m) => {
      expect(m.unet.files).toEqual([join(dir, 'unet/diffusion_pytorch_model.fp16.safetensors')]);
      expect([...m.unet.weights.keys()].sort()).toEqual([...original.keys()].sort());
      const w = await m.unet.weights.read('down_blocks.0.attentions.0.proj_in.weight');
      const ref = original.get('down_blocks.0.attentions.0.proj_in.weight')!.data;
      // Each value is the float16 nearest to the original: re-encoding both gives the same half.
      expect([...w].map(float32ToFloat16)).toEqual([...ref].map(float32ToFloat16));
      expect(w.some((v, i) => v !== ref[i])).toBe(true); // and it really is rounded
    });
  });

  it('prefers full precision, or fp16 when asked', async () => {
    const dir = await tinyBCopy('both-precisions');
    await cp(
      join(dir, 'vae/diffusion_pytorch_model.safetensors'),
      join(dir, 'vae/diffusion_pytorch_model.fp16.safetensors'),
    );
    await withModel(dir, {}, async (m) =>
      expect(m.vae.files).toEqual([join(dir, 'vae/diffusion_pytorch_model.safetensors')]),
    );
    await withModel(dir, { variant: 'fp16' }, async (m) =>
      expect(m.vae.files).toEqual([join(dir, 'vae/diffusion_pytorch_model.fp16.safetensors')]),
    );
  });

  it('reads sharded weights through their index, and names a missing shard', async () => {
    const dir = await tinyBCopy('sharded');
    const original = (await readAllFloat32(join(TINY_B, 'vae/diffusion_pytorch_model.safetensors'))).tensors;
    await unlink(join(dir, 'vae/diffusion_pytorch_model.safetensors'));
    const shards: Record<string, TensorToWrite>[] = [{}, {}];
    const weightMap: Record<string, string> = {};
    for (const [k, t] of original) {
      const s = k.startsWith('encoder.') ? 0 : 1;
      shards[s][k] = { shape: t.shape, data: t.data };
      weightMap[k] = `diffusion_pytorch_model-0000${s + 1}-of-00002.safetensors`;
    }
    for (const s of [0, 1])
      await writeSafetensors(join(dir, `vae/diffusion_pytorch_model-0000${s + 1}-of-00002.safetensors`), shards[s]);
    await writeFile(
      join(dir, 'vae/diffusion_pytorch_model.safetensors.index.json'),
      JSON.stringify({ metadata: {}, weight_map: weightMap }),
    );
    await withModel(dir, {}, async (m) => {
      expect(m.vae.files).toEqual(
        [1, 2].map((s) => join(dir, `vae/diffusion_pytorch_model-0000${s}-of-00002.safetensors`)),
      );
      expect([...m.vae.weights.keys()].sort()).toEqual([...original.keys()].sort());
      for (const [k, t] of original) expect(bytesOf(await m.vae.weights.read(k)).equals(bytesOf(t.data)), k).toBe(true);
    });
    await unlink(join(dir, 'vae/diffusion_pytorch_model-00002-of-00002.safetensors'));
    await expect(openBaseModel(dir)).rejects.toThrow(
      `missing shard: ${join(dir, 'vae/diffusion_pytorch_model-00002-of-00002.safetensors')}`,
    );
  });

  it('refuses overrides and configDir, which only apply to single files', async () => {
    await expect(openBaseModel(TINY_B, { overrides: TINY_B_OVERRIDES })).rejects.toThrow(
      /overrides only apply to configs inferred from a single file/,
    );
    await expect(openBaseModel(TINY_B, { configDir: TINY_B })).rejects.toThrow(
      /configDir only applies to single-file checkpoints/,
    );
  });
});

describe('single-file checkpoint', () => {
  it('loads exactly the tensors of tiny-b/model, under the same names and shapes', async () => {
    await withModel(TINY_B, {}, async (folder) => {
      await withModel(TINY_B_SINGLE, { overrides: TINY_B_OVERRIDES }, async (single) => {
        expect(single.format).toBe('single-file');
        expect(single.name).toBe('single_file');
        for (const c of COMPONENTS) {
          const keys = [...folder[c].weights.keys()].sort();
          expect([...single[c].weights.keys()].sort(), c).toEqual(keys);
          for (const key of keys) {
            expect(single[c].weights.shape(key), `${c} ${key}`).toEqual(folder[c].weights.shape(key));
            const [a, b] = [await single[c].weights.read(key), await folder[c].weights.read(key)];
            expect(bytesOf(a).equals(bytesOf(b)), `${c} ${key}: values differ`).toBe(true);
          }
        }
      });
    });
  });

  it('infers configs matching tiny-b on every inferred field except the unknowable sample_size', async () => {
    await withModel(TINY_B_SINGLE, { overrides: TINY_B_OVERRIDES }, async (m) => {
      for (const c of COMPONENTS) {
        const reference = await readJson(join(TINY_B, FOLDER[c], 'config.json'));
        expect(m[c].configSource).toBe(`inferred from ${TINY_B_SINGLE}`);
        for (const [key, value] of Object.entries(m[c].config)) {
          if (key === 'sample_size' || (key === 'dropout' && !('dropout' in reference))) continue;
          expect(value, `${c}.${key}`).toEqual(reference[key]);
        }
      }
      expect(m.unet.config.sample_size).toBe(64); // SD-1.5's, since nothing in the file says otherwise
      // A single file has no tokenizer or scheduler: callers use the bundled SD-1.5 ones.
      expect(m.tokenizerDir).toBeNull();
      expect(m.schedulerConfig).toBeNull();
    });
  });

  it('says which override is needed when the shapes cannot tell', async () => {
    await expect(openBaseModel(TINY_B_SINGLE)).rejects.toThrow(
      /num_attention_heads.*overrides\.textEncoder\.num_attention_heads/,
    );
  });

  it('takes configs, tokenizer and scheduler from a configDir', async () => {
    await withModel(TINY_B_SINGLE, { configDir: TINY_B }, async (m) => {
      for (const c of COMPONENTS) {
        expect(m[c].config, c).toEqual(await readJson(join(TINY_B, FOLDER[c], 'config.json')));
        expect(m[c].configSource).toBe(join(TINY_B, FOLDER[c], 'config.json'));
      }
      expect(m.tokenizerDir).toBe(join(TINY_B, 'tokenizer'));
      expect(m.schedulerConfig).toEqual(await readJson(join(TINY_B, 'scheduler/scheduler_config.json')));
    });
    await expect(openBaseModel(TINY_B_SINGLE, { configDir: TINY_B, overrides: TINY_B_OVERRIDES })).rejects.toThrow(
      /either configDir or overrides/,
    );
  });

  it('skips the extras released checkpoints carry, and lists them', async () => {
    const f = (n: number) => ({ shape: [n], data: new Float32Array(n) });
    const path = await editedSingleFile('with-extras.safetensors', {
      'model_ema.decay': f(1),
      betas: f(10),
      alphas_cumprod: f(10),
      logvar: f(10),
      'cond_stage_model.transformer.text_model.embeddings.position_ids': {
        shape: [1, 77],
        data: new Int32Array(77).map((_, i) => i),
      },
    });
    await withModel(path, { overrides: TINY_B_OVERRIDES }, async (m) => {
      expect(m.ignoredKeys.map((k) => k.key).sort()).toEqual([
        'alphas_cumprod',
        'betas',
        'cond_stage_model.transformer.text_model.embeddings.position_ids',
        'logvar',
        'model_ema.decay',
      ]);
      expect([...m.textEncoder.weights.keys()].length).toBe(52);
      expect([...m.unet.weights.keys()].length).toBe(684);
    });
  });

  it('lists unknown and missing tensors by their single-file names', async () => {
    const missing = [
      'first_stage_model.decoder.conv_out.bias',
      'model.diffusion_model.input_blocks.4.1.proj_in.weight',
    ];
    const path = await editedSingleFile(
      'unknown-and-missing.safetensors',
      { 'model.diffusion_model.label_emb.0.0.weight': { shape: [2, 2], data: new Float32Array(4) } },
      missing,
    );
    const err = await openBaseModel(path, { overrides: TINY_B_OVERRIDES }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(SingleFileKeyError);
    const e = err as SingleFileKeyError;
    expect(e.unknown).toEqual(['model.diffusion_model.label_emb.0.0.weight']);
    expect([...e.missing].sort()).toEqual([...missing].sort());
    expect(e.message).toContain(path);
    for (const name of [...missing, 'model.diffusion_model.label_emb.0.0.weight']) expect(e.message).toContain(name);
  });

  it('refuses LoRA, SDXL and component files with the reason', async () => {
    const t = { shape: [1], data: new Float32Array(1) };
    const lora = join(tmp, 'lora.safetensors');
    await writeSafetensors(lora, { 'lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight': t });
    await expect(openBaseModel(lora)).rejects.toThrow(/lora\.safetensors: this is a LoRA adapter, not a base model/);
    const sdxl = join(tmp, 'sdxl.safetensors');
    await writeSafetensors(sdxl, {
      'conditioner.embedders.1.model.ln_final.weight': t,
      'model.diffusion_model.out.2.bias': t,
    });
    await expect(openBaseModel(sdxl)).rejects.toThrow(/sdxl\.safetensors: this is an SDXL checkpoint/);
    await expect(openBaseModel(join(TINY_B, 'unet/diffusion_pytorch_model.safetensors'))).rejects.toThrow(
      /pass the diffusers pipeline folder it came from/,
    );
  });
});

describe('pickles are refused', () => {
  it.each(['.ckpt', '.pt', '.pth', '.bin'])('by extension: %s', async (ext) => {
    const path = join(tmp, `model${ext}`);
    await writeFile(path, Buffer.from('\x80\x02}q\x00.', 'latin1'));
    await expect(openBaseModel(path)).rejects.toThrow(
      new RegExp(`${escapeRegExp(path)}: refusing to load.*execute arbitrary code.*safetensors`),
    );
  });

  it.each([
    ['pickle protocol 2', '\x80\x02}q\x00(X\x06\x00\x00\x00weightq\x01.', /a Python pickle \(protocol 2\)/],
    ['pickle protocol 4', '\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94.', /a Python pickle \(protocol 4\)/],
    ['zip', 'PK\x03\x04\x14\x00\x00\x00\x00\x00archive/data.pkl', /a zip archive/],
  ])('by content, when named .safetensors: %s', async (name, content, what) => {
    const path = join(tmp, `${name.replace(/ /g, '-')}.safetensors`);
    await writeFile(path, Buffer.from(content, 'latin1'));
    const err = await openBaseModel(path).catch((e: Error) => e);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toMatch(
      new RegExp(`^${escapeRegExp(path)}: refusing to load: this file is named \\.safetensors but is`),
    );
    expect((err as Error).message).toMatch(what);
  });

  it('names a path that does not exist', async () => {
    const path = join(tmp, 'nowhere', 'model.safetensors');
    await expect(openBaseModel(path)).rejects.toThrow(`base model not found: ${path} does not exist`);
  });
});

describe('SHA-256 of the UNet weights', () => {
  const sha = async (path: string) =>
    createHash('sha256')
      .update(await readFile(path))
      .digest('hex');

  it('hashes the UNet file of a folder and the whole single file, reporting progress', async () => {
    await withModel(TINY_B, {}, async (m) => {
      const progress: [number, number][] = [];
      expect(await unetSha256(m, { onProgress: (done, total) => progress.push([done, total]) })).toBe(
        await sha(join(TINY_B, 'unet/diffusion_pytorch_model.safetensors')),
      );
      const size = (await stat(join(TINY_B, 'unet/diffusion_pytorch_model.safetensors'))).size;
      expect(progress.at(-1)).toEqual([size, size]);
    });
    await withModel(TINY_B_SINGLE, { overrides: TINY_B_OVERRIDES }, async (m) =>
      expect(await unetSha256(m)).toBe(await sha(TINY_B_SINGLE)),
    );
  });

  it('caches by path, size and mtime', async () => {
    const path = join(tmp, 'hash-me.bin');
    const mtime = new Date('2024-01-01T00:00:00Z'); // whole seconds: utimes keeps it exactly
    await writeFile(path, 'first content');
    await utimes(path, mtime, mtime);
    const first = await sha256OfFiles([path]);
    expect(first).toBe(await sha(path));
    // Same size, same mtime: the cached digest is returned, though the bytes changed.
    await writeFile(path, 'other content');
    await utimes(path, mtime, mtime);
    expect(await sha256OfFiles([path])).toBe(first);
    // A new mtime invalidates it.
    await utimes(path, mtime, new Date(mtime.getTime() + 5000));
    expect(await sha256OfFiles([path])).toBe(await sha(path));
    expect(await sha(path)).not.toBe(first);
  });

  it('hashes shards as one stream, in order', async () => {
    const a = join(tmp, 'part-a.bin');
    const b = join(tmp, 'part-b.bin');
    await writeFile(a, 'hello ');
    await writeFile(b, 'world');
    expect(await sha256OfFiles([a, b])).toBe(createHash('sha256').update('hello world').digest('hex'));
  });
});

describe('close', () => {
  it('closes the handles; reads fail afterwards', async () => {
    const m = await openBaseModel(TINY_B_SINGLE, { overrides: TINY_B_OVERRIDES });
    expect((await m.unet.weights.read('conv_in.bias')).length).toBe(32);
    await m.close();
    await m.close(); // twice is fine
    await expect(m.unet.weights.read('conv_in.bias')).rejects.toThrow();
  });
});

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
