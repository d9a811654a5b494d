import { mkdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { safeFileName, safeResolve, uniqueName } from '../../src-main/service/safePath.ts';
import { apiError, tempDir } from './helpers.ts';

describe('safeResolve', () => {
  let root: string;
  let outside: string;
  let cleanup: () => Promise<void>;

  beforeAll(async () => {
    const t = await tempDir();
    cleanup = t.cleanup;
    root = join(t.dir, 'project');
    outside = join(t.dir, 'secret');
    await mkdir(join(root, 'photos'), { recursive: true });
    await mkdir(outside);
    await writeFile(join(outside, 'key.txt'), 'secret');
    await writeFile(join(root, 'photos', 'a.png'), 'x');
    await symlink(outside, join(root, 'photos', 'escape')); // a link inside that points outside
    await symlink(join(outside, 'key.txt'), join(root, 'photos', 'key-link.txt'));
    await symlink(join(root, 'photos', 'a.png'), join(root, 'photos', 'inside-link.png')); // stays inside: fine
  });
  afterAll(() => cleanup());

  it('resolves plain relative paths inside the root, existing or not', async () => {
    expect(await safeResolve(root, 'photos/a.png')).toBe(join(root, 'photos', 'a.png'));
    expect(await safeResolve(root, './photos//a.png')).toBe(join(root, 'photos', 'a.png'));
    expect(await safeResolve(root, 'adapters/new/out.safetensors')).toBe(
      join(root, 'adapters', 'new', 'out.safetensors'),
    );
    expect(await safeResolve(root, 'photos/inside-link.png')).toBe(join(root, 'photos', 'inside-link.png'));
  });

  it.each([
    ['../secret/key.txt', "'..'"],
    ['photos/../../secret/key.txt', "'..'"],
    ['photos/..', "'..'"],
    ['..', "'..'"],
    ['/etc/passwd', 'absolute'],
    ['C:\\Windows\\win.ini', 'backslash'],
    ['C:/Windows/win.ini', 'absolute'],
    ['..\\secret\\key.txt', 'backslash'],
    ['photos\\..\\..\\secret', 'backslash'],
    ['\\\\server\\share\\x', 'backslash'],
    ['photos/a.png\0.jpg', 'NUL'],
    ['', 'empty'],
    ['./', 'names no file'],
  ])('rejects %j (%s)', async (rel, why) => {
    const e = await apiError(safeResolve(root, rel, 'file'));
    expect(e.code).toBe('invalid_params');
    expect(e.message).toContain('file:');
    expect(e.message).toContain(why);
  });

  it('rejects what a once-decoded %2e%2e%2f becomes, and keeps a double-encoded one literal', async () => {
    const once = decodeURIComponent('%2e%2e%2fsecret%2fkey.txt');
    expect((await apiError(safeResolve(root, once))).code).toBe('invalid_params');
    // Decoded once more by nobody: a literal (harmless) file name inside the root.
    const twice = decodeURIComponent('%252e%252e%252fsecret');
    expect(await safeResolve(root, twice)).toBe(join(root, '%2e%2e%2fsecret'));
  });

  it('rejects symbolic links that lead outside, for files and for folders on the way', async () => {
    expect((await apiError(safeResolve(root, 'photos/key-link.txt'))).message).toContain('symbolic link');
    expect((await apiError(safeResolve(root, 'photos/escape/key.txt'))).message).toContain('symbolic link');
    // A file that does not exist yet under the escaping folder is refused too (export destinations).
    expect((await apiError(safeResolve(root, 'photos/escape/new.safetensors'))).message).toContain('symbolic link');
  });
});

describe('safe file names', () => {
  it('keeps the base name, letters, digits and the extension', () => {
    expect(safeFileName('IMG_0001.JPG')).toBe('IMG_0001.jpg');
    expect(safeFileName('../../etc/passwd')).toBe('passwd');
    expect(safeFileName('C:\\Users\\me\\Desktop\\my dog (1).png')).toBe('my-dog-1.png');
    expect(safeFileName('.hidden.png')).toBe('hidden.png');
    expect(safeFileName('Café über.webp')).toBe('Cafe-uber.webp');
    expect(safeFileName('...', 'photo')).toBe('photo');
    expect(safeFileName(`${'x'.repeat(300)}.png`).length).toBeLessThanOrEqual(80);
  });

  it('numbers duplicates before the extension', () => {
    expect(uniqueName('a.png', new Set())).toBe('a.png');
    expect(uniqueName('a.png', new Set(['a.png', 'a-2.png']))).toBe('a-3.png');
    expect(uniqueName('folder', new Set(['folder']))).toBe('folder-2');
  });
});
