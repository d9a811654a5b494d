/**
 * The one file that imports onnxruntime-node. Evaluation models (DINO, CLIP) are ONNX graphs run
 * here; the rest of the engine sees `OnnxModel` and plain typed arrays, never an `ort.Tensor`.
 *
 * A model is loaded against an expected interface (`ModelInterface`): input/output names, element
 * types and shapes. Loading fails, naming the file, when the file is missing, is not a loadable
 * ONNX model, or declares another interface, e.g.
 *   model.onnx: not a DINO ViT-S/16 image embedder: expected input 'pixel_values' [N,3,224,224], found 'input' [1,3,256,256]
 *
 * Shape rules: a string dim in the expectation ('N', 'D') matches any size; a number must equal the
 * model's number. A symbolic dim in the model matches any expected number and is checked on the
 * actual outputs at run time.
 */
import * as ort from 'onnxruntime-node';
import { existsSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

const require = createRequire(import.meta.url);

/** A dimension: a fixed size, or a symbol standing for any size (batch 'N', width 'D'). */
export type Dim = number | string;

export type OnnxElementType = 'float32' | 'int64' | 'int32';

export interface TensorSpec {
  readonly name: string;
  readonly type: OnnxElementType;
  readonly shape: readonly Dim[];
  /** An input the model may or may not have; when it has one, the caller feeds it. */
  readonly optional?: boolean;
}

export interface ModelInterface {
  /** What the model is, for messages: 'DINO ViT-S/16 image embedder'. */
  readonly what: string;
  readonly inputs: readonly TensorSpec[];
  readonly outputs: readonly TensorSpec[];
}

/** A tensor going in or coming out, row-major. */
export type OnnxTensor =
  | { readonly type: 'float32'; readonly data: Float32Array; readonly dims: readonly number[] }
  | { readonly type: 'int64'; readonly data: BigInt64Array; readonly dims: readonly number[] }
  | { readonly type: 'int32'; readonly data: Int32Array; readonly dims: readonly number[] };

/** onnxruntime execution providers this code knows how to ask for; CPU is bundled with the npm package. */
export type ExecutionProvider = 'cpu' | 'cuda' | 'dml' | 'coreml' | 'webgpu';

export interface OnnxLoadOptions {
  /** In order of preference; default ['cpu']. */
  readonly executionProviders?: readonly ExecutionProvider[];
  /** Threads inside one op (default: onnxruntime's choice, one per core). */
  readonly intraOpNumThreads?: number;
}

export class OnnxModelError extends Error {
  constructor(
    readonly file: string,
    message: string,
  ) {
    super(`${file}: ${message}`);
    this.name = 'OnnxModelError';
  }
}

/** What a loaded model declares (from the graph's value infos). */
export interface FoundTensor {
  readonly name: string;
  readonly type: string;
  /** Empty when the graph does not declare a shape. */
  readonly shape: readonly Dim[];
}

export class OnnxModel {
  private constructor(
    readonly file: string,
    readonly expected: ModelInterface,
    readonly inputs: readonly FoundTensor[],
    readonly outputs: readonly FoundTensor[],
    private session: ort.InferenceSession | null,
  ) {}

  /** Loads `file` and checks it against `expected`; see the module comment for the errors. */
  static async load(file: string, expected: ModelInterface, options: OnnxLoadOptions = {}): Promise<OnnxModel> {
    if (!existsSync(file)) throw new OnnxModelError(file, `no such file (the ${expected.what} model)`);
    const size = statSync(file).size;
    let session: ort.InferenceSession;
    try {
      session = await ort.InferenceSession.create(file, {
        executionProviders: [...(options.executionProviders ?? ['cpu'])],
        ...(options.intraOpNumThreads ? { intraOpNumThreads: options.intraOpNumThreads } : {}),
        graphOptimizationLevel: 'all',
      });
    } catch (err) {
      const msg = (err as Error).message ?? String(err);
      const hint = /provider/i.test(msg)
        ? `execution providers [${(options.executionProviders ?? ['cpu']).join(', ')}] could not start; use 'cpu'`
        : `not a loadable ONNX model (${size} bytes): the file is corrupt, truncated or not ONNX; download it again`;
      throw new OnnxModelError(file, `${hint} (onnxruntime: ${msg.trim()})`);
    }
    const inputs = session.inputMetadata.map(found);
    const outputs = session.outputMetadata.map(found);
    const problems = interfaceProblems(expected, inputs, outputs);
    if (problems.length) {
      await session.release();
      throw new OnnxModelError(file, `not a ${expected.what}: ${problems.join('; ')}`);
    }
    return new OnnxModel(file, expected, inputs, outputs, session);
  }

  /** The model's size for a dim of an input: a number when fixed, null when symbolic. */
  fixedDim(input: string, axis: number): number | null {
    const d = this.inputs.find((t) => t.name === input)?.shape[axis];
    return typeof d === 'number' && d > 0 ? d : null;
  }

  hasInput(name: string): boolean {
    return this.inputs.some((t) => t.name === name);
  }

  /** Runs once. Feeds must cover every model input; returns the expected outputs. */
  async run(feeds: Readonly<Record<string, OnnxTensor>>): Promise<Record<string, OnnxTensor>> {
    if (!this.session) throw new OnnxModelError(this.file, 'run: the session was released');
    const missing = this.inputs.filter((t) => !(t.name in feeds)).map((t) => t.name);
    if (missing.length)
      throw new OnnxModelError(this.file, `run: no feed for input(s) ${missing.map((n) => `'${n}'`).join(', ')}`);
    const got = await runOrt(
      this.file,
      this.session,
      feeds,
      this.expected.outputs.map((o) => o.name),
    );
    for (const spec of this.expected.outputs) {
      const dims = got[spec.name].dims;
      const bad =
        dims.length !== spec.shape.length || spec.shape.some((d, i) => typeof d === 'number' && d !== dims[i]);
      if (bad)
        throw new OnnxModelError(
          this.file,
          `run: output '${spec.name}' is [${dims.join(',')}], expected ${fmtShape(spec.shape)}`,
        );
    }
    return got;
  }

  /** Frees the native session. The model cannot run afterwards. */
  async release(): Promise<void> {
    const s = this.session;
    this.session = null;
    await s?.release();
  }
}

/** Every way `found` differs from `expected`, as readable sentences (empty when it matches). */
export function interfaceProblems(
  expected: ModelInterface,
  inputs: readonly FoundTensor[],
  outputs: readonly FoundTensor[],
): string[] {
  const problems: string[] = [];
  const list = (have: readonly FoundTensor[], kind: string) =>
    have.length ? have.map((t) => `'${t.name}' ${fmtShape(t.shape)}`).join(', ') : `no ${kind}s`;
  const check = (kind: 'input' | 'output', want: readonly TensorSpec[], have: readonly FoundTensor[]) => {
    let missing = 0;
    for (const w of want) {
      const h = have.find((t) => t.name === w.name);
      if (!h) {
        if (!w.optional) {
          problems.push(`expected ${kind} '${w.name}' ${fmtShape(w.shape)}, found ${list(have, kind)}`);
          missing++;
        }
        continue;
      }
      if (h.type !== w.type) problems.push(`${kind} '${w.name}' has element type ${h.type}, expected ${w.type}`);
      if (!shapeMatches(w.shape, h.shape))
        problems.push(`expected ${kind} '${w.name}' ${fmtShape(w.shape)}, found '${h.name}' ${fmtShape(h.shape)}`);
    }
    // An input the caller does not know cannot be fed (extra outputs are fine). When an expected
    // input is missing, the list above already shows what the model has.
    if (kind === 'input' && missing === 0) {
      for (const h of have)
        if (!want.some((w) => w.name === h.name))
          problems.push(`model input '${h.name}' ${fmtShape(h.shape)} is not one this code can feed`);
    }
  };
  check('input', expected.inputs, inputs);
  check('output', expected.outputs, outputs);
  return problems;
}

function shapeMatches(want: readonly Dim[], have: readonly Dim[]): boolean {
  if (have.length === 0) return true; // undeclared shape: checked at run time
  if (want.length !== have.length) return false;
  return want.every((w, i) => typeof w === 'string' || typeof have[i] !== 'number' || have[i] === w);
}

/** `[N,3,224,224]`; an undeclared shape prints as `[?]`. */
export function fmtShape(shape: readonly Dim[]): string {
  return shape.length ? `[${shape.join(',')}]` : '[?]';
}

function found(m: ort.InferenceSession.ValueMetadata): FoundTensor {
  if (!m.isTensor) return { name: m.name, type: 'non-tensor', shape: [] };
  // Unknown dims come back as symbols (or -1 in some exports): keep them symbolic.
  return { name: m.name, type: m.type, shape: m.shape.map((d) => (typeof d === 'number' && d < 0 ? '?' : d)) };
}

function toOnnxTensor(file: string, name: string, t: ort.Tensor, dims: number[]): OnnxTensor {
  switch (t.type) {
    case 'float32':
      return { type: 'float32', data: Float32Array.from(t.data as Float32Array), dims };
    case 'int64':
      return { type: 'int64', data: BigInt64Array.from(t.data as BigInt64Array), dims };
    case 'int32':
      return { type: 'int32', data: Int32Array.from(t.data as Int32Array), dims };
    default:
      throw new OnnxModelError(file, `output '${name}' has element type ${t.type}; expected float32, int64 or int32`);
  }
}

// ---------------------------------------------------------------------------------------------
// Sessions over graphs this engine emits (engine/onnx), and the execution providers.

/**
 * Providers the installed onnxruntime-node knows: `bundled` ones ship in its npm package; the
 * others (CUDA, TensorRT) are `present` only once its installer has fetched their libraries.
 */
export function installedProviders(): Array<{ name: string; bundled: boolean; present: boolean }> {
  const binDir = dirname(require.resolve('onnxruntime-node/package.json'));
  const libDir = join(binDir, 'bin', 'napi-v6', process.platform, process.arch);
  const lib = (name: string) =>
    [`libonnxruntime_providers_${name}.so`, `onnxruntime_providers_${name}.dll`].some((f) =>
      existsSync(join(libDir, f)),
    );
  return ort
    .listSupportedBackends()
    .map((b) => ({ name: b.name, bundled: b.bundled, present: b.bundled || lib(b.name) }));
}

export interface SessionOptions {
  /** In order of preference. */
  readonly providers: readonly ExecutionProvider[];
  /** External data held in memory instead of files beside the graph: `path` as the graph names it. */
  readonly externalData?: ReadonlyArray<{ path: string; data: Uint8Array }>;
  readonly intraOpNumThreads?: number;
  /**
   * ONNX Runtime's CPU memory arena. Off by default (SINGLORA_ORT_ARENA=1 turns it on): it kept each
   * session's largest activations, so an SD 1.5 512 px generation peaked at 6,719 MiB with it and
   * 5,120 MiB without, at the same speed (measured on the 2-core machine).
   */
  readonly cpuArena?: boolean;
  /**
   * ONNX Runtime's memory pattern (default on): from the second run on, one block planned for all
   * of a run's intermediates. The training step turns it off (`trainStepMemPattern`).
   */
  readonly memPattern?: boolean;
  /**
   * Session config entries, nested by area as onnxruntime's config keys are dotted
   * (`{ session: { disable_cpu_ep_fallback: '1' } }` is `session.disable_cpu_ep_fallback`).
   */
  readonly extra?: Readonly<Record<string, Readonly<Record<string, string>>>>;
}

/** A tensor fed to or returned by a session: float32, int32 or int64, row-major. */
export type SessionTensor = OnnxTensor;

/** A session over a graph file, with plain typed arrays in and out. */
export class OnnxSession {
  private constructor(
    readonly file: string,
    readonly providers: readonly ExecutionProvider[],
    readonly inputNames: readonly string[],
    readonly outputNames: readonly string[],
    private session: ort.InferenceSession | null,
  ) {}

  /**
   * A session over a graph file, or over graph bytes (`graph`, with `file` naming it in messages):
   * in-memory external data only works with graph bytes, since a graph file's external data is
   * checked on disk.
   */
  static async create(file: string, options: SessionOptions & { graph?: Uint8Array }): Promise<OnnxSession> {
    let session: ort.InferenceSession;
    try {
      const opts: ort.InferenceSession.SessionOptions = {
        executionProviders: [...options.providers],
        graphOptimizationLevel: 'all',
        enableCpuMemArena: options.cpuArena ?? process.env.SINGLORA_ORT_ARENA === '1',
        ...(options.memPattern === false ? { enableMemPattern: false } : {}),
        logSeverityLevel: 3, // errors only: node-placement warnings are expected with a GPU provider plus the CPU
        ...(options.intraOpNumThreads ? { intraOpNumThreads: options.intraOpNumThreads } : {}),
        ...(options.extra ? { extra: options.extra } : {}),
        ...(options.externalData
          ? { externalData: options.externalData.map((e) => ({ path: e.path, data: e.data })) }
          : {}),
      };
      session = options.graph
        ? await ort.InferenceSession.create(options.graph, opts)
        : await ort.InferenceSession.create(file, opts);
    } catch (err) {
      throw new OnnxModelError(
        file,
        `onnxruntime could not create a session on [${options.providers.join(', ')}]: ${((err as Error).message ?? String(err)).trim()}`,
      );
    }
    return new OnnxSession(file, options.providers, [...session.inputNames], [...session.outputNames], session);
  }

  /** Runs the graph; returns the requested outputs (default all), copied out of ONNX Runtime. */
  async run(
    feeds: Readonly<Record<string, SessionTensor>>,
    outputs: readonly string[] = this.outputNames,
  ): Promise<Record<string, SessionTensor>> {
    if (!this.session) throw new OnnxModelError(this.file, 'run: the session was released');
    return runOrt(this.file, this.session, feeds, outputs);
  }

  async release(): Promise<void> {
    const s = this.session;
    this.session = null;
    await s?.release();
  }
}

/** One run: typed arrays in, the named outputs copied out; every ONNX Runtime tensor freed. */
async function runOrt(
  file: string,
  session: ort.InferenceSession,
  feeds: Readonly<Record<string, OnnxTensor>>,
  outputs: readonly string[],
): Promise<Record<string, OnnxTensor>> {
  const ortFeeds: Record<string, ort.Tensor> = {};
  for (const [name, t] of Object.entries(feeds)) ortFeeds[name] = new ort.Tensor(t.type, t.data, [...t.dims]);
  let result: ort.InferenceSession.ReturnType;
  try {
    result = await session.run(ortFeeds, [...outputs]);
  } catch (err) {
    const shapes = Object.entries(feeds)
      .filter(([n]) => !n.startsWith('adapter.'))
      .map(([n, t]) => `'${n}' [${t.dims.join(',')}]`)
      .join(', ');
    throw new OnnxModelError(file, `run failed with ${shapes} (onnxruntime: ${(err as Error).message})`);
  }
  try {
    const out: Record<string, OnnxTensor> = {};
    for (const name of outputs) {
      const value = result[name] as ort.Tensor | undefined;
      if (!value) throw new OnnxModelError(file, `run: no output '${name}'`);
      out[name] = toOnnxTensor(file, name, value, value.dims.map(Number));
    }
    return out;
  } finally {
    for (const v of Object.values(ortFeeds)) v.dispose();
    for (const v of Object.values(result)) (v as ort.Tensor).dispose?.();
  }
}
