/**
 * image/pngText.ts: text chunks written by hand, read back by our reader and by sharp's metadata
 * (libvips/libpng: an independent PNG implementation), plus CRC and validation errors.
 */
import { crc32 as zlibCrc32, deflateSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { decodeImage, encodeImage, readImageMetadata, type RgbImage } from '../../src-main/engine/image/sharp.ts';
import { crc32, getPngText, PngFormatError, readPngText, writePngText } from '../../src-main/engine/image/pngText.ts';

const PARAMETERS =
  'a photo of sks dog on the beach\nNegative prompt: blurry, lowres\nSteps: 30, Sampler: DDIM, CFG scale: 7.5, Seed: 1234, Size: 512x512';

async function samplePng(): Promise<Buffer> {
  const data = new Uint8Array(16 * 8 * 3).map((_, i) => (i * 37) & 255);
  const img: RgbImage = { data, width: 16, height: 8 };
  return encodeImage(img, 'png');
}

/** Chunk types in file order. */
function chunkTypes(png: Uint8Array): string[] {
  const b = Buffer.from(png.buffer, png.byteOffset, png.byteLength);
  const out: string[] = [];
  for (let pos = 8; pos < b.length; pos += 12 + b.readUInt32BE(pos)) out.push(b.toString('latin1', pos + 4, pos + 8));
  return out;
}

describe('crc32', () => {
  it('matches the standard check value and node:zlib', () => {
    expect(crc32(Buffer.from('123456789'))).toBe(0xcbf43926);
    const bytes = Buffer.from(Array.from({ length: 1000 }, (_, i) => (i * 7919) & 255));
    expect(crc32(bytes)).toBe(zlibCrc32(bytes) >>> 0);
    expect(crc32(bytes.subarray(0, 300), bytes.subarray(300))).toBe(crc32(bytes));
  });
});

describe('writePngText / readPngText', () => {
  it('a `parameters` chunk on a sharp-made PNG round-trips through our reader and through sharp metadata', async () => {
    const png = await samplePng();
    const out = writePngText(png, { parameters: PARAMETERS });
    expect(readPngText(out)).toEqual([{ type: 'tEXt', keyword: 'parameters', text: PARAMETERS }]);
    expect(getPngText(out, 'parameters')).toBe(PARAMETERS);
    // sharp 0.35 exposes text chunks as metadata `comments: [{keyword, text}]`.
    const meta = await readImageMetadata(out);
    expect(meta.pngText).toEqual([{ keyword: 'parameters', text: PARAMETERS }]);
    // The pixels are untouched and libpng accepts every CRC.
    const a = await decodeImage(png);
    const b = await decodeImage(out);
    expect(Buffer.from(b.data).equals(Buffer.from(a.data))).toBe(true);
    // Placed before the image data (the only place libvips looks).
    const types = chunkTypes(out);
    expect(types.indexOf('tEXt')).toBeLessThan(types.indexOf('IDAT'));
    expect(types[types.length - 1]).toBe('IEND');
  });

  it('non-ASCII text goes into iTXt (UTF-8) and reads back intact in both readers', async () => {
    const prompt = 'a 🐶 astronaut on the moon, café — 日本語, ½';
    const out = writePngText(await samplePng(), [
      { keyword: 'parameters', text: prompt },
      { keyword: 'Software', text: 'SingLoRA Studio' },
    ]);
    expect(readPngText(out)).toEqual([
      { type: 'iTXt', keyword: 'parameters', text: prompt, language: '', translatedKeyword: '' },
      { type: 'tEXt', keyword: 'Software', text: 'SingLoRA Studio' },
    ]);
    expect((await readImageMetadata(out)).pngText).toEqual([
      { keyword: 'parameters', text: prompt },
      { keyword: 'Software', text: 'SingLoRA Studio' },
    ]);
  });

  it('rewriting a keyword replaces the old chunk (default) or adds another (replace: false)', async () => {
    const once = writePngText(await samplePng(), { parameters: 'first', other: 'kept' });
    const twice = writePngText(once, { parameters: 'second' });
    expect(readPngText(twice).map((c) => [c.keyword, c.text])).toEqual([
      ['other', 'kept'],
      ['parameters', 'second'],
    ]);
    const both = writePngText(once, { parameters: 'second' }, { replace: false });
    expect(
      readPngText(both)
        .filter((c) => c.keyword === 'parameters')
        .map((c) => c.text),
    ).toEqual(['first', 'second']);
  });

  it('chunks placed before IEND are read by our reader but not by sharp (why the writer puts them before IDAT)', async () => {
    const out = writePngText(await samplePng(), { parameters: 'late' }, { at: 'beforeIEND' });
    const types = chunkTypes(out);
    expect(types.slice(-2)).toEqual(['tEXt', 'IEND']);
    expect(getPngText(out, 'parameters')).toBe('late');
    expect((await readImageMetadata(out)).pngText).toEqual([]);
  });

  it('reads zTXt and compressed iTXt written by other tools', async () => {
    const png = await samplePng();
    const iend = png.length - 12;
    const chunk = (type: string, data: Buffer) => {
      const out = Buffer.alloc(12 + data.length);
      out.writeUInt32BE(data.length, 0);
      out.write(type, 4, 'latin1');
      data.copy(out, 8);
      out.writeUInt32BE(zlibCrc32(Buffer.concat([Buffer.from(type, 'latin1'), data])) >>> 0, 8 + data.length);
      return out;
    };
    const z = chunk(
      'zTXt',
      Buffer.concat([Buffer.from('Comment\0\0', 'latin1'), deflateSync(Buffer.from('squeezed text', 'latin1'))]),
    );
    const it = chunk(
      'iTXt',
      Buffer.concat([Buffer.from('Title\0\x01\0fr\0Titre\0', 'latin1'), deflateSync(Buffer.from('château ✓', 'utf8'))]),
    );
    const out = Buffer.concat([png.subarray(0, iend), z, it, png.subarray(iend)]);
    expect(readPngText(out)).toEqual([
      { type: 'zTXt', keyword: 'Comment', text: 'squeezed text' },
      { type: 'iTXt', keyword: 'Title', text: 'château ✓', language: 'fr', translatedKeyword: 'Titre' },
    ]);
  });
});

describe('errors', () => {
  it('invalid keywords and NUL in text are refused with the reason', async () => {
    const png = await samplePng();
    expect(() => writePngText(png, { '': 'x' })).toThrow(/keyword "" is invalid: it must be 1 to 79 characters/);
    expect(() => writePngText(png, { ['k'.repeat(80)]: 'x' })).toThrow(/1 to 79 characters, not 80/);
    expect(() => writePngText(png, { ' lead': 'x' })).toThrow(/no leading, trailing or consecutive spaces/);
    expect(() => writePngText(png, { 'emoji🐶': 'x' })).toThrow(/character U\+1F436 is not printable Latin-1/);
    expect(() => writePngText(png, { ok: 'a\0b' })).toThrow(/NUL character/);
  });

  it('a corrupt CRC, a truncated file and a non-PNG are reported', async () => {
    const out = Buffer.from(writePngText(await samplePng(), { parameters: 'x' }));
    const bad = Buffer.from(out);
    const pos = bad.indexOf('tEXt', 8, 'latin1');
    bad[pos + 5] ^= 0xff; // flip a byte inside the tEXt data
    expect(() => readPngText(bad)).toThrow(
      /chunk 'tEXt' at byte \d+: CRC 0x[0-9a-f]{8} does not match the computed 0x[0-9a-f]{8}/,
    );
    expect(() => readPngText(out.subarray(0, out.length - 20))).toThrow(PngFormatError);
    expect(() => readPngText(Buffer.from('GIF89a......'))).toThrow(/no PNG signature/);
  });
});
