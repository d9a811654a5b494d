/**
 * electron-builder configuration (electron-builder 26 reads TypeScript configs itself, via jiti):
 *
 *   npm run dist   =  vite build  +  tsx scripts/build-electron.ts  +  electron-builder --config electron.config.ts
 *
 * What the app holds: the bundles (dist-electron/), the built renderer (dist-renderer/), the models
 * README, package.json (version; "main" is set below), and the production node_modules, which the
 * bundles load at run time for the packages they keep external (scripts/build-electron.ts).
 * Native packages are unpacked from the asar: their .node libraries and TensorFlow.js's .wasm files
 * are loaded from real files. They are Node-API builds, so no rebuild for Electron's ABI
 * (npmRebuild: false; rebuilding tfjs-node-gpu from source would need CUDA headers).
 */
import type { Configuration } from 'electron-builder';

const config: Configuration = {
  appId: 'dev.singlora.studio',
  productName: 'SingLoRA Studio',
  executableName: 'singlora-studio',
  copyright: 'MIT License',
  directories: { output: 'release' },
  files: ['dist-electron/**/*', '!dist-electron/**/*.map', 'dist-renderer/**/*', 'models/README.md', 'package.json'],
  extraMetadata: { main: 'dist-electron/main.js' },
  asar: true,
  asarUnpack: ['**/node_modules/{@tensorflow,onnxruntime-node,sharp,@img,webgpu}/**'],
  npmRebuild: false,
  linux: {
    target: ['AppImage', 'deb'],
    category: 'Graphics',
    synopsis: 'Personalize Stable Diffusion 1.5 from a few photos with SingLoRA adapters',
    // The deb needs a maintainer; package.json has no author e-mail.
    maintainer: 'SingLoRA Studio maintainers',
  },
  win: { target: ['nsis'] },
  nsis: { oneClick: false, allowToChangeInstallationDirectory: true, perMachine: false },
  mac: { target: ['dmg'], category: 'public.app-category.graphics-design', hardenedRuntime: true },
};

export default config;
