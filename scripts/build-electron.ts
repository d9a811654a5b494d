/**
 * Bundles the Electron side into dist-electron/ with esbuild (the renderer is built by Vite into
 * dist-renderer/):
 *
 *   | output            | entry                             | format | why                                         |
 *   | ----------------- | --------------------------------- | ------ | ------------------------------------------- |
 *   | main.js           | src-main/app/main.ts              | ESM    | package.json "type": "module"; "main" points here |
 *   | preload.cjs       | src-main/app/preload.ts           | CJS    | sandboxed preloads cannot load ES modules   |
 *   | engineWorker.cjs  | src-main/service/engineWorker.ts  | CJS    | forked as a utility process; CJS loads there on every Electron version |
 *
 * Native and TensorFlow.js packages stay external and load from node_modules at run time
 * (electron-builder unpacks them from the asar: electron.config.ts `asarUnpack`): they find their
 * .node and .wasm files next to their own code, which a bundle would break. BullMQ stays external
 * too: only a service given a Redis queue loads it (service/redisQueue.ts, imported on demand),
 * and the desktop app never is.
 *
 * `import.meta` in the bundles: engine/paths.ts computes the app root as two folders above its own
 * folder (`import.meta.dirname`, src-main/engine). In a bundle that folder is gone, so
 * `import.meta.dirname` is defined as `<app>/src-main/engine` (computed from the bundle's own
 * location), which keeps REPO_ROOT = the app root (package.json, dist-renderer/). The CJS worker
 * also gets `import.meta.url` (tf.ts resolves optional backends with createRequire).
 *
 *   npx tsx scripts/build-electron.ts [--out dist-electron] [--minify]
 */
import { build, type BuildOptions, type Metafile } from 'esbuild';
import { relative, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

export const REPO = resolve(import.meta.dirname, '..');

/** Loaded from node_modules at run time, never bundled. */
export const EXTERNAL = [
  'electron',
  '@tensorflow/*',
  'onnxruntime-node',
  'sharp',
  '@img/*',
  'webgpu',
  'bullmq',
] as const;

/** Packages the main process must never load: the engine runs in its own process. */
const ENGINE_ONLY = ['@tensorflow/', 'onnxruntime-node', 'webgpu'];

const ESM_BANNER = [
  "import { createRequire as __singloraCreateRequire } from 'node:module';",
  "import { fileURLToPath as __singloraFileURLToPath } from 'node:url';",
  'const require = __singloraCreateRequire(import.meta.url);',
  "const __singloraEngineDir = __singloraFileURLToPath(new URL('../src-main/engine/', import.meta.url));",
].join('\n');

const CJS_BANNER = [
  "const __singloraImportMetaUrl = require('node:url').pathToFileURL(__filename).href;",
  "const __singloraEngineDir = require('node:path').join(__dirname, '..', 'src-main', 'engine');",
].join('\n');

export interface BuildElectronOptions {
  outDir?: string;
  minify?: boolean;
  sourcemap?: boolean;
  log?: (line: string) => void;
}

export interface BuiltElectron {
  outDir: string;
  main: string;
  preload: string;
  engineWorker: string;
}

/** Builds the three bundles; throws when one fails or when main would load an engine-only package. */
export async function buildElectron(o: BuildElectronOptions = {}): Promise<BuiltElectron> {
  const outDir = resolve(REPO, o.outDir ?? 'dist-electron');
  const common: BuildOptions = {
    absWorkingDir: REPO,
    bundle: true,
    minify: o.minify ?? false,
    sourcemap: o.sourcemap ?? true,
    logLevel: 'warning',
    legalComments: 'none',
    metafile: true,
  };
  const out = {
    outDir,
    main: resolve(outDir, 'main.js'),
    preload: resolve(outDir, 'preload.cjs'),
    engineWorker: resolve(outDir, 'engineWorker.cjs'),
  };
  const [main, , worker] = await Promise.all([
    build({
      ...common,
      entryPoints: ['src-main/app/main.ts'],
      outfile: out.main,
      platform: 'node',
      format: 'esm',
      target: 'node22',
      external: [...EXTERNAL],
      banner: { js: ESM_BANNER },
      define: { 'import.meta.dirname': '__singloraEngineDir' },
    }),
    build({
      ...common,
      entryPoints: ['src-main/app/preload.ts'],
      outfile: out.preload,
      // 'browser': a sandboxed preload's require knows electron and a few shims, not Node's modules.
      platform: 'browser',
      format: 'cjs',
      target: 'chrome130',
      external: ['electron'],
    }),
    build({
      ...common,
      entryPoints: ['src-main/service/engineWorker.ts'],
      outfile: out.engineWorker,
      platform: 'node',
      format: 'cjs',
      target: 'node22',
      external: [...EXTERNAL],
      banner: { js: CJS_BANNER },
      define: { 'import.meta.url': '__singloraImportMetaUrl', 'import.meta.dirname': '__singloraEngineDir' },
    }),
  ]);
  const leaked = engineImports(main.metafile!);
  if (leaked.length)
    throw new Error(
      `build-electron: the main bundle imports engine-only packages (${leaked.join(', ')}); the engine must run only in the utility process`,
    );
  o.log?.(
    `build-electron: ${[out.main, out.preload, out.engineWorker].map((f) => relative(process.cwd(), f)).join(', ')}; external at run time: ${externalImports(worker.metafile!).join(', ')}`,
  );
  return out;
}

function externalImports(meta: Metafile): string[] {
  const names = new Set<string>();
  for (const output of Object.values(meta.outputs)) for (const i of output.imports) if (i.external) names.add(i.path);
  return [...names].sort();
}

function engineImports(meta: Metafile): string[] {
  return externalImports(meta).filter((name) => ENGINE_ONLY.some((p) => name.startsWith(p)));
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  const arg = (name: string) => {
    const i = process.argv.indexOf(name);
    return i > 0 ? process.argv[i + 1] : undefined;
  };
  buildElectron({
    outDir: arg('--out'),
    minify: process.argv.includes('--minify'),
    log: (l) => process.stdout.write(`${l}\n`),
  }).catch((err: Error) => {
    process.stderr.write(`${err.message}\n`);
    process.exitCode = 1;
  });
}
