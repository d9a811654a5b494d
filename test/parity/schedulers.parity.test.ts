/**
 * Scheduler parity against diffusers v0.27.2 (test/fixtures/REFERENCE.md, scheduler_cases section).
 *
 * For every folder in PARITY_FIXTURES that has `scheduler_cases.safetensors`:
 *   - betas / alphas_cumprod: bit-exact float32;
 *   - each scheduler's config equals diffusers' `effective_config` for `X.from_config(pndm.config)`;
 *   - for N in {20, 50}: timesteps and sigmas bit-exact as float32, init_noise_sigma exact, and the
 *     trajectory of the README's fake model within 1e-5 · max|ref|;
 *   - DDPM add_noise / get_velocity within 1e-5 · max|ref|.
 */
import { existsSync, readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tf } from '../../src-main/engine/backend/tf.ts';
import { createScheduler, type DDPMScheduler, type Scheduler } from '../../src-main/engine/schedulers/index.ts';
import {
  parseSchedulerConfig,
  readSchedulerConfig,
  type RawSchedulerConfig,
} from '../../src-main/engine/schedulers/schedulerConfig.ts';
import { maxAbsDiff, useBackend } from '../helpers/backend.ts';
import { Cases, parityFolders, skipNote } from '../helpers/fixtures.ts';

useBackend('wasm');

/** fixture key -> our scheduler name */
const SCHEDULERS = {
  pndm: 'pndm',
  ddim: 'ddim',
  euler: 'euler',
  euler_a: 'euler-a',
  dpmpp_2m: 'dpmpp-2m',
  dpmpp_2m_karras: 'dpmpp-2m-karras',
} as const;
type FixtureKey = keyof typeof SCHEDULERS;

interface CaseJson {
  timesteps: number[];
  sigmas: number[] | null;
  init_noise_sigma: number;
  num_model_evals: number;
  noise_key: string | null;
}
interface SchedulerJson {
  class: string;
  effective_config: Record<string, unknown>;
  [n: string]: unknown;
}
interface ScheduleCasesJson {
  schedulers: Record<string, SchedulerJson>;
}

const TOL = 1e-5;

/** The README's fake model: eps = 0.1 · x_in + 0.05 · sin(float32(t) / 100), in float32. */
function fakeModel(xIn: Float32Array, t: number): Float32Array {
  const f = Math.fround;
  const bias = f(0.05 * f(Math.sin(f(f(t) / 100))));
  return xIn.map((v) => f(v * f(0.1)) + bias);
}

/** Runs the README loop; returns the trajectory [len(timesteps)+1, ...] flattened. */
function trajectory(s: Scheduler, init: Float32Array, noise?: { data: Float32Array; perStep: number }): Float32Array {
  const rows: Float32Array[] = [];
  let sample: Float32Array = init.map((v) => v * s.initNoiseSigma);
  rows.push(sample);
  s.timesteps.forEach((t, i) => {
    const xIn = s.scaleModelInput(sample, t);
    const eps = fakeModel(xIn, t);
    const z = noise ? noise.data.subarray(i * noise.perStep, (i + 1) * noise.perStep) : undefined;
    sample = s.step(eps, t, sample, z);
    rows.push(sample);
  });
  const out = new Float32Array(rows.reduce((a, r) => a + r.length, 0));
  rows.forEach((r, i) => out.set(r, i * r.length));
  return out;
}

/** JSON with Python's bare -Infinity, as the fixture writes it. */
function readCasesJson(path: string): ScheduleCasesJson {
  return parseSchedulerConfig(readFileSync(path, 'utf8'), path).values as unknown as ScheduleCasesJson;
}

for (const folder of parityFolders()) {
  const name = basename(folder);
  const tensorsPath = join(folder, 'scheduler_cases.safetensors');
  const jsonPath = join(folder, 'scheduler_cases.json');
  const modelConfigPath = join(folder, 'model', 'scheduler', 'scheduler_config.json');

  if (!existsSync(tensorsPath) || !existsSync(jsonPath) || !existsSync(modelConfigPath)) {
    describe(`schedulers parity (${name})`, () => {
      skipNote(folder, 'scheduler_cases.safetensors + scheduler_cases.json + model/scheduler/scheduler_config.json');
      it.skip('no scheduler cases in this folder', () => {});
    });
    continue;
  }

  const json = readCasesJson(jsonPath);

  describe(`schedulers parity (${name})`, () => {
    let cases: Cases;
    let model: RawSchedulerConfig;
    const errors: string[] = [];

    beforeAll(async () => {
      cases = await Cases.open(folder, 'scheduler_cases.safetensors');
      model = await readSchedulerConfig(modelConfigPath);
    });
    afterAll(async () => {
      await cases?.close();
      if (errors.length)
        console.log(`[parity] ${name} scheduler trajectories, max |ours − ref| / max|ref|:\n  ${errors.join('\n  ')}`);
    });

    it('betas and alphas_cumprod are bit-exact float32 (torch.linspace + cumprod)', async () => {
      const betas = (await cases.get('betas')).data;
      const alphasCumprod = (await cases.get('alphas_cumprod')).data;
      const ddpm = createScheduler('ddpm', model);
      expect(ddpm.betas.length).toBe(betas.length);
      const badBetas = [...betas].filter((b, i) => b !== ddpm.betas[i]).length;
      const badAc = [...alphasCumprod].filter((a, i) => a !== ddpm.alphasCumprod[i]).length;
      expect(badBetas, 'betas differing from the reference').toBe(0);
      expect(badAc, 'alphas_cumprod differing from the reference').toBe(0);
      for (const key of Object.keys(SCHEDULERS) as FixtureKey[]) {
        const s = createScheduler(SCHEDULERS[key], model);
        expect([...s.alphasCumprod], `${key}.alphasCumprod`).toEqual([...alphasCumprod]);
      }
    });

    for (const key of Object.keys(SCHEDULERS) as FixtureKey[]) {
      const ref = json.schedulers[key];
      if (!ref) {
        it.skip(`${key}: ${skipNote(folder, `schedulers.${key} in ${basename(jsonPath)}`)}`, () => {});
        continue;
      }

      it(`${key}: config equals diffusers' effective_config of ${ref.class}.from_config(pndm.config)`, () => {
        const s = createScheduler(SCHEDULERS[key], model);
        expect(s.className).toBe(ref.class);
        const ours = s.fileConfig();
        for (const [k, v] of Object.entries(ours)) {
          expect(k in ref.effective_config, `${key}: config key ${k} missing from the reference effective_config`).toBe(
            true,
          );
          expect(v, `${key}.${k}`).toEqual(ref.effective_config[k]);
        }
      });

      for (const N of [20, 50]) {
        const c = ref[String(N)] as CaseJson | undefined;
        if (!c) {
          it.skip(`${key}, ${N} steps: ${skipNote(folder, `schedulers.${key}.${N} in ${basename(jsonPath)}`)}`, () => {});
          continue;
        }

        it(`${key}, ${N} steps: timesteps, sigmas and init_noise_sigma are exact`, async () => {
          const s = createScheduler(SCHEDULERS[key], model);
          s.setTimesteps(N);
          const refT = (await cases.get(`${key}.${N}.timesteps`)).data;
          expect([...s.timesteps]).toEqual([...refT]);
          expect([...s.timesteps]).toEqual(c.timesteps);
          expect(s.timesteps.length).toBe(c.num_model_evals);
          if (c.sigmas) {
            const refS = (await cases.get(`${key}.${N}.sigmas`)).data;
            const sigmas = (s as unknown as { sigmas: readonly number[] }).sigmas;
            expect([...sigmas]).toEqual([...refS]);
          }
          expect(s.initNoiseSigma).toBe(c.init_noise_sigma);
        });

        it(`${key}, ${N} steps: trajectory within ${TOL}·max|ref|`, async () => {
          const s = createScheduler(SCHEDULERS[key], model);
          s.setTimesteps(N);
          const init = await cases.get('init_latent');
          const ref = await cases.get(`${key}.${N}.trajectory`);
          expect(ref.shape).toEqual([s.timesteps.length + 1, ...init.shape]);
          let noise: { data: Float32Array; perStep: number } | undefined;
          if (c.noise_key) {
            const n = await cases.get(c.noise_key);
            expect(n.shape).toEqual([s.timesteps.length, ...init.shape]);
            noise = { data: n.data, perStep: init.data.length };
          }
          const ours = trajectory(s, init.data, noise);
          const { maxAbs, maxRef, rel } = maxAbsDiff(ours, ref.data);
          errors.push(
            `${key}.${N}: ${rel.toExponential(2)} (max abs ${maxAbs.toExponential(2)}, max|ref| ${maxRef.toFixed(2)})`,
          );
          expect(rel).toBeLessThanOrEqual(TOL);
        });
      }
    }

    it('ddpm: add_noise and get_velocity within 1e-5·max|ref|', async (ctx) => {
      const keys = [
        'ddpm.add_noise.original',
        'ddpm.add_noise.noise',
        'ddpm.add_noise.timesteps',
        'ddpm.add_noise.out',
        'ddpm.get_velocity.out',
      ];
      const missing = keys.filter((k) => !cases.has(k));
      if (missing.length) return ctx.skip(skipNote(folder, `${missing.join(', ')} in scheduler_cases.safetensors`));
      const ddpm: DDPMScheduler = createScheduler('ddpm', model);
      const x0 = await cases.get('ddpm.add_noise.original');
      const eps = await cases.get('ddpm.add_noise.noise');
      const ts = (await cases.getInt('ddpm.add_noise.timesteps')).data;
      const refNoisy = await cases.get('ddpm.add_noise.out');
      const refV = await cases.get('ddpm.get_velocity.out');
      const x0T = tf.tensor(x0.data, x0.shape, 'float32');
      const epsT = tf.tensor(eps.data, eps.shape, 'float32');
      const noisy = ddpm.addNoise(x0T, epsT, ts);
      const v = ddpm.getVelocity(x0T, epsT, ts);
      const a = maxAbsDiff(noisy.dataSync(), refNoisy.data);
      const b = maxAbsDiff(v.dataSync(), refV.data);
      tf.dispose([x0T, epsT, noisy, v]);
      errors.push(`ddpm.add_noise: ${a.rel.toExponential(2)}; ddpm.get_velocity: ${b.rel.toExponential(2)}`);
      expect(a.rel).toBeLessThanOrEqual(TOL);
      expect(b.rel).toBeLessThanOrEqual(TOL);
    });
  });
}
