/**
 * safetensors reader and writer (https://github.com/huggingface/safetensors, format section).
 *
 * Layout: 8-byte little-endian u64 N, then N bytes of JSON header
 * `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}`,
 * then the data buffer; offsets are relative to the start of the data buffer.
 *
 * The reader keeps a file handle and reads one tensor at a time, so a multi-GB checkpoint never
 * sits in one Buffer. Every header is validated before any tensor is read, and every error names
 * the file and the tensor.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { atomicWrite, type AtomicOptions } from './atomic.ts';

export const DTYPE_BYTES = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
} as const;
export type SafetensorsDtype = keyof typeof DTYPE_BYTES;

/** dtypes this project converts to float32 (and I32/I64/U8 also to int32). */
const READABLE = new Set<SafetensorsDtype>(['F32', 'F16', 'BF16', 'I32', 'I64', 'U8', 'F64']);

/** Largest header accepted (the format's own reference implementation uses 100 MB). */
const MAX_HEADER_BYTES = 100 * 1024 * 1024;

export interface TensorInfo {
  readonly name: string;
  readonly dtype: SafetensorsDtype;
  readonly shape: readonly number[];
  /** Absolute byte range in the file. */
  readonly begin: number;
  readonly end: number;
}

export class SafetensorsError extends Error {
  constructor(
    readonly file: string,
    message: string,
  ) {
    super(`${file}: ${message}`);
    this.name = 'SafetensorsError';
  }
}

export class SafetensorsFile {
  private constructor(
    readonly path: string,
    private readonly handle: FileHandle,
    readonly tensors: ReadonlyMap<string, TensorInfo>,
    readonly metadata: Readonly<Record<string, string>>,
    readonly headerBytes: number,
  ) {}

  /** Opens and validates the header. Close with `close()`. */
  static async open(path: string): Promise<SafetensorsFile> {
    let handle: FileHandle;
    try {
      handle = await open(path, 'r');
    } catch (err) {
      throw new SafetensorsError(path, `cannot open: ${(err as Error).message}`);
    }
    try {
      const { size } = await handle.stat();
      const { tensors, metadata, headerBytes } = await readHeader(path, handle, size);
      return new SafetensorsFile(path, handle, tensors, metadata, headerBytes);
    } catch (err) {
      await handle.close();
      throw err;
    }
  }

  keys(): string[] {
    return [...this.tensors.keys()];
  }

  info(name: string): TensorInfo {
    const info = this.tensors.get(name);
    if (!info) throw new SafetensorsError(this.path, `no tensor named '${name}'`);
    return info;
  }

  /** Reads one tensor's raw little-endian bytes. */
  async readBytes(name: string): Promise<Buffer> {
    const info = this.info(name);
    const length = info.end - info.begin;
    const buf = Buffer.allocUnsafe(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.handle.read(buf, done, length - done, info.begin + done);
      if (bytesRead === 0)
        throw new SafetensorsError(this.path, `tensor '${name}': file ended after ${done} of ${length} bytes`);
      done += bytesRead;
    }
    return buf;
  }

  /** Reads one tensor converted to float32 (F32, F16, BF16, F64, I32, I64, U8). */
  async readFloat32(name: string): Promise<Float32Array> {
    const info = this.info(name);
    return toFloat32(this.path, info, await this.readBytes(name));
  }

  /** Reads an integer tensor (I32, I64, U8) as int32; I64 values must fit in int32. */
  async readInt32(name: string): Promise<Int32Array> {
    const info = this.info(name);
    const bytes = await this.readBytes(name);
    const n = numel(info.shape);
    const out = new Int32Array(n);
    switch (info.dtype) {
      case 'I32':
        return new Int32Array(copyAligned(bytes).buffer, 0, n);
      case 'U8':
        for (let i = 0; i < n; i++) out[i] = bytes[i];
        return out;
      case 'I64':
        for (let i = 0; i < n; i++) {
          const v = bytes.readBigInt64LE(i * 8);
          if (v > 2147483647n || v < -2147483648n)
            throw new SafetensorsError(this.path, `tensor '${name}': I64 value ${v} does not fit in int32`);
          out[i] = Number(v);
        }
        return out;
      default:
        throw new SafetensorsError(
          this.path,
          `tensor '${name}': expected an integer dtype (I32, I64, U8), found ${info.dtype}`,
        );
    }
  }

  async close(): Promise<void> {
    await this.handle.close();
  }
}

async function readHeader(path: string, handle: FileHandle, size: number) {
  if (size < 8)
    throw new SafetensorsError(path, `file is ${size} bytes; a safetensors file starts with an 8-byte header length`);
  const head = Buffer.alloc(9);
  await handle.read(head, 0, 9, 0);
  const lenBuf = head.subarray(0, 8);
  // A safetensors header is JSON, so byte 8 is '{'. A pickle starts with 0x80 (protocol 2+) and
  // a torch zip with 'PK'; a length prefix may begin with those bytes too, hence the '{' check.
  const looksPickled = (head[0] === 0x80 || (head[0] === 0x50 && head[1] === 0x4b)) && head[8] !== 0x7b;
  if (looksPickled) {
    throw new SafetensorsError(
      path,
      'this is a PyTorch pickle/zip checkpoint, not safetensors; pickles can run code and are never loaded. Convert it to .safetensors with a trusted tool',
    );
  }
  const headerLen = lenBuf.readBigUInt64LE(0);
  if (headerLen > BigInt(MAX_HEADER_BYTES))
    throw new SafetensorsError(
      path,
      `header length ${headerLen} is larger than the ${MAX_HEADER_BYTES}-byte limit: not a safetensors file, or corrupt`,
    );
  const n = Number(headerLen);
  if (8 + n > size)
    throw new SafetensorsError(path, `header length ${n} runs past the end of the ${size}-byte file (truncated?)`);
  const headerBuf = Buffer.alloc(n);
  await handle.read(headerBuf, 0, n, 8);
  let header: unknown;
  try {
    header = JSON.parse(headerBuf.toString('utf8'));
  } catch (err) {
    throw new SafetensorsError(path, `header is not valid JSON (${(err as Error).message})`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header))
    throw new SafetensorsError(path, 'header must be a JSON object');

  const dataStart = 8 + n;
  const dataSize = size - dataStart;
  const tensors = new Map<string, TensorInfo>();
  let metadata: Record<string, string> = {};
  for (const [name, value] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') {
      metadata = validateMetadata(path, value);
      continue;
    }
    tensors.set(name, tensorEntry(path, name, value, dataStart, dataSize));
  }
  const sorted = [...tensors.values()].sort((a, b) => a.begin - b.begin || a.end - b.end);
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i].begin < sorted[i - 1].end) {
      throw new SafetensorsError(
        path,
        `tensors '${sorted[i - 1].name}' and '${sorted[i].name}' overlap in the data section`,
      );
    }
  }
  return { tensors, metadata, headerBytes: n };
}

/** One tensor's header entry, checked: a known dtype, a shape, and data offsets that fit it and the file. */
function tensorEntry(path: string, name: string, value: unknown, dataStart: number, dataSize: number): TensorInfo {
  const v = value as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
  if (typeof v !== 'object' || v === null)
    throw new SafetensorsError(path, `tensor '${name}': header entry must be an object`);
  if (typeof v.dtype !== 'string' || !(v.dtype in DTYPE_BYTES)) {
    throw new SafetensorsError(
      path,
      `tensor '${name}': unknown dtype ${JSON.stringify(v.dtype)} (expected one of ${Object.keys(DTYPE_BYTES).join(', ')})`,
    );
  }
  const dtype = v.dtype as SafetensorsDtype;
  if (!Array.isArray(v.shape) || !v.shape.every((d) => Number.isInteger(d) && d >= 0)) {
    throw new SafetensorsError(
      path,
      `tensor '${name}': shape ${JSON.stringify(v.shape)} must be a list of non-negative integers`,
    );
  }
  const offs = v.data_offsets;
  if (
    !Array.isArray(offs) ||
    offs.length !== 2 ||
    !offs.every((o) => Number.isInteger(o) && o >= 0) ||
    offs[1] < offs[0]
  ) {
    throw new SafetensorsError(
      path,
      `tensor '${name}': data_offsets ${JSON.stringify(offs)} must be [begin, end] with 0 <= begin <= end`,
    );
  }
  const shape = v.shape as number[];
  const expected = numel(shape) * DTYPE_BYTES[dtype];
  if (offs[1] - offs[0] !== expected) {
    throw new SafetensorsError(
      path,
      `tensor '${name}': shape [${shape}] x ${dtype} is ${expected} bytes but data_offsets cover ${offs[1] - offs[0]}`,
    );
  }
  if (offs[1] > dataSize) {
    throw new SafetensorsError(
      path,
      `tensor '${name}': bytes ${offs[0]}..${offs[1]} lie outside the ${dataSize}-byte data section (file truncated?)`,
    );
  }
  return { name, dtype, shape, begin: dataStart + offs[0], end: dataStart + offs[1] };
}

function validateMetadata(path: string, value: unknown): Record<string, string> {
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    throw new SafetensorsError(path, '__metadata__ must be an object of strings');
  for (const [k, v] of Object.entries(value)) {
    if (typeof v !== 'string')
      throw new SafetensorsError(path, `__metadata__.${k} must be a string, found ${typeof v}`);
  }
  return value as Record<string, string>;
}

export function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function copyAligned(bytes: Buffer): Uint8Array {
  // Buffers from allocUnsafe may sit at any offset in a shared pool; typed views need alignment.
  const out = new Uint8Array(bytes.length);
  out.set(bytes);
  return out;
}

const f16Table = (() => {
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const s = h & 0x8000 ? -1 : 1;
    const e = (h >> 10) & 0x1f;
    const m = h & 0x3ff;
    if (e === 0) t[h] = s * m * 2 ** -24;
    else if (e === 31) t[h] = m ? NaN : s * Infinity;
    else t[h] = s * (1 + m / 1024) * 2 ** (e - 15);
  }
  return t;
})();

function toFloat32(path: string, info: TensorInfo, bytes: Buffer): Float32Array {
  const n = numel(info.shape);
  const aligned = copyAligned(bytes);
  switch (info.dtype) {
    case 'F32':
      return new Float32Array(aligned.buffer, 0, n);
    case 'F16': {
      const src = new Uint16Array(aligned.buffer, 0, n);
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = f16Table[src[i]];
      return out;
    }
    case 'BF16': {
      const src = new Uint16Array(aligned.buffer, 0, n);
      const u32 = new Uint32Array(n);
      for (let i = 0; i < n; i++) u32[i] = src[i] << 16;
      return new Float32Array(u32.buffer);
    }
    case 'F64':
      return Float32Array.from(new Float64Array(aligned.buffer, 0, n));
    case 'I32':
      return Float32Array.from(new Int32Array(aligned.buffer, 0, n));
    case 'I64':
      return Float32Array.from(new BigInt64Array(aligned.buffer, 0, n), (v) => Number(v));
    case 'U8':
      return Float32Array.from(aligned.subarray(0, n));
    default:
      if (!READABLE.has(info.dtype)) {
        throw new SafetensorsError(
          path,
          `tensor '${info.name}': dtype ${info.dtype} cannot be converted to float32 (supported: ${[...READABLE].join(', ')})`,
        );
      }
      throw new SafetensorsError(path, `tensor '${info.name}': unhandled dtype ${info.dtype}`);
  }
}

/** Reads a whole (small) safetensors file as float32 arrays. For fixtures and adapters. */
export async function readAllFloat32(
  path: string,
): Promise<{ tensors: Map<string, { shape: number[]; data: Float32Array }>; metadata: Record<string, string> }> {
  const f = await SafetensorsFile.open(path);
  try {
    const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
    for (const name of f.keys()) tensors.set(name, { shape: [...f.info(name).shape], data: await f.readFloat32(name) });
    return { tensors, metadata: { ...f.metadata } };
  } finally {
    await f.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Writer

export interface TensorToWrite {
  dtype?: 'F32' | 'F16' | 'I32' | 'U8';
  shape: readonly number[];
  /** The values; or give `read` to produce them only when written (streams large exports). */
  data?: Float32Array | Int32Array | Uint8Array;
  read?: () => Promise<Float32Array | Int32Array | Uint8Array>;
}

/**
 * Writes a safetensors file atomically (io/atomic.ts: temp file in the same folder, fsync, rename;
 * `exclusive` for a file that must be new).
 * Tensors are sorted by name and packed contiguously; the header is padded with spaces to a
 * multiple of 8, as the reference implementation does.
 */
export async function writeSafetensors(
  path: string,
  tensors: ReadonlyMap<string, TensorToWrite> | Record<string, TensorToWrite>,
  metadata: Record<string, string> = {},
  o: AtomicOptions = {},
): Promise<void> {
  const entries = (tensors instanceof Map ? [...tensors.entries()] : Object.entries(tensors)).sort(([a], [b]) =>
    a < b ? -1 : a > b ? 1 : 0,
  );
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length) header.__metadata__ = metadata;
  let offset = 0;
  for (const [name, t] of entries) {
    if (!t.data && !t.read) throw new Error(`writeSafetensors ${path}: tensor '${name}' has neither data nor read()`);
    const dtype: NonNullable<TensorToWrite['dtype']> = t.dtype ?? (t.data ? defaultDtype(t.data) : 'F32');
    const bytes = numel(t.shape) * DTYPE_BYTES[dtype];
    if (t.data && t.data.length !== numel(t.shape)) {
      throw new Error(
        `writeSafetensors ${path}: tensor '${name}' has ${t.data.length} values but shape [${t.shape}] needs ${numel(t.shape)}`,
      );
    }
    header[name] = { dtype, shape: [...t.shape], data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = JSON.stringify(header);
  const pad = (8 - (Buffer.byteLength(json) % 8)) % 8;
  json += ' '.repeat(pad);
  const headerBuf = Buffer.from(json, 'utf8');
  const lenBuf = Buffer.alloc(8);
  lenBuf.writeBigUInt64LE(BigInt(headerBuf.length));

  await atomicWrite(
    path,
    async (fh) => {
      await fh.write(lenBuf);
      await fh.write(headerBuf);
      for (const [name, t] of entries) {
        const data = t.data ?? (await t.read!());
        if (data.length !== numel(t.shape)) {
          throw new Error(
            `writeSafetensors ${path}: tensor '${name}' produced ${data.length} values but shape [${t.shape}] needs ${numel(t.shape)}`,
          );
        }
        await fh.write(encode(data, t.dtype ?? (t.data ? defaultDtype(t.data) : 'F32')));
      }
    },
    o,
  );
}

function defaultDtype(data: Float32Array | Int32Array | Uint8Array): 'F32' | 'I32' | 'U8' {
  return data instanceof Float32Array ? 'F32' : data instanceof Int32Array ? 'I32' : 'U8';
}

type TypedData = Float32Array | Int32Array | Uint8Array;

function encode(data: TypedData, dtype: NonNullable<TensorToWrite['dtype']>): Uint8Array {
  switch (dtype) {
    case 'F32':
      return new Uint8Array((data instanceof Float32Array ? data : Float32Array.from(data)).slice().buffer);
    case 'I32':
      return new Uint8Array((data instanceof Int32Array ? data : Int32Array.from(data)).slice().buffer);
    case 'U8':
      return data instanceof Uint8Array ? data : Uint8Array.from(data);
    case 'F16': {
      const out = new Uint16Array(data.length);
      for (let i = 0; i < data.length; i++) out[i] = float32ToFloat16(data[i]);
      return new Uint8Array(out.buffer);
    }
  }
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
/** Round-to-nearest-even float32 -> IEEE half. */
export function float32ToFloat16(v: number): number {
  f32[0] = v;
  const x = u32[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >> shift;
    const rem = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && half & 1)) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && half & 1)) half++;
  return sign | half;
}
