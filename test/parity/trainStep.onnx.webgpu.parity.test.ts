/**
 * The SingLoRA training step of every PARITY_FIXTURES folder with `train_step_cases` on ONNX
 * Runtime's WebGPU provider, against PyTorch (the case the CPU test checks,
 * trainStep.onnx.parity.test.ts), in a child process (test/helpers/onnxTrainStepChild.ts: Dawn
 * needs its Vulkan driver in the environment from the start, see `webgpuEnv`). The session's
 * provider list is WebGPU alone with CPU fallback disabled (the training session options), so a
 * node WebGPU cannot run fails the test instead of running on the CPU.
 *
 *   float32   the CPU test's bounds (test/helpers/trainStepCases.ts): loss 1e-5 relative, every
 *             gradient 1e-4 * max|ref| of its tensor, the grad norm 1e-5 relative, every
 *             parameter after clipping + AdamW within 1e-6 (plus the gradient's share where
 *             |g| < 10 eps)
 *   float16   float16 weights and activations, float32 factors and gradients, the dynamic loss
 *             scale of training (train/lossScale.ts): every gradient within 5e-2 * max|ref| of
 *             float32's (the reference's), the measured error printed (docs/onnx-gradients.md,
 *             "Measured on the WebGPU provider")
 *
 * Here float32 runs on SwiftShader (software Vulkan, from Debian's chromium), which has no
 * shader-f16, and float16 on Mesa's lavapipe (software Vulkan whose shaders compute in float16;
 * scripts/fetch-lavapipe.sh, run by .ci/run). On a GPU box, SINGLORA_WEBGPU_ENV=native runs both
 * on the real driver. The same float16 graph also runs on the CPU provider, where ONNX Runtime
 * computes the float16 nodes it has no kernel for in float32 between casts: the float16 rounding
 * of the stored weights and activations only, checked with the same bound.
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { maxAbsDiff } from '../helpers/backend.ts';
import { skipOrFail, webgpuEnv, webgpuF16Env } from '../helpers/ciRequirements.ts';
import { Cases, parityFolders, skipNote } from '../helpers/fixtures.ts';
import type { ChildRun, ChildStep } from '../helpers/onnxTrainStepChild.ts';
import { caseKeys, clipFactorOf, PARAMS, readMeta, type StepMeta } from '../helpers/trainStepCases.ts';
import { checkStep } from '../helpers/trainStepChecks.ts';

/** float16 gradients vs float32's, per tensor (issue 25). */
const F16_REL_TO_MAX = 5e-2;
/** The child's limit: SwiftShader runs tiny-a's float32 step in about 45 s on 2 busy cores. */
const CHILD_TIMEOUT_MS = 300_000;

const run = promisify(execFile);

/** Runs the step in a child process on `provider` for each dtype; the child's runs, in order. */
async function runChild(
  folder: string,
  provider: 'webgpu' | 'cpu',
  dtypes: readonly string[],
  env: NodeJS.ProcessEnv,
): Promise<{ runs: ChildRun[]; wallMs: number }> {
  const dir = mkdtempSync(join(tmpdir(), 'onnx-train-step-webgpu-'));
  try {
    const out = join(dir, 'runs.json');
    const t0 = performance.now();
    await run(
      process.execPath,
      [
        '--import',
        'tsx',
        'test/helpers/onnxTrainStepChild.ts',
        folder,
        '--provider',
        provider,
        '--dtype',
        dtypes.join(','),
        '--out',
        out,
      ],
      { env, timeout: CHILD_TIMEOUT_MS, maxBuffer: 16 << 20 },
    );
    const wallMs = Math.round(performance.now() - t0);
    return { runs: (JSON.parse(readFileSync(out, 'utf8')) as { runs: ChildRun[] }).runs, wallMs };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The run of `dtype`; a run that failed throws its error, unless `skip` says why it is skipped. */
function stepOf(runs: readonly ChildRun[], dtype: string, skip: (error: string) => void = () => {}): ChildStep {
  const r = runs.find((x) => x.dtype === dtype);
  if (!r) throw new Error(`the child process returned no ${dtype} run`);
  if ('error' in r) {
    skip(r.error);
    throw new Error(`${dtype} training step: ${r.error}`);
  }
  return r;
}

/** The skip reason when the child found no WebGPU adapter (no Vulkan driver), else null. */
function noAdapter(error: string): string | null {
  if (!/adapter/i.test(error) || !/webgpu/i.test(error)) return null;
  return `no WebGPU adapter: ${(/Failed to get a WebGPU adapter.*$/im.exec(error)?.[0] ?? error.slice(-200)).trim()}`;
}

/** The case's reference gradients (as recorded: clipped), per adapter tensor, with names. */
async function referenceGrads(cases: Cases, meta: StepMeta): Promise<Array<{ name: string; data: Float32Array }>> {
  const out: Array<{ name: string; data: Float32Array }> = [];
  for (const layer of meta.layers)
    for (const [p, ours] of PARAMS.singlora)
      out.push({ name: `${layer}.${ours}`, data: (await cases.get(`singlora.grad.${layer}.${p}`)).data });
  return out;
}

/** Every gradient against the reference: the worst max|diff|/max|ref| and the tensors beyond `bound`. */
function compareGrads(
  step: ChildStep,
  refs: ReadonlyArray<{ name: string; data: Float32Array }>,
  c: number,
  bound: number,
): { worst: { rel: number; name: string }; failures: string[] } {
  expect(step.grads.length, 'gradient tensors').toBe(refs.length);
  let worst = { rel: 0, name: '' };
  const failures: string[] = [];
  refs.forEach(({ name, data }, k) => {
    const g = Float32Array.from(step.grads[k], (x) => x * c); // clipped, as the reference
    const d = maxAbsDiff(g, data);
    if (d.rel > worst.rel) worst = { rel: d.rel, name };
    if (!(d.maxAbs <= bound * d.maxRef)) failures.push(`${name}: ${d.rel.toExponential(2)}`);
  });
  return { worst, failures };
}

for (const folder of parityFolders()) {
  const label = basename(folder);
  const tensorsPath = join(folder, 'train_step_cases.safetensors');
  const jsonPath = join(folder, 'train_step_cases.json');

  describe(`onnx training step parity, webgpu provider (${label})`, () => {
    if (!existsSync(tensorsPath) || !existsSync(jsonPath)) {
      it.skip(`${label}: onnx training step on webgpu: ${skipNote(folder, 'train_step_cases.safetensors + train_step_cases.json')}`, () => {});
      return;
    }
    const meta = readMeta(jsonPath);
    const env = webgpuEnv();
    const f16Env = webgpuF16Env();
    let cases: Cases;
    const lines: string[] = [];

    beforeAll(async () => {
      cases = await Cases.open(folder, 'train_step_cases.safetensors');
    });
    afterAll(async () => {
      await cases?.close();
      if (lines.length) console.log(`[parity onnx webgpu] ${label} training step:\n  ${lines.join('\n  ')}`);
    });

    const skipIfMissing = (ctx: { skip: (note?: string) => never }) => {
      const missing = caseKeys('singlora', meta.layers).filter((k) => !cases.has(k));
      if (missing.length)
        ctx.skip(skipNote(folder, `${missing.slice(0, 3).join(', ')} in train_step_cases.safetensors`));
    };

    it(
      `${label}: one onnx singlora training step on webgpu (float32, no cpu fallback) matches PyTorch (loss, gradients, grad norm, clipping + AdamW)`,
      async (ctx) => {
        if (typeof env === 'string') return skipOrFail(ctx, 'swiftshader', env);
        skipIfMissing(ctx);
        const { runs, wallMs } = await runChild(folder, 'webgpu', ['float32'], env);
        const step = stepOf(runs, 'float32', (error) => {
          const why = noAdapter(error);
          if (why) skipOrFail(ctx, 'swiftshader', why);
        });
        expect(step.providers).toEqual(['webgpu']);
        lines.push(`float32: session ${step.createMs} ms, step ${step.stepMs} ms, child process ${wallMs} ms`);
        const floats = (xs: number[][]) => xs.map((x) => Float32Array.from(x));
        await checkStep(
          cases,
          meta,
          'singlora',
          { loss: step.loss, gradNorm: step.gradNorm, grads: floats(step.grads), after: floats(step.after) },
          'float32',
          (line) => lines.push(line),
        );
      },
      CHILD_TIMEOUT_MS + 30_000,
    );

    const checkFloat16 = async (step: ChildStep, where: string) => {
      const refLoss = (await cases.get('singlora.loss')).data[0];
      const c = clipFactorOf(meta, (await cases.get('singlora.grad_norm')).data[0]);
      const grads = compareGrads(step, await referenceGrads(cases, meta), c, F16_REL_TO_MAX);
      lines.push(
        `float16 on ${where}: worst grad max|diff|/max|ref| vs float32 ${grads.worst.rel.toExponential(2)} (${grads.worst.name}); ` +
          `loss rel ${(Math.abs(step.loss - refLoss) / Math.abs(refLoss)).toExponential(2)}; loss scale ${step.lossScale}; session ${step.createMs} ms, step ${step.stepMs} ms`,
      );
      expect(grads.failures, `float16 gradients beyond ${F16_REL_TO_MAX}·max|ref| of float32's`).toEqual([]);
    };

    it(
      `${label}: onnx singlora training step on webgpu in float16: every gradient within ${F16_REL_TO_MAX}·max|ref| of float32's`,
      async (ctx) => {
        if (typeof f16Env === 'string') return skipOrFail(ctx, 'lavapipe', f16Env);
        skipIfMissing(ctx);
        const { runs } = await runChild(folder, 'webgpu', ['float16'], f16Env);
        const step = stepOf(runs, 'float16', (error) => {
          const why = noAdapter(error);
          if (why) skipOrFail(ctx, 'lavapipe', why);
        });
        expect(step.providers).toEqual(['webgpu']);
        await checkFloat16(step, 'webgpu');
      },
      CHILD_TIMEOUT_MS + 30_000,
    );

    it(
      `${label}: onnx singlora training step, the float16 graph on the cpu provider: every gradient within ${F16_REL_TO_MAX}·max|ref| of float32's`,
      async (ctx) => {
        skipIfMissing(ctx);
        const { runs } = await runChild(folder, 'cpu', ['float16'], process.env);
        const step = stepOf(runs, 'float16');
        expect(step.providers).toEqual(['cpu']);
        await checkFloat16(step, 'cpu');
      },
      CHILD_TIMEOUT_MS + 30_000,
    );
  });
}
