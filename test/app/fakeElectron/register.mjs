// `node --import ./register.mjs main.js`: the bare specifier 'electron' resolves to electron.mjs
// (a fake of the main-process API) instead of the npm package, which only names a binary.
import { register } from 'node:module';

register(new URL('./hooks.mjs', import.meta.url));
