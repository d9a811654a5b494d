/**
 * PNG text chunks, written and read by hand (PNG spec, 3rd edition, §11.3.3 "Textual information").
 * sharp can read them (metadata `comments`) but cannot write them; generated images carry their
 * settings in a `parameters` chunk the way A1111 does, so this module inserts it.
 *
 * A chunk is: length (u32 BE, data only) | type (4 ASCII) | data | CRC-32 over type + data.
 *
 * | chunk | data layout                                                                  | text   |
 * | ----- | ---------------------------------------------------------------------------- | ------ |
 * | tEXt  | keyword 0 text                                                               | Latin-1 |
 * | zTXt  | keyword 0 method(0) zlib(text)                                               | Latin-1 |
 * | iTXt  | keyword 0 compressed(0/1) method(0) language 0 translatedKeyword 0 text      | UTF-8  |
 *
 * Keywords are 1–79 Latin-1 printable characters without leading, trailing or double spaces. The
 * writer uses tEXt when the text is plain ASCII and iTXt (UTF-8, uncompressed) otherwise, e.g. a
 * prompt with emoji or 'café'. tEXt could hold 'café' as Latin-1, but sharp 0.35 decodes tEXt bytes
 * as UTF-8 and turns é into U+FFFD; iTXt reads back correctly everywhere. Pure functions, no I/O.
 *
 * Placement: the spec allows text chunks anywhere between IHDR and IEND, but libvips (sharp 0.35,
 * libpng 1.6) reports only those before the first IDAT in its metadata `comments`; chunks after
 * the image data are invisible to it. The writer therefore inserts before the first IDAT by default,
 * as Pillow and A1111 do; the reader finds chunks anywhere.
 */
import { inflateSync } from 'node:zlib';

export const PNG_SIGNATURE = Uint8Array.of(0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a);

export interface PngTextEntry {
  readonly keyword: string;
  readonly text: string;
}

export interface PngTextChunk extends PngTextEntry {
  readonly type: 'tEXt' | 'zTXt' | 'iTXt';
  /** iTXt only: language tag and translated keyword (often empty). */
  readonly language?: string;
  readonly translatedKeyword?: string;
}

export class PngFormatError extends Error {
  constructor(message: string) {
    super(`PNG: ${message}`);
    this.name = 'PngFormatError';
  }
}

// ---- CRC-32 (ISO-HDLC, reflected polynomial 0xEDB88320), as in the PNG spec's annex D ----

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** CRC-32 of the concatenated byte arrays. */
export function crc32(...parts: Uint8Array[]): number {
  let c = 0xffffffff;
  for (const bytes of parts) for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

// ---- chunk walking ----

interface RawChunk {
  readonly type: string;
  /** Offset of the length field; the chunk spans [start, end). */
  readonly start: number;
  readonly end: number;
  readonly data: Uint8Array;
}

/** Splits a PNG into chunks, checking the signature, every length and every CRC. */
function chunks(png: Uint8Array): RawChunk[] {
  if (png.length < 8 || PNG_SIGNATURE.some((b, i) => png[i] !== b))
    throw new PngFormatError('no PNG signature (not a PNG file)');
  const view = new DataView(png.buffer, png.byteOffset, png.byteLength);
  const out: RawChunk[] = [];
  let pos = 8;
  while (pos < png.length) {
    if (pos + 12 > png.length) throw new PngFormatError(`truncated chunk header at byte ${pos} of ${png.length}`);
    const length = view.getUint32(pos);
    const typeBytes = png.subarray(pos + 4, pos + 8);
    const type = latin1Decode(typeBytes);
    const end = pos + 12 + length;
    if (end > png.length)
      throw new PngFormatError(
        `chunk '${type}' at byte ${pos} claims ${length} bytes, past the end of the ${png.length}-byte file (truncated?)`,
      );
    const data = png.subarray(pos + 8, pos + 8 + length);
    const stored = view.getUint32(pos + 8 + length);
    const actual = crc32(typeBytes, data);
    if (stored !== actual)
      throw new PngFormatError(
        `chunk '${type}' at byte ${pos}: CRC 0x${hex(stored)} does not match the computed 0x${hex(actual)} (corrupt file)`,
      );
    out.push({ type, start: pos, end, data });
    pos = end;
    if (type === 'IEND') break;
  }
  if (out.length === 0 || out[0].type !== 'IHDR') throw new PngFormatError('the first chunk is not IHDR');
  if (out[out.length - 1].type !== 'IEND') throw new PngFormatError('no IEND chunk (truncated file?)');
  return out;
}

function makeChunk(type: string, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  const typeBytes = latin1Encode(type);
  view.setUint32(0, data.length);
  out.set(typeBytes, 4);
  out.set(data, 8);
  view.setUint32(8 + data.length, crc32(typeBytes, data));
  return out;
}

// ---- text chunks ----

/** Reads every tEXt, zTXt and iTXt chunk, in file order. */
export function readPngText(png: Uint8Array): PngTextChunk[] {
  const out: PngTextChunk[] = [];
  for (const c of chunks(png)) {
    if (c.type === 'tEXt') {
      const z = nul(c.data, 0, c.type);
      out.push({
        type: 'tEXt',
        keyword: latin1Decode(c.data.subarray(0, z)),
        text: latin1Decode(c.data.subarray(z + 1)),
      });
    } else if (c.type === 'zTXt') {
      const z = nul(c.data, 0, c.type);
      if (c.data[z + 1] !== 0) throw new PngFormatError(`zTXt: compression method ${c.data[z + 1]} is not 0 (zlib)`);
      out.push({
        type: 'zTXt',
        keyword: latin1Decode(c.data.subarray(0, z)),
        text: latin1Decode(inflate(c.data.subarray(z + 2), 'zTXt')),
      });
    } else if (c.type === 'iTXt') {
      const z1 = nul(c.data, 0, c.type);
      const compressed = c.data[z1 + 1] === 1;
      const z2 = nul(c.data, z1 + 3, c.type);
      const z3 = nul(c.data, z2 + 1, c.type);
      const body = c.data.subarray(z3 + 1);
      out.push({
        type: 'iTXt',
        keyword: latin1Decode(c.data.subarray(0, z1)),
        language: latin1Decode(c.data.subarray(z1 + 3, z2)),
        translatedKeyword: utf8Decode(c.data.subarray(z2 + 1, z3)),
        text: utf8Decode(compressed ? inflate(body, 'iTXt') : body),
      });
    }
  }
  return out;
}

/** The text of the first chunk with this keyword (any of the three types), or undefined. */
export function getPngText(png: Uint8Array, keyword: string): string | undefined {
  return readPngText(png).find((c) => c.keyword === keyword)?.text;
}

export interface WritePngTextOptions {
  /** Drop existing text chunks with the same keywords first (default true), so a re-save does not duplicate them. */
  readonly replace?: boolean;
  /** Where the new chunks go (default 'beforeIDAT': the only place sharp's metadata sees them). */
  readonly at?: 'beforeIDAT' | 'beforeIEND';
}

/**
 * Returns a copy of `png` with one text chunk per entry inserted before the first IDAT (or before
 * IEND with `at: 'beforeIEND'`): tEXt for ASCII text, iTXt (UTF-8, uncompressed) otherwise.
 */
export function writePngText(
  png: Uint8Array,
  entries: readonly PngTextEntry[] | Readonly<Record<string, string>>,
  options: WritePngTextOptions = {},
): Uint8Array {
  const list: PngTextEntry[] = Array.isArray(entries)
    ? [...entries]
    : Object.entries(entries).map(([keyword, text]) => ({ keyword, text }));
  for (const e of list) checkKeyword(e.keyword);
  const replace = options.replace ?? true;
  const drop = new Set(replace ? list.map((e) => e.keyword) : []);
  const insertBefore = (options.at ?? 'beforeIDAT') === 'beforeIDAT' ? 'IDAT' : 'IEND';
  const all = chunks(png);
  if (!all.some((c) => c.type === 'IDAT')) throw new PngFormatError('no IDAT chunk (no image data)');
  const parts: Uint8Array[] = [png.subarray(0, 8)];
  let inserted = false;
  for (const c of all) {
    if (c.type === insertBefore && !inserted) {
      for (const e of list) parts.push(textChunk(e));
      inserted = true;
    }
    const isText = c.type === 'tEXt' || c.type === 'zTXt' || c.type === 'iTXt';
    if (isText && drop.has(keywordOf(c))) continue;
    parts.push(png.subarray(c.start, c.end));
  }
  return concat(parts);
}

function textChunk({ keyword, text }: PngTextEntry): Uint8Array {
  if (text.includes('\0'))
    throw new Error(`PNG text '${keyword}': the text contains a NUL character, which PNG text chunks cannot hold`);
  const key = latin1Encode(keyword);
  if (isAscii(text)) {
    return makeChunk('tEXt', concat([key, Uint8Array.of(0), latin1Encode(text)]));
  }
  // iTXt: keyword 0, compression flag 0, method 0, empty language 0, empty translated keyword 0, UTF-8 text.
  return makeChunk('iTXt', concat([key, Uint8Array.of(0, 0, 0, 0, 0), new TextEncoder().encode(text)]));
}

function checkKeyword(keyword: string): void {
  const bad = (why: string) => new Error(`PNG text keyword ${JSON.stringify(keyword)} is invalid: ${why}`);
  if (keyword.length < 1 || keyword.length > 79) throw bad(`it must be 1 to 79 characters, not ${keyword.length}`);
  for (const ch of keyword) {
    const c = ch.codePointAt(0)!;
    if (!((c >= 32 && c <= 126) || (c >= 161 && c <= 255)))
      throw bad(`character U+${c.toString(16).padStart(4, '0').toUpperCase()} is not printable Latin-1`);
  }
  if (keyword.startsWith(' ') || keyword.endsWith(' ') || keyword.includes('  '))
    throw bad('no leading, trailing or consecutive spaces allowed');
}

function keywordOf(c: RawChunk): string {
  const z = c.data.indexOf(0);
  return latin1Decode(c.data.subarray(0, z < 0 ? c.data.length : z));
}

function nul(data: Uint8Array, from: number, type: string): number {
  const i = data.indexOf(0, from);
  if (i < 0) throw new PngFormatError(`${type} chunk: missing NUL separator`);
  return i;
}

function inflate(data: Uint8Array, type: string): Uint8Array {
  try {
    return inflateSync(data);
  } catch (err) {
    throw new PngFormatError(`${type} chunk: cannot inflate the compressed text (${(err as Error).message})`);
  }
}

function isAscii(s: string): boolean {
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) > 127) return false;
  return true;
}

function latin1Encode(s: string): Uint8Array {
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

function latin1Decode(b: Uint8Array): string {
  let s = '';
  for (let i = 0; i < b.length; i++) s += String.fromCharCode(b[i]);
  return s;
}

function utf8Decode(b: Uint8Array): string {
  return new TextDecoder('utf-8', { fatal: false }).decode(b);
}

/** The bytes of `parts`, one after another, in a new array. */
function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let pos = 0;
  for (const p of parts) {
    out.set(p, pos);
    pos += p.length;
  }
  return out;
}

function hex(n: number): string {
  return n.toString(16).padStart(8, '0');
}
