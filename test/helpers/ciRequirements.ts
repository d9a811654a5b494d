/**
 * What `.ci/run` installs for the test suites: Chromium (the browser test), the SwiftShader
 * Vulkan driver that Debian's chromium ships (the webgpu suites), Mesa's lavapipe Vulkan driver
 * (float16 shaders, for the float16 WebGPU training test; scripts/fetch-lavapipe.sh) and Debian's
 * redis-server (the queue suites, test/queue). Outside CI a suite that lacks one is skipped, its
 * reason tagged `[needs chromium]`, `[needs swiftshader]`, `[needs lavapipe]` or `[needs
 * redis-server]`. Under CI (`CI=true`,
 * which `.ci/run` sets) the same lack fails the suite instead, so a broken install cannot pass CI
 * with those suites silently skipped. Skips for other reasons (a missing reference fixture, no GPU)
 * stay skips everywhere.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';

export type CiProvided = 'chromium' | 'swiftshader' | 'lavapipe' | 'redis-server';

export const IN_CI = /^(true|1)$/i.test(process.env.CI ?? '');

/** The tagged skip reason: `[needs chromium] no Chromium at /usr/bin/chromium`. */
export function needsNote(needs: CiProvided, reason: string): string {
  return `[needs ${needs}] ${reason}`;
}

/** Throws under CI (CI provides `needs`); elsewhere returns the tagged reason to skip with. */
export function skipReason(needs: CiProvided, reason: string, inCi = IN_CI): string {
  const note = needsNote(needs, reason);
  if (inCi) throw new Error(`${note}. CI installs ${needs} (.ci/run), so under CI=true this fails instead of skipping`);
  console.warn(`skipped: ${note}`);
  return note;
}

/** Skips the running test with the tagged reason, or fails it under CI. */
export function skipOrFail(ctx: { skip: (note?: string) => never }, needs: CiProvided, reason: string): never {
  return ctx.skip(skipReason(needs, reason));
}

export const SWIFTSHADER = '/usr/lib/chromium/vk_swiftshader_icd.json';

/**
 * The environment for a child process that starts Dawn (webgpu): SwiftShader as its Vulkan driver,
 * or the real driver with SINGLORA_WEBGPU_ENV=native (a GPU box). A string when neither is there:
 * why not.
 */
export function webgpuEnv(): NodeJS.ProcessEnv | string {
  return vulkanEnv(SWIFTSHADER, 'SwiftShader', 'apt install chromium');
}

/** Where scripts/fetch-lavapipe.sh puts Mesa's lavapipe (`.ci/run` runs it), or SINGLORA_LAVAPIPE_ICD. */
export const LAVAPIPE_ICD =
  process.env.SINGLORA_LAVAPIPE_ICD ?? join(import.meta.dirname, '..', '..', '.cache', 'lavapipe', 'lvp_icd.json');

/**
 * The environment for a child process that starts Dawn with float16 shaders: Mesa's lavapipe
 * (SwiftShader has no shader-f16), or the real driver with SINGLORA_WEBGPU_ENV=native. A string
 * when neither is there: why not.
 */
export function webgpuF16Env(): NodeJS.ProcessEnv | string {
  return vulkanEnv(LAVAPIPE_ICD, 'lavapipe', 'scripts/fetch-lavapipe.sh');
}

/**
 * Dawn on the Vulkan driver `icd` (`name`, got by `howToGet`), loaded through the Vulkan loader that
 * Debian's chromium ships (the system may have none: libvulkan1 is not among chromium's
 * dependencies); the process's own environment with SINGLORA_WEBGPU_ENV=native.
 */
function vulkanEnv(icd: string, name: string, howToGet: string): NodeJS.ProcessEnv | string {
  if (process.env.SINGLORA_WEBGPU_ENV === 'native') return { ...process.env };
  if (!existsSync(icd))
    return `no ${name} Vulkan driver at ${icd} (${howToGet}) and SINGLORA_WEBGPU_ENV is not 'native'`;
  if (!existsSync(CHROMIUM_VULKAN_LOADER))
    return `no Vulkan loader at ${CHROMIUM_VULKAN_LOADER} (apt install chromium) for ${name}`;
  return {
    ...process.env,
    VK_ICD_FILENAMES: icd,
    LD_LIBRARY_PATH: ['/usr/lib/chromium', process.env.LD_LIBRARY_PATH].filter(Boolean).join(':'),
  };
}

/** The Vulkan loader in Debian's chromium package (SwiftShader and lavapipe are loaded through it). */
export const CHROMIUM_VULKAN_LOADER = '/usr/lib/chromium/libvulkan.so.1';
