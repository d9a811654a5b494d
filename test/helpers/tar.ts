/** A ustar reader for tests of the server's folder downloads (gateway/tar.ts): entries, checked. */
import { expect } from 'vitest';

/** A ustar reader: every entry's name, type and bytes; checks each header's checksum. */
export function readTar(buf: Buffer): Array<{ name: string; type: string; data: Buffer }> {
  const out = [];
  let at = 0;
  for (;;) {
    const h = buf.subarray(at, at + 512);
    if (h.every((b) => b === 0)) break;
    const str = (o: number, n: number) =>
      h
        .subarray(o, o + n)
        .toString('utf8')
        .replace(/\0.*$/s, '');
    const sum = [...h].reduce((n, b, i) => n + (i >= 148 && i < 156 ? 32 : b), 0);
    expect(parseInt(str(148, 8).trim(), 8), `checksum of ${str(0, 100)}`).toBe(sum);
    expect(str(257, 6)).toBe('ustar');
    const prefix = str(345, 155);
    const name = prefix ? `${prefix}/${str(0, 100)}` : str(0, 100);
    const size = parseInt(str(124, 12), 8);
    out.push({ name, type: str(156, 1), data: buf.subarray(at + 512, at + 512 + size) });
    at += 512 + Math.ceil(size / 512) * 512;
  }
  expect(buf.length).toBe(at + 1024); // two zero blocks end it
  return out;
}
