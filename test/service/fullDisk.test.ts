/**
 * A real full disk: a 1 MiB tmpfs in a private mount namespace (root only; skipped otherwise).
 * A project created on it is removed again rather than left half-made; the writes that fail say
 * "disk full: <path>"; the project that was there still loads.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';

const canMount = process.getuid?.() === 0 && spawnSync('unshare', ['-m', 'true']).status === 0;

describe.skipIf(!canMount)('a full disk', () => {
  it('projects.create leaves no orphan folder; photos.add and projects.update say "disk full: <path>"; the project still loads', () => {
    const dir = mkdtempSync(join(tmpdir(), 'singlora-fulldisk-'));
    try {
      const tsx = pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href;
      const script = join(import.meta.dirname, 'fullDisk.script.ts');
      const r = spawnSync(
        'unshare',
        [
          '-m',
          'sh',
          '-c',
          `mount -t tmpfs -o size=1m tmpfs "$1" && exec "$2" --import "$3" "$4" "$1"`,
          'sh',
          dir,
          process.execPath,
          tsx,
          script,
        ],
        { encoding: 'utf8', timeout: 60_000 },
      );
      expect(r.status, r.stderr).toBe(0);
      const out = JSON.parse(r.stdout.trim().split('\n').pop()!);
      expect(out.filled).toBe('ENOSPC');
      expect(out.create).toMatchObject({ ok: false, code: 'internal' });
      expect(out.create.message).toMatch(/^projects\.create: cannot create .*: disk full: /);
      expect(out.folders).toHaveLength(2);
      // Issue 27 item 7: a training.start that cannot write run.json leaves no empty runs/<id>/.
      expect(out.train).toMatchObject({ ok: false });
      expect(out.train.message).toMatch(/disk full: .*run\.json/);
      expect(out.runs).toEqual([]);
      expect(out.photo).toMatchObject({ ok: false });
      expect(out.photo.message).toMatch(/disk full: /);
      expect(out.update).toMatchObject({ ok: false });
      expect(out.update.message).toMatch(/disk full: .*project\.json/);
      expect(out.open).toMatchObject({ ok: true, result: { name: 'Before' } });
      expect(out.list.result).toHaveLength(2);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
