import { svelte } from '@sveltejs/vite-plugin-svelte';
import { svelteTesting } from '@testing-library/svelte/vite';
import { configDefaults, defineConfig } from 'vitest/config';

/**
 * The suites that run no model (no UNet, VAE, text encoder or DINO forward, no engine job, no
 * browser): `npm run test:unit` runs them with the renderer's. A new suite that runs a model
 * belongs in `engine` (the default); one that does not is added here.
 */
export const UNIT_SUITES = [
  'test/{ci,functionLength,layers}.test.ts',
  'test/app/{appProtocol,desktopApp,ipc,preload,window}.test.ts',
  'test/cli/{args,install,schemaOptions}.test.ts',
  'test/engine/{adamw,adapters.contract,backend,clipTokenizer,download,image,keyMap,lossScale,lrSchedule,providers}.test.ts',
  'test/engine/{modelFiles,ops.cpu,ops.wasm,pngText,random,safetensors,schedulers,wasmKernels}.test.ts',
  'test/engine/models/{attentionSlicing,memoryEfficientAttention.cpu}.test.ts',
  'test/parity/schedulers.parity.test.ts',
  'test/service/{fullDisk,guards,jobs,onboarding,projects,safePath,server,settings,tar}.test.ts',
];

// Three projects. `unit` and `engine`: the tests under test/ except the renderer's, split by
// UNIT_SUITES, in forked processes (one TensorFlow.js backend per process, and native modules such
// as onnxruntime-node and sharp are safest outside worker threads); `engine` holds the model runs,
// the engine processes and the browser. `renderer`: test/renderer/**, the Svelte UI under jsdom; it
// needs Svelte's browser build (the `browser` resolve condition), which must not leak into the
// engine's resolution of packages such as @tensorflow/tfjs.
export default defineConfig({
  test: {
    maxWorkers: 2,
    reporters: ['default'],
    projects: [
      {
        test: {
          name: 'unit',
          include: UNIT_SUITES,
          pool: 'forks',
          // The slowest test (a CLI process) takes 10 s on a 2-core machine loaded ten times over.
          testTimeout: 60_000,
          hookTimeout: 60_000,
        },
      },
      {
        test: {
          name: 'engine',
          include: ['test/**/*.test.ts'],
          exclude: [...configDefaults.exclude, 'test/renderer/**', ...UNIT_SUITES],
          pool: 'forks',
          testTimeout: 120_000,
          hookTimeout: 120_000,
        },
      },
      {
        plugins: [svelte(), svelteTesting()],
        resolve: { conditions: ['browser'] },
        test: {
          name: 'renderer',
          include: ['test/renderer/**/*.test.ts'],
          environment: 'jsdom',
          pool: 'forks',
          testTimeout: 20_000,
        },
      },
    ],
  },
});
