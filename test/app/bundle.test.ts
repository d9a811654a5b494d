/**
 * The packaged shape, as far as it can be checked without an Electron binary:
 *
 * - scripts/build-electron.ts bundles main (ESM), preload (CJS) and the engine worker (CJS) into
 *   <app>/dist-electron/, beside package.json and node_modules, as in the packaged app;
 * - the preload bundle runs with a sandbox-like `require` that knows only `electron`;
 * - the main bundle runs under Node with `electron` replaced by a fake (fakeElectron/): it serves
 *   the page with the CSP, finds the app folder (version and models from <app>/), refuses a foreign
 *   frame, and runs the worker bundle as a utility-process-like child (process.parentPort);
 * - electron.config.ts loads and validates with electron-builder's own loader and schema.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, symlink, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { runInNewContext } from 'node:vm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CSP } from '../../src-main/app/appProtocol.ts';
import { buildElectron, type BuiltElectron } from '../../scripts/build-electron.ts';
import { tempDir } from '../service/helpers.ts';
import { REPO } from './helpers.ts';

const VERSION = '9.9.9-bundle-test';
let dir: string;
let cleanup: () => Promise<void>;
let appDir: string;
let built: BuiltElectron;

beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('singlora-app-bundle-'));
  appDir = join(dir, 'app');
  await mkdir(join(appDir, 'dist-renderer'), { recursive: true });
  await writeFile(
    join(appDir, 'package.json'),
    JSON.stringify({ name: 'singlora-studio', version: VERSION, type: 'module', main: 'dist-electron/main.js' }),
  );
  await writeFile(
    join(appDir, 'dist-renderer', 'index.html'),
    '<!doctype html><title>SingLoRA Studio bundle test</title>',
  );
  await symlink(join(REPO, 'node_modules'), join(appDir, 'node_modules'), 'dir');
  built = await buildElectron({ outDir: join(appDir, 'dist-electron'), sourcemap: false });
});
afterAll(() => cleanup?.());

describe('the Electron bundles', () => {
  it('main is ESM, preload and worker are CommonJS, native and TensorFlow.js packages stay external', async () => {
    const main = await readFile(built.main, 'utf8');
    const preload = await readFile(built.preload, 'utf8');
    const worker = await readFile(built.engineWorker, 'utf8');
    expect(main).toMatch(/^import /m);
    expect(main).toContain('from "electron"');
    // The engine never loads in main: no import or require of a runtime package (the provider
    // names themselves are vocabulary, api/schemas.ts's PROVIDERS, and may appear).
    expect(main).not.toMatch(/(require\d*\(|from |import\()\s*["'](@tensorflow\/[^"']+|onnxruntime-node|webgpu)["']/);
    expect(preload).not.toMatch(/^\s*(import|export)\s/m);
    expect([...preload.matchAll(/require\("([^"]+)"\)/g)].map((m) => m[1])).toEqual(['electron']);
    expect(worker).not.toMatch(/^\s*(import|export)\s/m);
    // TensorFlow.js is loaded on first use (backend/tf.ts), through a createRequire that esbuild renames.
    expect(worker).toMatch(/require\d*\(["']@tensorflow\/tfjs["']\)/);
    expect(worker).toMatch(/require\("sharp"\)/);
    expect(worker).not.toMatch(/import\.meta/);
  });

  it("the preload bundle runs with a sandboxed preload's require (electron only) and exposes invoke and onEvent", async () => {
    const exposed = new Map<string, Record<string, unknown>>();
    const invoked: unknown[][] = [];
    const electron = {
      contextBridge: { exposeInMainWorld: (key: string, api: Record<string, unknown>) => exposed.set(key, api) },
      ipcRenderer: { invoke: async (...args: unknown[]) => invoked.push(args), on: () => {}, removeListener: () => {} },
    };
    const sandboxRequire = (name: string) => {
      if (name === 'electron') return electron;
      throw new Error(`module not found: ${name}`);
    };
    const module = { exports: {} };
    runInNewContext(await readFile(built.preload, 'utf8'), {
      require: sandboxRequire,
      module,
      exports: module.exports,
      Promise,
      TypeError,
    });
    expect([...exposed.keys()]).toEqual(['singlora']);
    expect(Object.keys(exposed.get('singlora')!).sort()).toEqual(['invoke', 'onEvent']);
    await (exposed.get('singlora')!.invoke as (m: string, p: unknown) => Promise<unknown>)('jobs.list', {});
    expect(invoked).toEqual([['singlora:invoke', 'jobs.list', {}]]);
  });

  it('the main bundle runs (Electron faked): page with CSP, the app folder found, the engine worker bundle as a utility process', async () => {
    const userData = join(dir, 'userData');
    const register = join(REPO, 'test/app/fakeElectron/register.mjs');
    const env = {
      ...process.env,
      FAKE_ELECTRON_USER_DATA: userData,
      SINGLORA_BACKEND: 'cpu',
      SINGLORA_DATA_DIR: '',
      SINGLORA_MODELS_DIR: '',
      SINGLORA_CACHE_DIR: '',
    };
    const child = spawn(process.execPath, ['--import', register, built.main], {
      cwd: appDir,
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
    const line = stdout.split('\n').find((l) => l.startsWith('FAKE-ELECTRON '));
    expect(line, `no report from the fake Electron; stderr:\n${stderr}`).toBeDefined();
    const r = JSON.parse(line!.slice('FAKE-ELECTRON '.length));
    expect(r.error, r.error).toBeUndefined();
    expect(code, stderr).toBe(0);

    expect(r.url).toBe('app://studio/index.html');
    expect(r.sandbox).toBe(true);
    expect(r.permissionsLocked).toBe(true);
    expect(r.privileged).toEqual([
      { scheme: 'app', privileges: { standard: true, secure: true, supportFetchAPI: true, corsEnabled: true } },
    ]);
    expect(r.webPreferences).toMatchObject({
      preload: built.preload,
      sandbox: true,
      contextIsolation: true,
      nodeIntegration: false,
      webSecurity: true,
    });
    expect(r.scheme).toBe('app');
    expect(r.channel).toBe('singlora:invoke');
    expect(r.page).toEqual({
      status: 200,
      csp: CSP,
      type: 'text/html; charset=utf-8',
      body: '<!doctype html><title>SingLoRA Studio bundle test</title>',
    });

    // engine/paths.ts's REPO_ROOT inside the bundle is the app folder: its package.json, its models/.
    expect(r.info).toMatchObject({
      ok: true,
      result: {
        version: VERSION,
        modelsDir: join(appDir, 'models'),
        projectsDir: join(userData, 'userData', 'data', 'projects'),
      },
    });
    expect(r.doctor).toMatchObject({ ok: true, result: { selected: { name: 'cpu' } } });
    expect(r.foreign).toMatchObject({ ok: false, error: { code: 'unauthorized' } });
    // The quit closed the service: its data lock is released.
    expect(existsSync(join(userData, 'userData', 'data', 'service.lock'))).toBe(false);
  });
});

describe('electron.config.ts', () => {
  it('loads and validates with electron-builder, and packs what the app needs', async () => {
    const require = createRequire(join(REPO, 'package.json'));
    const { getConfig, validateConfiguration } = require('app-builder-lib/out/util/config/config') as {
      getConfig(projectDir: string, configPath: string, fromOptions: null): Promise<Record<string, unknown>>;
      validateConfiguration(config: unknown, logger: unknown): Promise<void>;
    };
    const { DebugLogger } = require('builder-util') as { DebugLogger: new (enabled: boolean) => unknown };
    const config = (await getConfig(REPO, 'electron.config.ts', null)) as {
      appId: string;
      productName: string;
      files: Array<{ filter: string[] }>;
      extraMetadata: { main: string };
      asarUnpack: string[];
      linux: { target: string[] };
      win: { target: string[] };
      mac: { target: string[] };
    };
    await validateConfiguration(config, new DebugLogger(false));
    await expect(validateConfiguration({ ...config, notAnOption: true }, new DebugLogger(false))).rejects.toThrow(
      /notAnOption/,
    );

    const pkg = JSON.parse(await readFile(join(REPO, 'package.json'), 'utf8')) as { main: string };
    expect(config.productName).toBe('SingLoRA Studio');
    expect(config.appId).toMatch(/^[a-z0-9.-]+$/);
    expect(config.extraMetadata.main).toBe('dist-electron/main.js');
    expect(pkg.main).toBe(config.extraMetadata.main);
    const files = config.files.flatMap((f) => f.filter);
    for (const f of ['dist-electron/**/*', 'dist-renderer/**/*', 'models/README.md', 'package.json'])
      expect(files).toContain(f);
    expect(config.asarUnpack).toEqual(['**/node_modules/{@tensorflow,onnxruntime-node,sharp,@img,webgpu}/**']);
    expect(config.linux.target).toEqual(['AppImage', 'deb']);
    expect(config.win.target).toEqual(['nsis']);
    expect(config.mac.target).toEqual(['dmg']);
  });
});
