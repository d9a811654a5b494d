/**
 * A folder as one download: an uncompressed POSIX ustar archive, streamed (nothing is written to
 * disk, so a 4 GB merged model does not need 4 GB more). Only regular files and folders are
 * packed; a link or anything else in the folder is refused, not followed.
 *
 *   archive = for each file: 512-byte header, its bytes, zero padding to 512; then two zero blocks
 *
 *   | header field | offset | size | value                                        |
 *   | ------------ | ------ | ---- | -------------------------------------------- |
 *   | name         | 0      | 100  | path inside the archive (tail, see prefix)   |
 *   | mode         | 100    | 8    | octal, 0644 for files, 0755 for folders      |
 *   | uid, gid     | 108    | 8+8  | 0                                            |
 *   | size         | 124    | 12   | octal bytes (11 digits: under 8 GiB)         |
 *   | mtime        | 136    | 12   | octal seconds                                |
 *   | chksum       | 148    | 8    | sum of the header bytes, this field as spaces |
 *   | typeflag     | 156    | 1    | '0' file, '5' folder                         |
 *   | magic, version | 257  | 6+2  | "ustar\0", "00"                              |
 *   | prefix       | 345    | 155  | head of a path longer than 100               |
 */
import { createReadStream } from 'node:fs';
import { lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Writable } from 'node:stream';
import { ApiError } from '../api/contract.ts';

const BLOCK = 512;
const MAX_SIZE = 8 ** 11 - 1;

export interface TarEntry {
  /** Path inside the archive, '/'-separated. */
  name: string;
  /** The file on disk; null for a folder. */
  file: string | null;
  size: number;
  mtimeS: number;
}

/**
 * Every folder and file under `dir`, as `<root>/...`, sorted. A link or special file inside is
 * refused (conflict, named by its path in the archive, never by its path on the server).
 */
export async function tarEntries(dir: string, root: string): Promise<TarEntry[]> {
  const out: TarEntry[] = [];
  const walk = async (abs: string, name: string) => {
    const s = await lstat(abs);
    if (s.isDirectory()) {
      out.push({ name: `${name}/`, file: null, size: 0, mtimeS: Math.floor(s.mtimeMs / 1000) });
      for (const child of (await readdir(abs)).sort()) await walk(join(abs, child), `${name}/${child}`);
    } else if (s.isFile()) {
      if (s.size > MAX_SIZE)
        throw new ApiError(
          'too_large',
          `${name} is ${s.size} bytes; a tar entry holds under 8 GiB: download its files`,
        );
      out.push({ name, file: abs, size: s.size, mtimeS: Math.floor(s.mtimeMs / 1000) });
    } else {
      throw new ApiError(
        'conflict',
        `${name} is ${s.isSymbolicLink() ? 'a symbolic link' : 'not a regular file or folder'}; only files and folders are packed (remove it, then download ${root}.tar again)`,
      );
    }
  };
  await walk(dir, root);
  return out;
}

/** The archive's exact length, for Content-Length. */
export function tarSize(entries: readonly TarEntry[]): number {
  return entries.reduce((n, e) => n + BLOCK + Math.ceil(e.size / BLOCK) * BLOCK, 0) + 2 * BLOCK;
}

function octal(value: number, width: number): string {
  return `${value.toString(8).padStart(width - 1, '0')}\0`;
}

/** One ustar header block. */
export function tarHeader(e: TarEntry): Buffer {
  const h = Buffer.alloc(BLOCK);
  let name = e.name;
  let prefix = '';
  if (Buffer.byteLength(name) > 100) {
    // Split at a '/' so that the tail fits in name (100 bytes) and the head in prefix (155).
    const at = [...name.matchAll(/\//g)]
      .map((m) => m.index!)
      .find((i) => Buffer.byteLength(name.slice(i + 1)) <= 100 && Buffer.byteLength(name.slice(0, i)) <= 155);
    if (at === undefined) throw new Error(`tar: the path ${e.name} is too long for a ustar header`);
    prefix = name.slice(0, at);
    name = name.slice(at + 1);
  }
  h.write(name, 0, 100, 'utf8');
  h.write(octal(e.file ? 0o644 : 0o755, 8), 100, 'ascii');
  h.write(octal(0, 8), 108, 'ascii');
  h.write(octal(0, 8), 116, 'ascii');
  h.write(octal(e.size, 12), 124, 'ascii');
  h.write(octal(e.mtimeS, 12), 136, 'ascii');
  h.write(' '.repeat(8), 148, 'ascii');
  h.write(e.file ? '0' : '5', 156, 'ascii');
  h.write('ustar\0', 257, 'ascii');
  h.write('00', 263, 'ascii');
  h.write(prefix, 345, 155, 'utf8');
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'ascii');
  return h;
}

/** Writes the archive of `entries` to `out` (backpressure respected); resolves when all is written. */
export async function writeTar(entries: readonly TarEntry[], out: Writable): Promise<void> {
  const write = (chunk: Buffer) =>
    out.write(chunk) ? Promise.resolve() : new Promise<void>((r) => out.once('drain', r));
  for (const e of entries) {
    await write(tarHeader(e));
    if (!e.file) continue;
    let written = 0;
    for await (const chunk of createReadStream(e.file)) {
      written += (chunk as Buffer).length;
      if (written > e.size) throw new Error(`tar: ${e.file} grew while it was packed`);
      await write(chunk as Buffer);
    }
    if (written !== e.size)
      throw new Error(`tar: ${e.file} changed size while it was packed (${e.size} -> ${written} bytes)`);
    const pad = (BLOCK - (e.size % BLOCK)) % BLOCK;
    if (pad) await write(Buffer.alloc(pad));
  }
  await write(Buffer.alloc(2 * BLOCK));
}
