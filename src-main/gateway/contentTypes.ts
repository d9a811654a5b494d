/**
 * Content types of what the app serves, shared by the HTTP server and the Electron app
 * protocol: project files (images, JSON sidecars, captions) and the renderer's own files.
 * Project files are served only as these types, so an `.html` or `.svg` a project happens to
 * hold can never run as the app.
 */

/** Types served from `/files/` (anything else is refused or sent as a download). */
export const FILE_TYPES: Readonly<Record<string, string>> = {
  '.png': 'image/png',
  '.jpg': 'image/jpeg',
  '.jpeg': 'image/jpeg',
  '.webp': 'image/webp',
  '.avif': 'image/avif',
  '.gif': 'image/gif',
  '.tif': 'image/tiff',
  '.tiff': 'image/tiff',
  '.json': 'application/json; charset=utf-8',
  '.txt': 'text/plain; charset=utf-8',
};

/** Types of the renderer's own files (dist-renderer/). */
export const STATIC_TYPES: Readonly<Record<string, string>> = {
  ...FILE_TYPES,
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.ico': 'image/x-icon',
  '.woff': 'font/woff',
  '.woff2': 'font/woff2',
  '.map': 'application/json; charset=utf-8',
  '.wasm': 'application/wasm',
};
