import { svelte } from '@sveltejs/vite-plugin-svelte';
import { svelteTesting } from '@testing-library/svelte/vite';
import { configDefaults, defineConfig } from 'vitest/config';

// Two projects. `engine`: every test under test/ except the renderer's, in forked processes (one
// TensorFlow.js backend per process, and native modules such as onnxruntime-node and sharp are
// safest outside worker threads). `renderer`: test/renderer/**, the Svelte UI under jsdom; it needs
// Svelte's browser build (the `browser` resolve condition), which must not leak into the engine's
// resolution of packages such as @tensorflow/tfjs.
export default defineConfig({
  test: {
    maxWorkers: 2,
    reporters: ['default'],
    projects: [
      {
        test: {
          name: 'engine',
          include: ['test/**/*.test.ts'],
          exclude: [...configDefaults.exclude, 'test/renderer/**'],
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
