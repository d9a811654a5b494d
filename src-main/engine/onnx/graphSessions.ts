/**
 * Graph files and ONNX Runtime sessions over the user's weights, read in place.
 *
 * A component's graph (componentGraphs.ts) is emitted on first use and cached in
 * `<cache>/onnx/<key>/graph.onnx`, keyed by the graph version, the component, the compute type,
 * the adapter side paths and the weight files' identity (path, size, modification time). The
 * graph holds no weights: its initializers are external data naming a file, an offset and a
 * length inside the user's safetensors files.
 *
 * ONNX Runtime (1.30) only reads external data from a file in the graph file's own folder, named
 * by a relative path, and refuses one that leaves the folder through a symbolic link. So each
 * session is created from a fresh folder that holds a copy of the small graph file and a hard link
 * to each weight file (no bytes copied); the folder is removed once the session holds the weights,
 * so no link outlives the session's creation (a deleted model does not stay on disk because of
 * us). Where a hard link cannot be made (another file system, no permission), the weight files
 * are read into memory and handed to the session (`externalData`): ONNX Runtime copies them, so
 * the peak is about twice the weights until the JS buffers are dropped.
 */
import { createHash } from 'node:crypto';
import {
  copyFileSync,
  existsSync,
  linkSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  realpathSync,
  rmSync,
  statSync,
} from 'node:fs';
import { join } from 'node:path';
import { OnnxSession, type ExecutionProvider } from '../backend/onnxRuntime.ts';
import { atomicWriteFile, atomicWriteJson } from '../io/atomic.ts';
import { defaultCacheDir } from '../paths.ts';
import { GRAPH_VERSION, type EmittedGraph, type GraphKind, type WeightFileRef } from './componentGraphs.ts';
import type { ComputeType } from './onnxOps.ts';

export interface GraphMeta {
  readonly kind: GraphKind;
  readonly files: readonly WeightFileRef[];
  readonly sidePaths: ReadonlyArray<[string, { inFeatures: number; outFeatures: number }]>;
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  readonly nodes: number;
}

export interface GraphRequest {
  readonly kind: GraphKind;
  readonly dtype: ComputeType;
  readonly sidePaths: readonly string[];
  readonly attention?: 'fused' | 'plain';
  /** Anything else that changes the emitted graph (the training step's checkpointing), part of the cache key. */
  readonly variant?: string;
  /** The component's config, part of the cache key. */
  readonly config: unknown;
  /** Every weight file the graph reads. */
  readonly files: readonly string[];
  /** Emits the graph (called on a cache miss). */
  readonly emit: () => EmittedGraph;
}

export interface SessionRequest {
  readonly providers: readonly ExecutionProvider[];
  readonly cacheDir?: string;
  /** Force the in-memory path even when links work (tests, measurements). */
  readonly inMemory?: boolean;
  /** Session config entries (onnxruntime `extra`), e.g. the training step's (trainStepGraph.ts). */
  readonly extra?: Record<string, Record<string, string>>;
  readonly intraOpNumThreads?: number;
  /** ONNX Runtime's CPU arena (OnnxSession's `cpuArena`; default: off unless SINGLORA_ORT_ARENA=1). */
  readonly cpuArena?: boolean;
  /** ONNX Runtime's memory pattern (OnnxSession's `memPattern`; default on). */
  readonly memPattern?: boolean;
}

export interface OpenedGraph {
  readonly session: OnnxSession;
  readonly meta: GraphMeta;
  /** How the weights reached ONNX Runtime. */
  readonly weights: 'linked' | 'in-memory';
  readonly graphFile: string;
  /** True when the graph was emitted now (not found in the cache). */
  readonly emitted: boolean;
}

/** The cache key of a graph: changes whenever the graph or the files it reads would. */
export function graphKey(req: Omit<GraphRequest, 'emit'>): string {
  const files = req.files.map((f) => {
    const st = statSync(f);
    return { path: realpathSync(f), size: st.size, mtimeMs: Math.round(st.mtimeMs) };
  });
  const h = createHash('sha256').update(
    JSON.stringify({
      v: GRAPH_VERSION,
      kind: req.kind,
      dtype: req.dtype,
      attention: req.attention ?? 'fused',
      ...(req.variant ? { variant: req.variant } : {}),
      side: [...req.sidePaths].sort(),
      config: req.config,
      files,
    }),
  );
  return `${req.kind}-${h.digest('hex').slice(0, 24)}`;
}

/** The cached graph file for `req`, emitted now if missing. */
export async function ensureGraph(
  req: GraphRequest,
  cacheDir = defaultCacheDir(),
): Promise<{ file: string; meta: GraphMeta; emitted: boolean }> {
  const dir = join(cacheDir, 'onnx', graphKey(req));
  const file = join(dir, 'graph.onnx');
  const metaFile = join(dir, 'meta.json');
  if (existsSync(file) && existsSync(metaFile)) {
    const cached = JSON.parse(readFileSync(metaFile, 'utf8')) as GraphMeta;
    // The key names the files by their real paths, but the graph was emitted through whatever path the
    // model had then (a symlink, a folder since removed): link the weights from where they are now.
    if (cached.files.every((f) => existsSync(f.path))) return { file, meta: cached, emitted: false };
  }
  const g = req.emit();
  const meta: GraphMeta = {
    kind: g.kind,
    files: g.files.map((f) => ({ ...f, path: realpathSync(f.path) })),
    sidePaths: [...g.sidePaths],
    inputNames: g.inputNames,
    outputNames: g.outputNames,
    nodes: g.nodes,
  };
  mkdirSync(dir, { recursive: true });
  await atomicWriteFile(file, g.bytes);
  await atomicWriteJson(metaFile, meta);
  return { file, meta, emitted: true };
}

/** A session over the graph of `req`, with the weights read in place (see the file comment). */
export async function openGraph(req: GraphRequest, opts: SessionRequest): Promise<OpenedGraph> {
  const cacheDir = opts.cacheDir ?? defaultCacheDir();
  const { file, meta, emitted } = await ensureGraph(req, cacheDir);
  const sessionsDir = join(cacheDir, 'onnx', 'sessions');
  mkdirSync(sessionsDir, { recursive: true });
  const tmp = mkdtempSync(join(sessionsDir, `${meta.kind}-`));
  try {
    const graphFile = join(tmp, 'graph.onnx');
    copyFileSync(file, graphFile);
    let linked = !opts.inMemory;
    if (linked) {
      try {
        for (const f of meta.files) linkSync(f.path, join(tmp, f.location));
      } catch {
        linked = false;
      }
    }
    const common = {
      providers: opts.providers,
      extra: opts.extra,
      intraOpNumThreads: opts.intraOpNumThreads,
      cpuArena: opts.cpuArena,
      memPattern: opts.memPattern,
    };
    const session = linked
      ? await OnnxSession.create(graphFile, common)
      : await OnnxSession.create(graphFile, {
          ...common,
          graph: readFileSync(file),
          externalData: meta.files.map((f) => ({ path: f.location, data: readWhole(f.path) })),
        });
    return { session, meta, weights: linked ? 'linked' : 'in-memory', graphFile: file, emitted };
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

function readWhole(path: string): Uint8Array {
  const size = statSync(path).size;
  if (size > 2 ** 32 - 1)
    throw new Error(
      `${path}: ${size} bytes is too large to hand to ONNX Runtime in memory (4 GiB at most); put the ONNX cache (SINGLORA_CACHE_DIR) on the same file system as the model so it can be linked`,
    );
  return readFileSync(path);
}
