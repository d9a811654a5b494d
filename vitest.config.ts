import { defineConfig } from 'vitest/config';

// Engine tests run in forked processes: one TensorFlow.js backend per process, and native
// modules (onnxruntime-node, sharp) are safest outside worker threads.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    maxWorkers: 2,
    testTimeout: 120_000,
    hookTimeout: 120_000,
    reporters: ['default'],
  },
});
