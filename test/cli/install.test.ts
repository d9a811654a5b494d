// Issue 18 point 12: `npm install` on the README's Node version prints no EBADENGINE warning and
// leaves package-lock.json as it is. Checked without a network: the Node version the README
// states (= package.json engines) satisfies every locked package's `engines.node`, and the lock's
// root entry is what npm writes for package.json (an optional dependency listed once).
// The check found jsdom's ^22.13 (npm had not warned on 22.23.5), so the minimum is 22.13.
// Measured by hand: a fresh `npm install` on Node 22.23.5 printed no warning and left the lock
// byte-identical; on Node 20.20.2 (the old README's 20.9+) it printed 25 EBADENGINE lines
// (electron 45, @electron/get 5, @electron-internal/extract-zip, @electron/rebuild 4, node-abi 4).
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO } from './run.ts';

const require = createRequire(import.meta.url);
const semver = require('semver') as {
  satisfies(v: string, range: string): boolean;
  minVersion(range: string): { version: string } | null;
};

const pkg = JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8'));
const lock = JSON.parse(readFileSync(join(REPO, 'package-lock.json'), 'utf8'));
const readme = readFileSync(join(REPO, 'README.md'), 'utf8');

describe('install on the README Node version', () => {
  const minimum = semver.minVersion(pkg.engines.node)!.version;

  it('the README states the engines minimum', () => {
    const stated = /Node\.js (\d+\.\d+) or newer/.exec(readme)![1];
    expect(`${stated}.0`).toBe(minimum);
  });

  it('every locked package accepts that Node version (no EBADENGINE)', () => {
    // npm skips (and does not check) packages for another OS or CPU, such as sharp's Windows builds.
    const here = (p: { os?: string[]; cpu?: string[] }) =>
      (!p.os || p.os.includes(process.platform)) && (!p.cpu || p.cpu.includes(process.arch));
    const refuse = Object.entries(
      lock.packages as Record<string, { engines?: { node?: string } | string[]; os?: string[]; cpu?: string[] }>,
    )
      .filter(
        ([path, p]) =>
          path &&
          here(p) &&
          p.engines &&
          !Array.isArray(p.engines) &&
          p.engines.node &&
          !semver.satisfies(minimum, p.engines.node),
      )
      .map(([path, p]) => `${path} wants node ${(p.engines as { node: string }).node}`);
    expect(refuse).toEqual([]);
  });

  it("the lock's root entry is what npm writes (optional dependencies only under optionalDependencies)", () => {
    const root = lock.packages[''];
    expect(root.dependencies).toEqual(pkg.dependencies);
    expect(root.devDependencies).toEqual(pkg.devDependencies);
    expect(root.optionalDependencies).toEqual(pkg.optionalDependencies);
    expect(root.engines).toEqual(pkg.engines);
  });
});
