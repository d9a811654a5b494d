// What `npm install` and `npx singlora` say about the Node version (issue 18 point 12, issue 27
// item 24). package.json's engines is what the CLI, the server and the tests need (vite, jsdom and
// vite-plugin-svelte: ^20.19 || ^22.13 || >=24), and the README states it. Tested on Node 20.20
// (this machine and CI). Only the desktop app's Electron 45 toolchain asks for more (22.12+): on
// Node 20 `npm install` warns for exactly those packages, which the README names; `npx singlora`
// checks only this package's engines, so it is quiet. Checked without a network.
import { spawnSync } from 'node:child_process';
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

  it('the README states the engines minimum, and this Node satisfies it', () => {
    const stated = /Node\.js (\d+\.\d+) or newer/.exec(readme)![1];
    expect(`${stated}.0`).toBe(minimum);
    expect(semver.satisfies(process.version, pkg.engines.node), `${process.version} vs ${pkg.engines.node}`).toBe(true);
  });

  it('every locked package accepts that Node version, but the Electron toolchain the README names', () => {
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
      .map(([path]) => path.replace(/^.*node_modules\//, ''));
    const electronTools = new Set([
      'electron',
      '@electron/get',
      '@electron/rebuild',
      '@electron-internal/extract-zip',
      'node-abi',
    ]);
    expect(refuse.filter((name) => !electronTools.has(name))).toEqual([]);
    for (const name of new Set(refuse)) expect(readme, `README names ${name}`).toContain(name);
  });

  it('npx singlora prints no engine warning on this Node', () => {
    const r = spawnSync('npx', ['--no-install', 'singlora', '--version'], {
      cwd: REPO,
      encoding: 'utf8',
      timeout: 120_000,
    });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout.trim()).toBe(pkg.version);
    expect(r.stderr).not.toMatch(/EBADENGINE|Unsupported engine/);
  });

  it("the lock's root entry is what npm writes (optional dependencies only under optionalDependencies)", () => {
    const root = lock.packages[''];
    expect(root.dependencies).toEqual(pkg.dependencies);
    expect(root.devDependencies).toEqual(pkg.devDependencies);
    expect(root.optionalDependencies).toEqual(pkg.optionalDependencies);
    expect(root.engines).toEqual(pkg.engines);
  });
});
