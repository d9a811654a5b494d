import { svelte } from '@sveltejs/vite-plugin-svelte';
import { defineConfig } from 'vite';

/**
 * The renderer (src-renderer/) builds to dist-renderer/, loaded by Electron from disk and served by
 * `singlora serve` to browsers; base './' keeps every asset URL relative for both.
 *
 * `vite dev` can talk to a running `singlora serve`: set SINGLORA_SERVE_URL (e.g.
 * http://127.0.0.1:7860) and /api, /ws and /files are proxied to it.
 */
const serveUrl = process.env.SINGLORA_SERVE_URL;

export default defineConfig({
  root: 'src-renderer',
  base: './',
  plugins: [svelte()],
  build: {
    outDir: '../dist-renderer',
    emptyOutDir: true,
    target: 'es2022',
    // The CSP forbids inline scripts; keep every module in a file.
    modulePreload: { polyfill: false },
  },
  server: serveUrl
    ? {
        proxy: {
          '/api': serveUrl,
          '/files': serveUrl,
          '/ws': { target: serveUrl.replace(/^http/, 'ws'), ws: true },
        },
      }
    : undefined,
});
