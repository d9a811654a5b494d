/**
 * Runs the shared op cases on one backend and prints their results as JSON (used by the webgpu
 * test, which must start Dawn in a fresh process with the Vulkan driver's environment).
 *
 *   npx tsx scripts/op-check.ts --backend webgpu
 */
import { initBackend, isBackendName } from '../src-main/engine/backend/tf.ts';
import { runOpCases } from '../test/helpers/opCases.ts';

const i = process.argv.indexOf('--backend');
const name = i >= 0 ? process.argv[i + 1] : 'auto';
if (name !== 'auto' && !isBackendName(name)) throw new Error(`op-check: unknown backend ${name}`);
const info = await initBackend(name);
const results = await runOpCases();
process.stdout.write(`${JSON.stringify({ backend: info.name, device: info.device ?? null, results })}\n`);
process.exit(0);
