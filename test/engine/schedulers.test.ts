/**
 * Scheduler contract tests that need no reference tensors: naming and config resolution,
 * errors, DDIM η, the contract on plain arrays (arguments unchanged, history cleared by reset and
 * setTimesteps), the DDPM forward process (no tensor leaks), and the numpy helpers. Parity with diffusers is in test/parity/schedulers.parity.test.ts.
 */
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { tf } from '../../src-main/engine/backend/tf.ts';
import { randn, Rng } from '../../src-main/engine/random.ts';
import { npArange, npLinspace, roundHalfEven, torchLinspaceF32 } from '../../src-main/engine/schedulers/float32.ts';
import {
  createScheduler,
  DDIMScheduler,
  DISPLAY_NAMES,
  EulerDiscreteScheduler,
  SCHEDULER_NAMES,
  schedulerDisplayName,
  type Scheduler,
  type SchedulerName,
} from '../../src-main/engine/schedulers/index.ts';
import {
  parseSchedulerConfig,
  readSchedulerConfig,
  type RawSchedulerConfig,
} from '../../src-main/engine/schedulers/schedulerConfig.ts';
import { maxAbsDiff, useBackend } from '../helpers/backend.ts';
import { FIXTURES } from '../helpers/fixtures.ts';

useBackend('wasm');

let sd15: RawSchedulerConfig;
beforeAll(async () => {
  // SD-1.5's scheduler_config.json content (PNDM, scaled_linear, steps_offset 1, skip_prk_steps).
  sd15 = await readSchedulerConfig(join(FIXTURES, 'tiny-a', 'model', 'scheduler', 'scheduler_config.json'));
});

const SHAPE = [1, 4, 6, 5];

/** eps = 0.1 x + 0.05 sin(t/100), the parity suite's fake model. */
function fakeModel(x: Float32Array, t: number): Float32Array {
  const b = Math.fround(0.05 * Math.sin(t / 100));
  return x.map((v) => Math.fround(v * 0.1) + b);
}

/** Runs `steps` steps (all when omitted) and returns the final sample; checks no argument is changed. */
function run(s: Scheduler, seed: number, steps = s.timesteps.length): Float32Array {
  const rng = new Rng(seed);
  let x: Float32Array = rng.normal(SHAPE).map((v) => v * s.initNoiseSigma);
  for (const t of s.timesteps.slice(0, steps)) {
    const xIn = s.scaleModelInput(x, t);
    const eps = fakeModel(xIn, t);
    const noise = s.needsNoise ? rng.normal(SHAPE) : undefined;
    const copies = [x, eps, noise].map((a) => a?.slice());
    const next = s.step(eps, t, x, noise);
    expect([x, eps, noise], `${s.name} t=${t}: step changed an argument`).toEqual(copies);
    expect(next).not.toBe(x);
    x = next;
  }
  return x;
}

describe('createScheduler', () => {
  it('rejects an unknown name and lists the valid ones', () => {
    expect(() => createScheduler('k_lms', sd15)).toThrow(
      /unknown scheduler 'k_lms'; valid names: from-model, pndm, ddim, euler, euler-a, dpmpp-2m, dpmpp-2m-karras, ddpm/,
    );
  });

  it('builds every name with its A1111 display name', () => {
    const want: Record<SchedulerName, [string, string]> = {
      pndm: ['PNDMScheduler', 'PNDM'],
      ddim: ['DDIMScheduler', 'DDIM'],
      euler: ['EulerDiscreteScheduler', 'Euler'],
      'euler-a': ['EulerAncestralDiscreteScheduler', 'Euler a'],
      'dpmpp-2m': ['DPMSolverMultistepScheduler', 'DPM++ 2M'],
      'dpmpp-2m-karras': ['DPMSolverMultistepScheduler', 'DPM++ 2M Karras'],
      ddpm: ['DDPMScheduler', 'DDPM'],
    };
    for (const name of SCHEDULER_NAMES) {
      const s = createScheduler(name, sd15);
      expect(s.name).toBe(name);
      expect([s.className, s.displayName]).toEqual(want[name]);
      expect(schedulerDisplayName(name)).toBe(DISPLAY_NAMES[name]);
    }
  });

  it("'from-model' builds the class the JSON names, with its settings", () => {
    expect(createScheduler('from-model', sd15).className).toBe('PNDMScheduler');
    const ddim = parseSchedulerConfig(
      '{"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "set_alpha_to_one": false}',
      'ddim.json',
    );
    const s = createScheduler('from-model', ddim, { eta: 0.5 });
    expect(s).toBeInstanceOf(DDIMScheduler);
    expect((s as DDIMScheduler).eta).toBe(0.5);
    const karras = parseSchedulerConfig(
      '{"_class_name": "DPMSolverMultistepScheduler", "use_karras_sigmas": true}',
      'dpm.json',
    );
    expect(createScheduler('from-model', karras).displayName).toBe('DPM++ 2M Karras');
    const lms = parseSchedulerConfig('{"_class_name": "LMSDiscreteScheduler"}', 'lms.json');
    expect(() => createScheduler('from-model', lms)).toThrow(
      /lms.json: _class_name "LMSDiscreteScheduler" is not a scheduler this project implements.*pick one by name/,
    );
  });

  it("fills keys absent from the model's JSON with each class's own defaults (diffusers from_config)", () => {
    const cfg = (name: SchedulerName) => createScheduler(name, sd15).config as unknown as Record<string, unknown>;
    // from the JSON, for every class
    for (const name of SCHEDULER_NAMES) {
      expect(cfg(name)).toMatchObject({
        betaSchedule: 'scaled_linear',
        betaStart: 0.00085,
        betaEnd: 0.012,
        stepsOffset: 1,
      });
    }
    // absent from the JSON: each class's default
    expect(cfg('pndm').timestepSpacing).toBe('leading');
    expect(cfg('ddim').timestepSpacing).toBe('leading');
    expect(cfg('ddpm').timestepSpacing).toBe('leading');
    expect(cfg('euler').timestepSpacing).toBe('linspace');
    expect(cfg('euler-a').timestepSpacing).toBe('linspace');
    expect(cfg('dpmpp-2m').timestepSpacing).toBe('linspace');
    expect(cfg('ddim')).toMatchObject({ clipSample: false, setAlphaToOne: false }); // JSON values, not DDIM's defaults (true, true)
    expect(cfg('dpmpp-2m-karras')).toMatchObject({
      useKarrasSigmas: true,
      algorithmType: 'dpmsolver++',
      solverOrder: 2,
    });
  });

  it('reads the JSON keys only at the boundary: camelCase in code, the file keys back from fileConfig()', () => {
    const snake = (name: string) => name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
    for (const name of SCHEDULER_NAMES) {
      const s = createScheduler(name, sd15);
      const config = s.config as unknown as Record<string, unknown>;
      const file = s.fileConfig();
      expect(Object.keys(file).sort(), name).toEqual(Object.keys(config).map(snake).sort());
      for (const [key, value] of Object.entries(config)) expect(file[snake(key)], `${name}.${key}`).toEqual(value);
      for (const [key, value] of Object.entries(sd15.values))
        if (key in file) expect(file[key], `${name}: ${key}`).toEqual(value);
    }
  });

  it('checks values given in code by their code names', () => {
    expect(() => EulerDiscreteScheduler.fromConfig(sd15, { timestepSpacing: 'middle' as 'leading' })).toThrow(
      /EulerDiscreteScheduler.timestepSpacing \(given in code\) is "middle"; expected one of linspace, leading, trailing/,
    );
    expect(() => EulerDiscreteScheduler.fromConfig(sd15, { timestep_spacing: 'leading' } as object)).toThrow(
      /unknown config field 'timestep_spacing'.*timestepSpacing/,
    );
  });

  it('names the file, class, key, value and allowed values on a bad config', () => {
    const bad = parseSchedulerConfig(
      '{"beta_schedule": "cosine", "num_train_timesteps": 1000}',
      '/m/scheduler_config.json',
    );
    expect(() => createScheduler('ddim', bad)).toThrow(
      '/m/scheduler_config.json: DDIMScheduler.beta_schedule is "cosine"; expected one of linear, scaled_linear, squaredcos_cap_v2',
    );
    const badSteps = parseSchedulerConfig('{"steps_offset": -1}', 's.json');
    expect(() => createScheduler('euler', badSteps)).toThrow(
      /s.json: EulerDiscreteScheduler.steps_offset is -1; expected an integer >= 0/,
    );
    expect(() => parseSchedulerConfig('[1]', 'a.json')).toThrow(/a.json: scheduler config must be a JSON object/);
  });

  it('refuses configurations it does not implement, saying what to change', () => {
    const prk = parseSchedulerConfig('{"_class_name": "PNDMScheduler"}', 'p.json'); // PNDM default skip_prk_steps=false
    expect(() => createScheduler('from-model', prk)).toThrow(
      /PNDMScheduler: skip_prk_steps=false is not supported.*set it true/,
    );
    const dpm = parseSchedulerConfig(
      '{"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "dpmsolver"}',
      'd.json',
    );
    expect(() => createScheduler('from-model', dpm)).toThrow(/algorithm_type="dpmsolver" is not supported/);
    expect(() => createScheduler('euler', sd15, { eta: 0.3 })).toThrow(/scheduler 'euler' has no eta/);
  });
});

describe('timestep spacing and init_noise_sigma rules (diffusers 0.27.2)', () => {
  it('Euler with leading spacing: integer timesteps and initNoiseSigma = sqrt(sigma_max^2 + 1)', () => {
    const s = EulerDiscreteScheduler.fromConfig(sd15, { timestepSpacing: 'leading' });
    s.setTimesteps(20);
    expect(s.timesteps).toEqual(Array.from({ length: 20 }, (_, i) => 951 - 50 * i));
    const sigmaMax = Math.max(...s.sigmas);
    expect(s.initNoiseSigma).toBe(Math.fround(Math.sqrt(Math.fround(Math.fround(sigmaMax * sigmaMax) + 1))));
    const lin = createScheduler('euler', sd15);
    lin.setTimesteps(20);
    expect(lin.initNoiseSigma).toBe(Math.max(...(lin as EulerDiscreteScheduler).sigmas)); // sigma_max, not sqrt(sigma^2+1)
  });

  it('trailing spacing: round(arange(T, 0, -T/N)) - 1', () => {
    const ddim = DDIMScheduler.fromConfig(sd15, { timestepSpacing: 'trailing' });
    ddim.setTimesteps(20);
    expect(ddim.timesteps).toEqual(Array.from({ length: 20 }, (_, i) => 999 - 50 * i));
    ddim.setTimesteps(3);
    expect(ddim.timesteps).toEqual([999, 666, 332]); // 1000, 666.67, 333.33 rounded
  });

  it('setTimesteps rejects impossible step counts', () => {
    const s = createScheduler('ddim', sd15);
    expect(() => s.setTimesteps(0)).toThrow(
      /DDIMScheduler.setTimesteps: num_inference_steps must be an integer in \[1, 1000\]/,
    );
    expect(() => s.setTimesteps(1001)).toThrow(/\[1, 1000\]/);
  });
});

describe('DDIM eta', () => {
  it('eta > 0 needs noise, differs from eta = 0, and is reproducible from the same noise', () => {
    const s0 = createScheduler('ddim', sd15);
    const s1 = createScheduler('ddim', sd15, { eta: 1 });
    expect(s0.needsNoise).toBe(false);
    expect(s1.needsNoise).toBe(true);
    s0.setTimesteps(20);
    s1.setTimesteps(20);
    const x = new Rng(1).normal(SHAPE);
    const eps = new Rng(2).normal(SHAPE);
    const z = new Rng(3).normal(SHAPE);
    const t = s1.timesteps[3];
    expect(() => s1.step(eps, t, x)).toThrow(/DDIMScheduler.step: eta=1 needs noise of the sample's 120 values/);
    const a = s0.step(eps, t, x, z);
    const b = s1.step(eps, t, x, z);
    const c = s1.step(eps, t, x, z);
    const d = maxAbsDiff(b, a);
    expect(d.maxAbs).toBeGreaterThan(0.1);
    expect([...c]).toEqual([...b]);
  });

  it('eta = 1 is the DDPM posterior step (same noise, same result) away from the final step', () => {
    const ddim = createScheduler('ddim', sd15, { eta: 1 });
    const ddpm = createScheduler('ddpm', sd15);
    ddim.setTimesteps(20);
    ddpm.setTimesteps(20);
    expect(ddpm.timesteps).toEqual(ddim.timesteps);
    for (const t of ddim.timesteps.slice(0, -1)) {
      const [x, eps, z] = [1, 2, 3].map((k) => new Rng(t * 10 + k).normal(SHAPE));
      const a = ddim.step(eps, t, x, z);
      const b = ddpm.step(eps, t, x, z);
      expect(maxAbsDiff(a, b).rel, `t=${t}`).toBeLessThan(1e-5);
    }
  });
});

describe('noise arguments', () => {
  it('Euler a needs noise of the sample shape', () => {
    const s = createScheduler('euler-a', sd15);
    s.setTimesteps(10);
    const x = new Float32Array(120);
    const bad = new Float32Array(144);
    expect(() => s.step(x, s.timesteps[0], x)).toThrow(
      /EulerAncestralDiscreteScheduler.step: ancestral sampling needs noise of the sample's 120 values/,
    );
    expect(() => s.step(x, s.timesteps[0], x, bad)).toThrow(/noise has 144 values but the sample has 120/);
    expect(() => s.step(bad, s.timesteps[0], x, x)).toThrow(/the model output has 144 values but the sample has 120/);
  });

  it('timesteps not in the schedule are refused (index-based schedulers)', () => {
    const s = createScheduler('dpmpp-2m', sd15);
    s.setTimesteps(20);
    const x = new Float32Array(120);
    expect(() => s.step(x, 998, x)).toThrow(/DPMSolverMultistepScheduler: timestep 998 is not in the schedule/);
  });
});

describe('the contract on plain arrays', () => {
  for (const name of SCHEDULER_NAMES) {
    it(`${name}: step leaves its arguments unchanged; reset and setTimesteps mid-run rewind to the same run`, () => {
      const s = createScheduler(name, sd15);
      s.setTimesteps(20);
      const full = run(s, 11);

      s.setTimesteps(20);
      run(s, 11, 7); // mid-run: PNDM / DPM hold history here
      s.reset();
      // reset really rewinds: a rerun equals the first run
      expect([...run(s, 11)]).toEqual([...full]);

      s.setTimesteps(20);
      run(s, 11, 5);
      s.setTimesteps(20);
      expect([...run(s, 11)]).toEqual([...full]);
    });
  }

  for (const name of ['pndm', 'euler', 'euler-a', 'dpmpp-2m'] as const) {
    it(`${name}: stepping past the end of the schedule is an error`, () => {
      const s = createScheduler(name, sd15);
      s.setTimesteps(4);
      run(s, 1);
      const x = new Float32Array(120);
      const t = s.timesteps[s.timesteps.length - 1];
      expect(() => s.step(x, t, x, x)).toThrow(/timesteps of this run are done; call setTimesteps/);
    });
  }

  it('scaleModelInput returns a new array, even when it is the identity', () => {
    const s = createScheduler('ddim', sd15);
    s.setTimesteps(5);
    const x = new Float32Array(120).fill(1);
    const y = s.scaleModelInput(x, s.timesteps[0]);
    expect(y).not.toBe(x);
    expect([...y]).toEqual([...x]);
  });
});

describe('DDPM forward process', () => {
  it('checks its timesteps, and target() follows prediction_type', () => {
    const ddpm = createScheduler('ddpm', sd15);
    const x0 = randn(new Rng(1), [2, 4, 3, 3]);
    const eps = randn(new Rng(2), [2, 4, 3, 3]);
    expect(() => ddpm.addNoise(x0, eps, [5])).toThrow(/DDPMScheduler.addNoise: got 1 timesteps for a batch of 2/);
    expect(() => ddpm.addNoise(x0, eps, [5, 1000])).toThrow(
      /timestep 1000 \(batch item 1\) is not an integer in \[0, 1000\)/,
    );
    const before = tf.memory().numTensors;
    const noisy = ddpm.addNoise(x0, eps, [0, 999]);
    // x_t = sqrt(a) x0 + sqrt(1-a) eps, checked against ᾱ directly
    const a = [ddpm.alphasCumprod[0], ddpm.alphasCumprod[999]];
    const [xd, ed, nd] = [x0.dataSync(), eps.dataSync(), noisy.dataSync()];
    for (let i = 0; i < nd.length; i++) {
      const ab = a[Math.floor(i / 36)];
      expect(nd[i]).toBeCloseTo(Math.sqrt(ab) * xd[i] + Math.sqrt(1 - ab) * ed[i], 5);
    }
    const target = ddpm.target(x0, eps, [0, 999]);
    expect([...target.dataSync()]).toEqual([...ed]);
    const vddpm = createScheduler('ddpm', parseSchedulerConfig('{"prediction_type": "v_prediction"}', 'v.json'));
    const v1 = vddpm.target(x0, eps, [3, 500]);
    const v2 = vddpm.getVelocity(x0, eps, [3, 500]);
    expect([...v1.dataSync()]).toEqual([...v2.dataSync()]);
    tf.dispose([noisy, target, v1, v2]);
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose([x0, eps]);
  });
});

describe('numpy / torch helpers', () => {
  it('roundHalfEven is np.round', () => {
    expect([0.5, 1.5, 2.5, -0.5, -1.5, 499.5, 2.4999].map(roundHalfEven)).toEqual([0, 2, 2, -0, -2, 500, 2]);
  });

  it('npLinspace and npArange follow numpy', () => {
    expect(npLinspace(0, 999, 3)).toEqual([0, 499.5, 999]);
    expect(npLinspace(0, 1, 1)).toEqual([0]);
    expect(npArange(1000, 0, -1000 / 3)).toEqual([
      1000,
      1000 + (1000 - 1000 / 3 - 1000),
      1000 + 2 * (1000 - 1000 / 3 - 1000),
    ]);
    expect(npArange(0, 5, 1)).toEqual([0, 1, 2, 3, 4]);
  });

  it('torchLinspaceF32 hits both endpoints and is monotone', () => {
    const l = torchLinspaceF32(0.0001, 0.02, 1000);
    expect(l[0]).toBe(Math.fround(0.0001));
    expect(l[999]).toBe(Math.fround(0.02));
    for (let i = 1; i < l.length; i++) expect(l[i]).toBeGreaterThan(l[i - 1]);
  });
});
