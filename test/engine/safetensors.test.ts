/**
 * safetensors reader and writer: round trips, the dtypes SD checkpoints use (F16, BF16, I64), and
 * malformed files, each of which must fail with an error naming the file (and the tensor).
 * Format: https://github.com/huggingface/safetensors (8-byte LE header length, JSON header, data).
 */
import { mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  float32ToFloat16,
  readAllFloat32,
  SafetensorsFile,
  writeSafetensors,
} from '../../src-main/engine/io/safetensors.ts';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'singlora-safetensors-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Writes a file by hand: header length, `header` (an object, or raw text), then `data`. */
async function rawFile(
  name: string,
  header: object | string,
  data: Uint8Array = new Uint8Array(0),
  lengthField?: bigint,
): Promise<string> {
  const text = typeof header === 'string' ? header : JSON.stringify(header);
  const headerBytes = Buffer.from(text, 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(lengthField ?? BigInt(headerBytes.length));
  const path = join(dir, name);
  await writeFile(path, Buffer.concat([len, headerBytes, data]));
  return path;
}

/** Parses a file's header independently of the reader under test. */
async function parseHeader(path: string): Promise<{
  length: number;
  text: string;
  json: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
}> {
  const bytes = await readFile(path);
  const length = Number(bytes.readBigUInt64LE(0));
  const text = bytes.subarray(8, 8 + length).toString('utf8');
  return { length, text, json: JSON.parse(text) };
}

/** IEEE half -> number, written out here so the test does not reuse the reader's table. */
function halfToNumber(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

const bytesOf = (a: ArrayBufferView) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

describe('writer round trips', () => {
  it('writes F32, I32 and U8 exactly, with metadata, sorted names, contiguous data and an 8-byte-aligned header', async () => {
    const path = join(dir, 'roundtrip.safetensors');
    const f32 = new Float32Array([0, -0, 1.5, -3.25e-8, 3.4028234663852886e38, Number.MIN_VALUE, Infinity, NaN]);
    const i32 = new Int32Array([-2147483648, -1, 0, 7, 2147483647, 12]);
    const u8 = new Uint8Array([0, 1, 127, 128, 255]);
    await writeSafetensors(
      path,
      {
        'z.float': { shape: [2, 4], data: f32 },
        'a.int': { shape: [3, 2], data: i32 },
        'm.bytes': { shape: [5], data: u8 },
      },
      { prompt: 'a photo of sks dog', steps: '100' },
    );

    const { length, text, json } = await parseHeader(path);
    expect(length % 8).toBe(0);
    expect(text).toBe(text.trimEnd() + ' '.repeat(text.length - text.trimEnd().length)); // padding is spaces
    const names = Object.keys(json).filter((k) => k !== '__metadata__');
    expect(names).toEqual(['a.int', 'm.bytes', 'z.float']);
    let end = 0;
    for (const name of names) {
      expect(json[name].data_offsets[0], `${name} starts where the previous one ended`).toBe(end);
      end = json[name].data_offsets[1];
    }
    expect((await readFile(path)).length).toBe(8 + length + end);

    const f = await SafetensorsFile.open(path);
    try {
      expect(f.metadata).toEqual({ prompt: 'a photo of sks dog', steps: '100' });
      expect(f.info('z.float')).toMatchObject({ dtype: 'F32', shape: [2, 4] });
      expect(bytesOf(await f.readFloat32('z.float')).equals(bytesOf(f32))).toBe(true); // bit-exact, -0 and NaN included
      expect(f.info('a.int').dtype).toBe('I32');
      expect([...(await f.readInt32('a.int'))]).toEqual([...i32]);
      expect(f.info('m.bytes').dtype).toBe('U8');
      expect([...(await f.readInt32('m.bytes'))]).toEqual([...u8]);
      expect([...(await f.readFloat32('m.bytes'))]).toEqual([...u8]);
    } finally {
      await f.close();
    }
  });

  it('converts float32 to F16 with round-to-nearest-even', async () => {
    const path = join(dir, 'f16.safetensors');
    const values = new Float32Array([
      1,
      -2,
      65504,
      2 ** -24,
      1 / 3,
      0.1,
      1 + 2 ** -11,
      1 + 3 * 2 ** -11,
      70000,
      -1e-9,
      Infinity,
      NaN,
    ]);
    await writeSafetensors(path, { x: { dtype: 'F16', shape: [values.length], data: values } });
    const { json } = await parseHeader(path);
    expect(json.x.dtype).toBe('F16');
    expect(json.x.data_offsets[1] - json.x.data_offsets[0]).toBe(values.length * 2);

    const back = (await readAllFloat32(path)).tensors.get('x')!.data;
    const expected = [
      1,
      -2,
      65504,
      2 ** -24,
      halfToNumber(0x3555),
      halfToNumber(0x2e66),
      1,
      1 + 2 ** -9,
      Infinity,
      -0,
      Infinity,
      NaN,
    ];
    // 1 + 2^-11 is a tie between 1 and 1 + 2^-10: even mantissa wins (1). 1 + 3*2^-11 rounds up to 1 + 2^-9.
    expect([...back]).toEqual(expected);
    expect(float32ToFloat16(1 / 3)).toBe(0x3555);
  });

  it('rejects a value count that does not fit the shape, naming the tensor', async () => {
    await expect(
      writeSafetensors(join(dir, 'bad-count.safetensors'), { w: { shape: [2, 2], data: new Float32Array(3) } }),
    ).rejects.toThrow(/'w' has 3 values but shape \[2,2\] needs 4/);
  });
});

describe('reading the dtypes of real checkpoints', () => {
  it('reads F16, including subnormals, infinities and NaN', async () => {
    const halves = new Uint16Array([0x3c00, 0xc000, 0x7bff, 0x0001, 0x03ff, 0x8000, 0x7c00, 0xfc00, 0x7e00, 0x3555]);
    const path = await rawFile(
      'read-f16.safetensors',
      { h: { dtype: 'F16', shape: [10], data_offsets: [0, 20] } },
      bytesOf(halves),
    );
    const f = await SafetensorsFile.open(path);
    const got = await f.readFloat32('h');
    await f.close();
    expect([...got]).toEqual([
      1,
      -2,
      65504,
      2 ** -24,
      1023 * 2 ** -24,
      -0,
      Infinity,
      -Infinity,
      NaN,
      Math.fround(halfToNumber(0x3555)),
    ]);
  });

  it('reads BF16 as the top half of float32', async () => {
    const bf = new Uint16Array([0x3f80, 0xc040, 0x4049, 0x0000, 0xff80, 0x7fc0]);
    const path = await rawFile(
      'read-bf16.safetensors',
      { b: { dtype: 'BF16', shape: [2, 3], data_offsets: [0, 12] } },
      bytesOf(bf),
    );
    const f = await SafetensorsFile.open(path);
    const got = await f.readFloat32('b');
    await f.close();
    expect([...got]).toEqual([1, -3, 3.140625, 0, -Infinity, NaN]);
  });

  it('reads I64 as int32 and float32, and refuses values outside int32', async () => {
    const ok = new BigInt64Array([-5n, 0n, 2147483647n, -2147483648n]);
    const big = new BigInt64Array([1n, 2n ** 40n]);
    const path = await rawFile(
      'read-i64.safetensors',
      {
        ids: { dtype: 'I64', shape: [1, 4], data_offsets: [0, 32] },
        big: { dtype: 'I64', shape: [2], data_offsets: [32, 48] },
      },
      Buffer.concat([bytesOf(ok), bytesOf(big)]),
    );
    const f = await SafetensorsFile.open(path);
    try {
      expect([...(await f.readInt32('ids'))]).toEqual([-5, 0, 2147483647, -2147483648]);
      expect([...(await f.readFloat32('ids'))]).toEqual([-5, 0, 2147483648, -2147483648]); // 2^31 - 1 rounds to 2^31 in float32
      await expect(f.readInt32('big')).rejects.toThrow(
        /read-i64\.safetensors: tensor 'big': I64 value 1099511627776 does not fit in int32/,
      );
    } finally {
      await f.close();
    }
  });

  it('reads F64 rounded to float32', async () => {
    const d = new Float64Array([0.1, -2.5]);
    const path = await rawFile(
      'read-f64.safetensors',
      { d: { dtype: 'F64', shape: [2], data_offsets: [0, 16] } },
      bytesOf(d),
    );
    const f = await SafetensorsFile.open(path);
    const got = await f.readFloat32('d');
    await f.close();
    expect([...got]).toEqual([Math.fround(0.1), -2.5]);
  });
});

describe('malformed files fail with the file and tensor named', () => {
  const entry = (dtype: string, shape: number[], begin: number, end: number) => ({
    dtype,
    shape,
    data_offsets: [begin, end],
  });

  it('truncated data section', async () => {
    const path = join(dir, 'truncated.safetensors');
    await writeSafetensors(path, {
      a: { shape: [4], data: new Float32Array(4) },
      b: { shape: [8], data: new Float32Array(8) },
    });
    const { length } = await parseHeader(path);
    await truncate(path, 8 + length + 16 + 20); // b is cut short
    await expect(SafetensorsFile.open(path)).rejects.toThrow(
      /truncated\.safetensors: tensor 'b': bytes 16\.\.48 lie outside the 36-byte data section \(file truncated\?\)/,
    );
  });

  it('header length beyond the end of the file', async () => {
    const path = await rawFile('long-header.safetensors', { a: entry('F32', [1], 0, 4) }, new Uint8Array(4), 5000n);
    await expect(SafetensorsFile.open(path)).rejects.toThrow(
      /long-header\.safetensors: header length 5000 runs past the end of the \d+-byte file/,
    );
  });

  it('shape x dtype that does not match the byte range', async () => {
    const path = await rawFile('size-mismatch.safetensors', { w: entry('F16', [3, 3], 0, 36) }, new Uint8Array(36));
    await expect(SafetensorsFile.open(path)).rejects.toThrow(
      /size-mismatch\.safetensors: tensor 'w': shape \[3,3\] x F16 is 18 bytes but data_offsets cover 36/,
    );
  });

  it('overlapping byte ranges', async () => {
    const path = await rawFile(
      'overlap.safetensors',
      { a: entry('F32', [4], 0, 16), b: entry('F32', [2], 8, 16) },
      new Uint8Array(16),
    );
    await expect(SafetensorsFile.open(path)).rejects.toThrow(/overlap\.safetensors: tensors '.' and '.' overlap/);
  });

  it('unknown dtype', async () => {
    const path = await rawFile('dtype.safetensors', { q: entry('F8_E4M3', [4], 0, 4) }, new Uint8Array(4));
    await expect(SafetensorsFile.open(path)).rejects.toThrow(/dtype\.safetensors: tensor 'q': unknown dtype "F8_E4M3"/);
  });

  it('a header that is not JSON', async () => {
    const path = await rawFile('not-json.safetensors', '{"a": {"dtype": "F32", ', new Uint8Array(4));
    await expect(SafetensorsFile.open(path)).rejects.toThrow(/not-json\.safetensors: header is not valid JSON/);
  });

  it('an absurd header length', async () => {
    const path = await rawFile('absurd.safetensors', '{}', new Uint8Array(0), 2n ** 62n);
    await expect(SafetensorsFile.open(path)).rejects.toThrow(
      /absurd\.safetensors: header length 4611686018427387904 is larger than the \d+-byte limit/,
    );
  });

  it('a file shorter than the length field', async () => {
    const path = join(dir, 'tiny.safetensors');
    await writeFile(path, Buffer.from([1, 2, 3]));
    await expect(SafetensorsFile.open(path)).rejects.toThrow(/tiny\.safetensors: file is 3 bytes/);
  });

  it('a pickle or zip named .safetensors', async () => {
    const pickle = join(dir, 'pickle.safetensors');
    await writeFile(pickle, Buffer.from('\x80\x02}q\x00(X\x06\x00\x00\x00weightq\x01.', 'latin1'));
    await expect(SafetensorsFile.open(pickle)).rejects.toThrow(
      /pickle\.safetensors: this is a PyTorch pickle\/zip checkpoint.*can run code/,
    );
    const zip = join(dir, 'zip.safetensors');
    await writeFile(zip, Buffer.concat([Buffer.from('PK\x03\x04\x00\x00\x08\x00', 'latin1'), Buffer.alloc(64)]));
    await expect(SafetensorsFile.open(zip)).rejects.toThrow(
      /zip\.safetensors: this is a PyTorch pickle\/zip checkpoint/,
    );
  });

  it('names a tensor that is not in the file', async () => {
    const path = await rawFile('lookup.safetensors', { a: entry('F32', [1], 0, 4) }, new Uint8Array(4));
    const f = await SafetensorsFile.open(path);
    expect(() => f.info('b')).toThrow(/lookup\.safetensors: no tensor named 'b'/);
    await f.close();
  });
});

describe('header lengths that look like pickle magic', () => {
  it('opens a valid file whose 8-byte length starts with 0x80 0x02 (a 640-byte header)', async () => {
    const path = join(await mkdtemp(join(tmpdir(), 'st-magic-')), 'x.safetensors');
    // Grow the metadata until the padded header is exactly 640 (0x280) bytes.
    for (let pad = 0; pad < 700; pad++) {
      await writeSafetensors(path, { t: { shape: [2], data: Float32Array.of(1, 2) } }, { note: 'x'.repeat(pad) });
      if ((await readFile(path)).readBigUInt64LE(0) === 640n) break;
    }
    const bytes = await readFile(path);
    expect([bytes[0], bytes[1]]).toEqual([0x80, 0x02]);
    const f = await SafetensorsFile.open(path);
    expect([...(await f.readFloat32('t'))]).toEqual([1, 2]);
    await f.close();
  });
});
