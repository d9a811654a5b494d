/**
 * modelFiles: opens a Stable Diffusion 1.x base model from disk and hands out, per component, its
 * raw config and a WeightSource under diffusers key names. No tensors are created here: the
 * model builders (engine/models) read the configs and `loadParams` walks the sources.
 *
 * Accepted layouts
 *   - a diffusers pipeline folder (https://huggingface.co/docs/diffusers/using-diffusers/other-formats):
 *       model_index.json
 *       unet/config.json          + diffusion_pytorch_model[.fp16].safetensors  (or a sharded
 *       vae/config.json           + diffusion_pytorch_model[.fp16].safetensors   `*.safetensors.index.json`)
 *       text_encoder/config.json  + model[.fp16].safetensors
 *       tokenizer/ (vocab.json, merges.txt), scheduler/scheduler_config.json
 *   - an original-layout single-file `.safetensors` checkpoint (`model.diffusion_model.*`,
 *     `first_stage_model.*`, `cond_stage_model.transformer.*`), translated by keyMap.ts. Its configs
 *     are inferred from the tensor shapes (`overrides` fills in what shapes cannot tell) or read
 *     from `configDir`, a diffusers-layout folder of configs.
 *
 * Refused: PyTorch pickles (.ckpt, .pt, .pth, .bin, or a pickle/zip renamed .safetensors), because
 * unpickling can execute code.
 *
 * Tokenizer and scheduler: a single file has neither, so `tokenizerDir` and `schedulerConfig` are
 * null (unless `configDir` has them); callers then use the bundled SD-1.5 tokenizer and scheduler
 * config, which every SD-1.x checkpoint shares.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, readFile, realpath, stat } from 'node:fs/promises';
import { basename, dirname, extname, join } from 'node:path';
import {
  COMPONENTS,
  convertTensorName,
  detectCheckpointKind,
  diffusersShape,
  singleFileKeyMap,
  type ComponentConfigs,
  type ComponentName,
  type KeyPair,
  type RawConfig,
} from './keyMap.ts';
import { inferSingleFileConfigs, type ConfigOverrides } from './configInference.ts';
import { SafetensorsFile } from './safetensors.ts';
import { safetensorsSource, type WeightSource } from './weightSource.ts';

export interface ComponentFiles {
  /** The raw config JSON: config.json as written, or inferred from a single file's shapes. */
  readonly config: RawConfig;
  /** Where the config came from: a config.json path, or `inferred from <file>`. */
  readonly configSource: string;
  /** The weights, under diffusers / transformers key names and shapes. */
  readonly weights: WeightSource;
  /** The weight files (one file, or the shards in name order). */
  readonly files: readonly string[];
}

export interface IgnoredKey {
  readonly key: string;
  readonly reason: string;
}

export interface BaseModel {
  /** Folder name, or file name without `.safetensors`. */
  readonly name: string;
  readonly path: string;
  readonly format: 'diffusers' | 'single-file';
  readonly unet: ComponentFiles;
  readonly vae: ComponentFiles;
  readonly textEncoder: ComponentFiles;
  /** Folder with vocab.json and merges.txt; null for a single file (use the bundled SD-1.5 tokenizer). */
  readonly tokenizerDir: string | null;
  /** scheduler_config.json; null for a single file (use the bundled SD-1.5 scheduler config). */
  readonly schedulerConfig: RawConfig | null;
  /** Single-file tensors skipped as known extras (EMA weights, schedule buffers, position_ids). */
  readonly ignoredKeys: readonly IgnoredKey[];
  /** Closes every file handle; the weight sources cannot be read afterwards. Safe to call twice. */
  close(): Promise<void>;
}

export interface OpenBaseModelOptions {
  /**
   * Single files only: a diffusers-layout folder holding unet/, vae/ and text_encoder/config.json
   * (e.g. the SD-1.5 configs). Its tokenizer/ and scheduler/ are used when present.
   */
  readonly configDir?: string;
  /**
   * Single files without configDir: values merged over the inferred configs, for what shapes
   * cannot tell (unet/vae `norm_num_groups`, text `num_attention_heads`, `sample_size`, ...).
   */
  readonly overrides?: ConfigOverrides;
  /** Diffusers folders: prefer `*.fp16.safetensors` when both precisions are present. */
  readonly variant?: 'fp16';
}

export class ModelFileError extends Error {
  constructor(
    readonly path: string,
    message: string,
  ) {
    super(message);
    this.name = 'ModelFileError';
  }
}

const FOLDER = { unet: 'unet', vae: 'vae', textEncoder: 'text_encoder' } as const satisfies Record<
  ComponentName,
  string
>;
const WEIGHTS_BASE = {
  unet: 'diffusion_pytorch_model',
  vae: 'diffusion_pytorch_model',
  textEncoder: 'model',
} as const satisfies Record<ComponentName, string>;
const PICKLE_EXTENSIONS = new Set(['.ckpt', '.pt', '.pth', '.bin', '.pkl']);

/** Opens a diffusers pipeline folder or a single-file `.safetensors` checkpoint. Close the result. */
export async function openBaseModel(path: string, opts: OpenBaseModelOptions = {}): Promise<BaseModel> {
  const info = await stat(path).catch(() => null);
  if (!info)
    throw new ModelFileError(
      path,
      `base model not found: ${path} does not exist. Pass a diffusers folder (with model_index.json) or a single-file .safetensors checkpoint`,
    );
  if (info.isDirectory()) return openDiffusersFolder(path, opts);
  const ext = extname(path).toLowerCase();
  if (PICKLE_EXTENSIONS.has(ext)) throw pickleRefusal(path, `'${ext}' files are PyTorch pickles`);
  if (ext !== '.safetensors')
    throw new ModelFileError(
      path,
      `${path}: unsupported model file type '${ext}'; expected a .safetensors single-file checkpoint or a diffusers folder`,
    );
  return openSingleFile(path, opts);
}

// ---------------------------------------------------------------------------------------------
// Diffusers folders

async function openDiffusersFolder(dir: string, opts: OpenBaseModelOptions): Promise<BaseModel> {
  if (opts.overrides)
    throw new ModelFileError(
      dir,
      `${dir}: config overrides only apply to configs inferred from a single file; for a diffusers folder edit its component config.json files instead`,
    );
  if (opts.configDir)
    throw new ModelFileError(
      dir,
      `${dir}: configDir only applies to single-file checkpoints (--config-dir); a diffusers folder has its own configs`,
    );
  const indexPath = join(dir, 'model_index.json');
  if (!(await exists(indexPath))) {
    const hint = (await exists(join(dir, 'config.json')))
      ? ` (${dir} has a config.json: it looks like one component folder; pass the pipeline folder above it)`
      : '';
    throw new ModelFileError(indexPath, `not a diffusers pipeline folder: ${indexPath} is missing${hint}`);
  }
  const index = await readJson(indexPath, 'pipeline index');
  if ('text_encoder_2' in index || /XL/.test(String(index._class_name ?? ''))) {
    throw new ModelFileError(
      indexPath,
      `${indexPath}: ${String(index._class_name ?? 'this pipeline')} (SDXL) is not supported; SingLoRA Studio trains Stable Diffusion 1.x`,
    );
  }

  const handles: SafetensorsFile[] = [];
  try {
    const components = {} as Record<ComponentName, ComponentFiles>;
    for (const component of COMPONENTS) {
      const folder = join(dir, FOLDER[component]);
      const configPath = join(folder, 'config.json');
      const config = await readJson(configPath, `${FOLDER[component]} config`);
      const files = await openComponentWeights(folder, WEIGHTS_BASE[component], opts.variant, handles);
      const weights = safetensorsSource(
        files,
        (k) => {
          const t = convertTensorName(k, { format: 'diffusers', component });
          return t.kind === 'tensor' ? t.key : null;
        },
        `${FOLDER[component]} weights (${files.map((f) => f.path).join(', ')})`,
      );
      components[component] = { config, configSource: configPath, weights, files: files.map((f) => f.path) };
    }
    return {
      name: basename(dir),
      path: dir,
      format: 'diffusers',
      ...components,
      tokenizerDir: await tokenizerFolder(dir),
      schedulerConfig: await schedulerConfig(dir),
      ignoredKeys: [],
      close: closer(handles),
    };
  } catch (err) {
    await Promise.all(handles.map((h) => h.close()));
    throw err;
  }
}

/**
 * The weight files of one component folder: `<base>.safetensors`, `<base>.fp16.safetensors`, or
 * their sharded `.safetensors.index.json` forms, full precision first unless `variant` is fp16.
 */
async function openComponentWeights(
  folder: string,
  base: string,
  variant: 'fp16' | undefined,
  handles: SafetensorsFile[],
): Promise<SafetensorsFile[]> {
  const precisions = variant === 'fp16' ? ['.fp16', ''] : ['', '.fp16'];
  for (const p of precisions) {
    const single = join(folder, `${base}${p}.safetensors`);
    if (await exists(single)) return [await openSafetensors(single, handles)];
    const index = join(folder, `${base}${p}.safetensors.index.json`);
    if (await exists(index)) return openSharded(index, handles);
  }
  for (const name of [
    `${base}.bin`,
    `${base}.fp16.bin`,
    'pytorch_model.bin',
    'pytorch_model.fp16.bin',
    `${base}.ckpt`,
  ]) {
    const pickle = join(folder, name);
    if (await exists(pickle)) throw pickleRefusal(pickle, `${folder} has only pickle weights (${name})`);
  }
  const expected = join(folder, `${base}.safetensors`);
  throw new ModelFileError(
    expected,
    `missing weights: expected ${expected} (or ${base}.fp16.safetensors, or a sharded ${base}.safetensors.index.json) in ${folder}`,
  );
}

/** A sharded checkpoint: `{ "weight_map": { key: "shard file name" } }` beside its shards. */
async function openSharded(indexPath: string, handles: SafetensorsFile[]): Promise<SafetensorsFile[]> {
  const index = await readJson(indexPath, 'shard index');
  const map = index.weight_map;
  if (
    typeof map !== 'object' ||
    map === null ||
    Array.isArray(map) ||
    !Object.values(map).every((v) => typeof v === 'string')
  ) {
    throw new ModelFileError(
      indexPath,
      `${indexPath}: "weight_map" must be an object from tensor name to shard file name`,
    );
  }
  const weightMap = map as Record<string, string>;
  const shardNames = [...new Set(Object.values(weightMap))].sort();
  const shards = new Map<string, SafetensorsFile>();
  for (const name of shardNames) {
    if (name !== basename(name) || name === '..' || name === '.')
      throw new ModelFileError(indexPath, `${indexPath}: shard '${name}' must be a file name in the same folder`);
    const path = join(dirname(indexPath), name);
    if (!(await exists(path))) throw new ModelFileError(path, `missing shard: ${path} (listed in ${indexPath})`);
    shards.set(name, await openSafetensors(path, handles));
  }
  for (const [key, name] of Object.entries(weightMap)) {
    const shard = shards.get(name)!;
    if (!shard.tensors.has(key))
      throw new ModelFileError(shard.path, `${shard.path}: has no tensor '${key}', which ${indexPath} places there`);
  }
  for (const shard of shards.values()) {
    for (const key of shard.keys()) {
      if (weightMap[key] !== basename(shard.path))
        throw new ModelFileError(
          shard.path,
          `${shard.path}: tensor '${key}' is not assigned to this shard by ${indexPath}`,
        );
    }
  }
  return [...shards.values()];
}

async function tokenizerFolder(dir: string): Promise<string | null> {
  const folder = join(dir, 'tokenizer');
  if (!(await exists(folder))) return null;
  for (const file of ['vocab.json', 'merges.txt']) {
    const path = join(folder, file);
    if (!(await exists(path))) throw new ModelFileError(path, `incomplete tokenizer: ${path} is missing`);
  }
  return folder;
}

async function schedulerConfig(dir: string): Promise<RawConfig | null> {
  const path = join(dir, 'scheduler', 'scheduler_config.json');
  return (await exists(path)) ? readJson(path, 'scheduler config') : null;
}

// ---------------------------------------------------------------------------------------------
// Single-file checkpoints

async function openSingleFile(path: string, opts: OpenBaseModelOptions): Promise<BaseModel> {
  if (opts.configDir && opts.overrides)
    throw new ModelFileError(
      path,
      `${path}: pass either configDir or overrides, not both (overrides only adjust inferred configs)`,
    );
  const handles: SafetensorsFile[] = [];
  try {
    const file = await openSafetensors(path, handles);
    const kind = detectCheckpointKind(file.keys());
    if (kind !== 'sd1-single-file') throw new ModelFileError(path, `${path}: ${KIND_REFUSAL[kind]}`);

    // Step 1: configs, from configDir or inferred from the shapes.
    const { configs, configSource } = await singleFileConfigs(path, file, opts);

    // Step 2: translate every key; list unknown and missing tensors by their original names.
    const source = { format: 'single-file', map: singleFileKeyMap(configs) } as const;
    const ignoredKeys: IgnoredKey[] = [];
    const unknown: string[] = [];
    const found = new Set<KeyPair>();
    for (const key of file.keys()) {
      const t = convertTensorName(key, source);
      if (t.kind === 'ignored') ignoredKeys.push({ key, reason: t.reason });
      else if (t.kind === 'unknown') unknown.push(key);
      else found.add(t.pair!);
    }
    const missing = source.map.pairs.filter((p) => !p.optional && !found.has(p)).map((p) => p.original);
    if (unknown.length || missing.length)
      throw new SingleFileKeyError(
        path,
        unknown,
        missing,
        opts.configDir ? `the configs in ${opts.configDir}` : 'the configs inferred from its shapes',
      );

    // Step 3: one source per component over the shared file handle.
    const components = {} as Record<ComponentName, ComponentFiles>;
    for (const component of COMPONENTS) {
      const raw = safetensorsSource(
        file,
        (k) => {
          const t = convertTensorName(k, source);
          return t.kind === 'tensor' && t.component === component ? t.key : null;
        },
        `${path} (${FOLDER[component]})`,
      );
      components[component] = {
        config: configs[component],
        configSource: configSource(component),
        weights: withDiffusersShapes(raw, source.map.byDiffusers[component]),
        files: [path],
      };
    }
    return {
      name: basename(path, extname(path)),
      path,
      format: 'single-file',
      ...components,
      tokenizerDir: opts.configDir ? await tokenizerFolder(opts.configDir) : null,
      schedulerConfig: opts.configDir ? await schedulerConfig(opts.configDir) : null,
      ignoredKeys,
      close: closer(handles),
    };
  } catch (err) {
    await Promise.all(handles.map((h) => h.close()));
    throw err;
  }
}

/** A single file's component configs: from `configDir`, else inferred from its tensors' shapes (with `overrides`). */
async function singleFileConfigs(
  path: string,
  file: SafetensorsFile,
  opts: OpenBaseModelOptions,
): Promise<{ configs: ComponentConfigs; configSource: (c: ComponentName) => string }> {
  if (opts.configDir) {
    const dir = opts.configDir;
    const read = (c: ComponentName) => readJson(join(dir, FOLDER[c], 'config.json'), `${FOLDER[c]} config`);
    return {
      configs: { unet: await read('unet'), vae: await read('vae'), textEncoder: await read('textEncoder') },
      configSource: (c) => join(dir, FOLDER[c], 'config.json'),
    };
  }
  return {
    configs: inferSingleFileConfigs(new Map(file.keys().map((k) => [k, file.info(k).shape] as const)), opts.overrides),
    configSource: () => `inferred from ${path}`,
  };
}

const KIND_REFUSAL: Readonly<Record<string, string>> = {
  'sd2-single-file':
    'this is a Stable Diffusion 2.x checkpoint (OpenCLIP text encoder, cond_stage_model.model.*); only SD 1.x is supported',
  'sdxl-single-file': 'this is an SDXL checkpoint (conditioner.embedders.*); only SD 1.x is supported',
  lora: 'this is a LoRA adapter, not a base model; load it as an adapter on top of a base model',
  'diffusers-component':
    'this holds diffusers component keys (down_blocks.*, text_model.*) without the single-file prefixes; pass the diffusers pipeline folder it came from instead',
  unknown:
    'no Stable Diffusion 1.x tensors found (expected model.diffusion_model.*, first_stage_model.*, cond_stage_model.transformer.*)',
};

export class SingleFileKeyError extends ModelFileError {
  constructor(
    path: string,
    readonly unknown: readonly string[],
    readonly missing: readonly string[],
    configs: string,
  ) {
    const lines = [`${path}: the checkpoint's tensors do not match ${configs}`];
    const list = (title: string, items: readonly string[]) => {
      if (!items.length) return;
      lines.push(`  ${title} (${items.length}):`);
      for (const item of items.slice(0, 20)) lines.push(`    ${item}`);
      if (items.length > 20) lines.push(`    ... and ${items.length - 20} more`);
    };
    list('unknown tensors (neither SD-1.x weights nor known extras)', unknown);
    list('missing tensors', missing);
    lines.push(
      '  A wrong --config-dir (configDir) or override shows up as both lists; a truncated or foreign checkpoint as one.',
    );
    super(path, lines.join('\n'));
    this.name = 'SingleFileKeyError';
  }
}

/** Reports diffusers shapes: the original VAE attention's [C, C, 1, 1] convs become [C, C]. */
function withDiffusersShapes(source: WeightSource, pairs: ReadonlyMap<string, KeyPair>): WeightSource {
  return {
    description: source.description,
    keys: () => source.keys(),
    shape: (key) => {
      const shape = source.shape(key);
      const pair = pairs.get(key);
      return shape && pair ? diffusersShape(pair, shape) : shape;
    },
    read: (key) => source.read(key),
    ...(source.locate ? { locate: (key: string) => source.locate!(key) } : {}),
  };
}

// ---------------------------------------------------------------------------------------------
// Files

/** Opens a .safetensors file after checking it is not a pickle or zip in disguise. */
async function openSafetensors(path: string, handles: SafetensorsFile[]): Promise<SafetensorsFile> {
  const disguise = await sniffPickle(path);
  if (disguise) throw pickleRefusal(path, `this file is named .safetensors but is ${disguise}`);
  const file = await SafetensorsFile.open(path);
  handles.push(file);
  return file;
}

/**
 * What a pickle-based PyTorch file starts with: a zip local-file header (torch >= 1.6 saves a zip
 * holding a pickle) or the pickle PROTO opcode 0x80 with protocol 2..5. A safetensors header length
 * can begin with the same bytes, so a file whose byte 8 opens a JSON object is not flagged.
 */
async function sniffPickle(path: string): Promise<string | null> {
  const fh = await open(path, 'r').catch(() => null);
  if (!fh) return null; // SafetensorsFile.open reports the error with the path
  try {
    const head = Buffer.alloc(9);
    const { bytesRead } = await fh.read(head, 0, 9, 0);
    const looksLikeSafetensors = bytesRead === 9 && head[8] === 0x7b; // '{'
    if (looksLikeSafetensors) return null;
    if (bytesRead >= 4 && head.subarray(0, 4).equals(Buffer.from('PK\x03\x04', 'latin1')))
      return 'a zip archive (a PyTorch >= 1.6 checkpoint)';
    if (bytesRead >= 2 && head[0] === 0x80 && head[1] >= 2 && head[1] <= 5)
      return `a Python pickle (protocol ${head[1]})`;
    return null;
  } finally {
    await fh.close();
  }
}

function pickleRefusal(path: string, what: string): ModelFileError {
  return new ModelFileError(
    path,
    `${path}: refusing to load: ${what}. Unpickling a PyTorch checkpoint (.ckpt, .pt, .pth, .bin) can execute arbitrary code, ` +
      'so SingLoRA Studio only reads .safetensors. Download the .safetensors release of the model, or convert this file once with a tool ' +
      'you trust, e.g. Python: torch.load(path, map_location="cpu", weights_only=True), then safetensors.torch.save_file(...); ' +
      'for a diffusers folder, pipe.save_pretrained(dir, safe_serialization=True).',
  );
}

async function readJson(path: string, what: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch {
    throw new ModelFileError(path, `missing ${what}: expected ${path}`);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new ModelFileError(path, `${path}: ${what} is not valid JSON (${(err as Error).message})`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    throw new ModelFileError(path, `${path}: ${what} must be a JSON object`);
  return value as Record<string, unknown>;
}

async function exists(path: string): Promise<boolean> {
  return (await stat(path).catch(() => null)) !== null;
}

function closer(handles: SafetensorsFile[]): () => Promise<void> {
  let closed = false;
  return async () => {
    if (closed) return;
    closed = true;
    await Promise.all(handles.map((h) => h.close()));
  };
}

// ---------------------------------------------------------------------------------------------
// SHA-256 of the UNet weights, streamed (3.4 GB for SD-1.5), cached in memory by path, size
// and mtime: model folders may be read-only, so nothing is written beside them.

/** The hex SHA-256 identifying the UNet weights: of the single file, the UNet file, or its shards in name order. */
export function unetSha256(model: Pick<BaseModel, 'unet'>, opts: HashOptions = {}): Promise<string> {
  return sha256OfFiles(model.unet.files, opts);
}

export interface HashOptions {
  /** Called after each chunk with bytes hashed so far and the total. */
  readonly onProgress?: (done: number, total: number) => void;
  readonly signal?: AbortSignal;
}

const hashCache = new Map<string, string>();

/**
 * SHA-256 over the bytes of `paths` concatenated in order (for one file, what `sha256sum` prints).
 * A result is cached while every file keeps its size and mtime.
 */
export async function sha256OfFiles(paths: readonly string[], opts: HashOptions = {}): Promise<string> {
  if (!paths.length) throw new Error('sha256OfFiles: no files given');
  const identity = async () => {
    const parts = await Promise.all(
      paths.map(async (p) => {
        const s = await stat(p).catch(() => null);
        if (!s) throw new ModelFileError(p, `cannot hash ${p}: file not found`);
        return { key: `${await realpath(p)}\0${s.size}\0${s.mtimeMs}`, size: s.size };
      }),
    );
    return { key: parts.map((p) => p.key).join('\n'), total: parts.reduce((a, p) => a + p.size, 0) };
  };
  const before = await identity();
  const cached = hashCache.get(before.key);
  if (cached) return cached;

  const hash = createHash('sha256');
  let done = 0;
  for (const p of paths) {
    const stream = createReadStream(p, { highWaterMark: 4 << 20, signal: opts.signal });
    for await (const chunk of stream) {
      hash.update(chunk as Buffer);
      done += (chunk as Buffer).length;
      opts.onProgress?.(done, before.total);
    }
  }
  const digest = hash.digest('hex');
  // Cache only if nothing changed while hashing.
  if ((await identity()).key === before.key) hashCache.set(before.key, digest);
  return digest;
}

/**
 * Image-to-latent downsampling of a VAE config: 2^(levels - 1), 8 for SD 1.x (4 levels when the
 * config does not say).
 */
export function vaeScaleFactor(vaeConfig: RawConfig | null | undefined): number {
  const channels = vaeConfig?.block_out_channels;
  return 2 ** ((Array.isArray(channels) ? channels.length : 4) - 1);
}

/** A model's native image size: UNet sample_size (64 when absent) x the VAE factor; 512 for SD 1.5. */
export function nativeResolution(configs: { unet: RawConfig; vae: RawConfig }): number {
  const s = configs.unet.sample_size;
  return (typeof s === 'number' ? s : 64) * vaeScaleFactor(configs.vae);
}
