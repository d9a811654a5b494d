/**
 * `npm run experiment`: SingLoRA vs LoRA on the toy model (models/toy-sd), the measurement the
 * SingLoRA paper makes on SD 1.5 DreamBooth, in a world a laptop CPU can train in.
 *
 * Same subject photos (models/toy-sd-subject), same seeds, same training seed for every run; for
 * each method (singlora, lora) x rank (4, 8) x learning rate, trains an adapter and scores every
 * checkpoint with the toy fidelity scores (eval/toyFidelity.ts): subject fidelity (does the
 * subject appear) and prompt fidelity (does the requested background colour appear), in the
 * new contexts of eval/toyEvaluate.ts. Writes docs/experiments/results.json, the plot
 * docs/experiments/fidelity-vs-lr.png, and the results table between the markers in
 * docs/experiments.md.
 *
 * Every setting trains once per training seed; the tables report the mean over seeds, and the
 * seed-to-seed spread beside the learning-rate spread, so that one can tell them apart.
 *
 *   nice -n 5 npx tsx scripts/experiment.ts [--steps 200] [--every 50] [--lrs 5e-4,1e-3,2e-3,4e-3] [--train-seeds 7,8] [--seeds 11,12,13,14,15,16]
 */
import { existsSync } from 'node:fs';
import { mkdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readAdapterFile } from '../src-main/engine/adapters/adapterFile.ts';
import { initBackend } from '../src-main/engine/backend/tf.ts';
import { readToyPhotos, scoreToyModel, TOY_SAMPLING, toyProbes } from '../src-main/engine/eval/toyEvaluate.ts';
import { decodeImage, encodeImage } from '../src-main/engine/image/sharp.ts';
import { atomicWriteFile, atomicWriteJson } from '../src-main/engine/io/atomic.ts';
import { REPO_ROOT } from '../src-main/engine/paths.ts';
import { StableDiffusion } from '../src-main/engine/pipeline/stableDiffusion.ts';
import { TOY_MODEL_DIR, TOY_SUBJECT_DIR } from '../src-main/engine/toy/toyModel.ts';
import { drawScene, subjectScenes } from '../src-main/engine/toy/toyWorld.ts';
import { train } from '../src-main/engine/train/trainer.ts';
import { listImageFiles } from '../src-main/cli/eval.ts';

const DOCS = join(REPO_ROOT, 'docs/experiments.md');
const OUT = join(REPO_ROOT, 'docs/experiments');

interface Row {
  method: 'singlora' | 'lora';
  rank: number;
  lr: number;
  seed: number;
  params: number;
  checkpoints: { step: number; subject: number; prompt: number }[];
  /** The same checkpoints sampled at `config.lowGuidance`. */
  lowGuidance: { step: number; subject: number; prompt: number }[];
  finalLoss: number;
  seconds: number;
}

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

const config = {
  steps: Number(arg('--steps') ?? 200),
  every: Number(arg('--every') ?? 50),
  lrs: (arg('--lrs') ?? '5e-4,1e-3,2e-3,4e-3').split(',').map(Number),
  /** Evaluation seeds: one image per probe prompt and seed at every checkpoint. */
  seeds: (arg('--seeds') ?? '11,12,13,14,15,16').split(',').map(Number),
  /** Training seeds (initialisation, image order, noise, timesteps): every setting trains once per seed. */
  trainSeeds: (arg('--train-seeds') ?? '7,8').split(',').map(Number),
  methods: ['singlora', 'lora'] as const,
  ranks: [4, 8],
  /** alpha = rank: scale alpha / r = 1 for both methods. */
  alphaPerRank: 1,
  /** SingLoRA's ramp T: a quarter of the steps, as the demo. */
  rampSteps: Math.floor(Number(arg('--steps') ?? 200) / 4),
  /** The run's probes (toyEvaluate.ts `toyProbes`), from the subject's photos as the toy world draws them. */
  probes: toyProbes(
    'sks',
    'ball',
    subjectScenes().map((s) => drawScene(s)),
  ),
  sampling: TOY_SAMPLING,
  /**
   * A second, low guidance scale every checkpoint is also sampled at. At 7.5 the base model's
   * own reading of the prompt is amplified 7.5 times while an adapter's text-independent shift
   * counts once, so an adapter can fit its photos and barely show (docs/experiments.md).
   */
  lowGuidance: Number(arg('--low-guidance') ?? 2),
};

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const std = (xs: number[]) => Math.sqrt(mean(xs.map((x) => (x - mean(xs)) ** 2)));

/** One setting (method, rank, learning rate): its runs over the training seeds, averaged. */
interface Setting {
  method: Row['method'];
  rank: number;
  lr: number;
  params: number;
  /** Per checkpoint step, the mean over seeds. */
  checkpoints: { step: number; subject: number; prompt: number }[];
  /** Final-checkpoint subject fidelity of each seed's run. */
  finalSubjects: number[];
}

/** The settings, averaged over seeds, as sampled at the main guidance scale or at the low one. */
function settingsOf(rows: Row[], which: 'checkpoints' | 'lowGuidance' = 'checkpoints'): Setting[] {
  const out: Setting[] = [];
  for (const r of rows) {
    if (out.some((o) => o.method === r.method && o.rank === r.rank && o.lr === r.lr)) continue;
    const runs = rows.filter((o) => o.method === r.method && o.rank === r.rank && o.lr === r.lr);
    const checkpoints = r[which].map((c, i) => ({
      step: c.step,
      subject: mean(runs.map((o) => o[which][i].subject)),
      prompt: mean(runs.map((o) => o[which][i].prompt)),
    }));
    out.push({
      method: r.method,
      rank: r.rank,
      lr: r.lr,
      params: r.params,
      checkpoints,
      finalSubjects: runs.map((o) => o[which][o[which].length - 1].subject),
    });
  }
  return out;
}

async function main(): Promise<void> {
  if (!existsSync(join(TOY_MODEL_DIR, 'unet/diffusion_pytorch_model.safetensors')))
    throw new Error(`experiment: the toy model is missing from ${TOY_MODEL_DIR}; run npm run build:toy-model`);
  const backend = await initBackend();
  const t0 = performance.now();
  console.log(`experiment: backend ${backend.name}; config ${JSON.stringify(config)}`);
  const work = join(tmpdir(), `singlora-experiment-${process.pid}`);
  await mkdir(OUT, { recursive: true });
  const photos = await readToyPhotos(listImageFiles(TOY_SUBJECT_DIR));
  const sd = await StableDiffusion.load(TOY_MODEL_DIR);
  const rows: Row[] = [];
  let base: { subject: number; prompt: number };
  let baseLow: { subject: number; prompt: number };
  try {
    const b = await scoreToyModel(sd, { photos, probes: config.probes, seeds: config.seeds });
    base = { subject: b.subject, prompt: b.prompt };
    const bl = await scoreToyModel(sd, {
      photos,
      probes: config.probes,
      seeds: config.seeds,
      guidanceScale: config.lowGuidance,
    });
    baseLow = { subject: bl.subject, prompt: bl.prompt };
    console.log(
      `base model: subject ${base.subject.toFixed(3)}, prompt ${base.prompt.toFixed(3)}; at guidance ${config.lowGuidance}: subject ${baseLow.subject.toFixed(3)}, prompt ${baseLow.prompt.toFixed(3)}`,
    );
    for (const method of config.methods) {
      for (const rank of config.ranks) {
        for (const lr of config.lrs)
          for (const seed of config.trainSeeds) {
            const t = performance.now();
            const runDir = join(work, `${method}-r${rank}-lr${lr}-seed${seed}`);
            const { manifest } = await train({
              base: TOY_MODEL_DIR,
              photos: TOY_SUBJECT_DIR,
              runDir,
              settings: {
                method,
                steps: config.steps,
                rank,
                alpha: rank * config.alphaPerRank,
                rampSteps: config.rampSteps,
                learningRate: lr,
                resolution: 64,
                triggerToken: 'sks',
                classWord: 'ball',
                checkpointEvery: config.every,
                sampleEvery: 0,
                seed,
              },
            });
            if (manifest.status !== 'completed')
              throw new Error(
                `${method} r${rank} lr ${lr} seed ${seed}: training ended ${manifest.status}: ${manifest.error}`,
              );
            const file = await readAdapterFile(join(runDir, manifest.checkpoints[0].adapter));
            let params = 0;
            for (const tensors of file.targets.values())
              for (const v of Object.values(tensors)) params += v.data.length;
            const checkpoints: Row['checkpoints'] = [];
            const lowGuidance: Row['lowGuidance'] = [];
            for (const c of manifest.checkpoints) {
              const s = await scoreToyModel(sd, {
                photos,
                probes: config.probes,
                seeds: config.seeds,
                adapter: join(runDir, c.adapter),
              });
              checkpoints.push({ step: c.step, subject: s.subject, prompt: s.prompt });
              const l = await scoreToyModel(sd, {
                photos,
                probes: config.probes,
                seeds: config.seeds,
                adapter: join(runDir, c.adapter),
                guidanceScale: config.lowGuidance,
              });
              lowGuidance.push({ step: c.step, subject: l.subject, prompt: l.prompt });
            }
            const row: Row = {
              method,
              rank,
              lr,
              seed,
              params,
              checkpoints,
              lowGuidance,
              finalLoss: manifest.losses[manifest.losses.length - 1].smoothed,
              seconds: (performance.now() - t) / 1000,
            };
            rows.push(row);
            console.log(
              `${method} r${rank} lr ${lr} seed ${seed}: ${params} params; ${checkpoints.map((c) => `step ${c.step}: subject ${c.subject.toFixed(3)} prompt ${c.prompt.toFixed(2)}`).join('; ')}; at guidance ${config.lowGuidance} final subject ${lowGuidance[lowGuidance.length - 1].subject.toFixed(3)} (${row.seconds.toFixed(0)} s)`,
            );
            await rm(runDir, { recursive: true, force: true });
          }
      }
    }
  } finally {
    sd.dispose();
  }
  const seconds = (performance.now() - t0) / 1000;
  await atomicWriteJson(join(OUT, 'results.json'), {
    config,
    backend: backend.name,
    seconds,
    base,
    baseLowGuidance: baseLow,
    rows,
  });
  await writePlot(settingsOf(rows), base, config.sampling.guidanceScale, 'fidelity-vs-lr.png');
  await writePlot(settingsOf(rows, 'lowGuidance'), baseLow, config.lowGuidance, 'fidelity-vs-lr-low-guidance.png');
  await writeTable(settingsOf(rows), base, settingsOf(rows, 'lowGuidance'), baseLow, seconds);
  console.log(`experiment done in ${seconds.toFixed(0)} s; results in ${OUT} and ${DOCS}`);
}

/** Final-checkpoint subject and prompt fidelity against the learning rate, one line per method x rank. */
async function writePlot(
  rows: Setting[],
  base: { subject: number; prompt: number },
  guidance: number,
  fileName: string,
): Promise<void> {
  const W = 900;
  const H = 380;
  const panels = [
    { key: 'subject' as const, title: `subject fidelity (final checkpoint), guidance ${guidance}`, x0: 60 },
    { key: 'prompt' as const, title: `prompt fidelity: requested background, guidance ${guidance}`, x0: 510 },
  ];
  const pw = 360;
  const ph = 260;
  const y0 = 50;
  const lrs = config.lrs;
  const lx = (lr: number, x0: number) =>
    x0 + (lrs.length === 1 ? pw / 2 : (Math.log10(lr / lrs[0]) / Math.log10(lrs[lrs.length - 1] / lrs[0])) * pw);
  const ly = (v: number) => y0 + ph - v * ph;
  const colours: Record<string, string> = {
    'singlora-4': '#d62728',
    'singlora-8': '#ff7f0e',
    'lora-4': '#1f77b4',
    'lora-8': '#17becf',
  };
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12"><rect width="${W}" height="${H}" fill="white"/>`,
  ];
  for (const p of panels) {
    parts.push(`<text x="${p.x0}" y="30" font-size="14">${p.title}</text>`);
    parts.push(`<rect x="${p.x0}" y="${y0}" width="${pw}" height="${ph}" fill="none" stroke="#888"/>`);
    for (const v of [0, 0.25, 0.5, 0.75, 1])
      parts.push(
        `<line x1="${p.x0}" x2="${p.x0 + pw}" y1="${ly(v)}" y2="${ly(v)}" stroke="#eee"/><text x="${p.x0 - 30}" y="${ly(v) + 4}">${v.toFixed(2)}</text>`,
      );
    for (const lr of lrs)
      parts.push(`<text x="${lx(lr, p.x0) - 14}" y="${y0 + ph + 18}">${lr.toExponential(0)}</text>`);
    parts.push(`<text x="${p.x0 + pw / 2 - 40}" y="${y0 + ph + 36}">learning rate</text>`);
    parts.push(
      `<line x1="${p.x0}" x2="${p.x0 + pw}" y1="${ly(base[p.key])}" y2="${ly(base[p.key])}" stroke="#000" stroke-dasharray="4 4"/><text x="${p.x0 + pw - 70}" y="${ly(base[p.key]) - 4}">base model</text>`,
    );
    for (const [name, colour] of Object.entries(colours)) {
      const [method, rank] = name.split('-');
      const pts = rows
        .filter((r) => r.method === method && r.rank === Number(rank))
        .map((r) => [lx(r.lr, p.x0), ly(r.checkpoints[r.checkpoints.length - 1][p.key])]);
      if (!pts.length) continue;
      parts.push(
        `<polyline fill="none" stroke="${colour}" stroke-width="2" points="${pts.map((q) => q.join(',')).join(' ')}"/>`,
      );
      for (const [x, y] of pts) parts.push(`<circle cx="${x}" cy="${y}" r="3.5" fill="${colour}"/>`);
    }
  }
  Object.entries(colours).forEach(([name, colour], i) =>
    parts.push(
      `<rect x="${60 + i * 130}" y="${H - 16}" width="12" height="12" fill="${colour}"/><text x="${76 + i * 130}" y="${H - 6}">${name.replace('-', ' rank ')}</text>`,
    ),
  );
  parts.push('</svg>');
  const img = await decodeImage(Buffer.from(parts.join('')), { label: 'experiment plot (SVG)' });
  await atomicWriteFile(join(OUT, fileName), await encodeImage(img, 'png'));
}

async function writeTable(
  rows: Setting[],
  base: { subject: number; prompt: number },
  low: Setting[],
  baseLow: { subject: number; prompt: number },
  seconds: number,
): Promise<void> {
  const f = (x: number) => x.toFixed(3);
  const lines = [
    `Measured by \`npm run experiment\` (${(seconds / 60).toFixed(1)} min on 2 shared CPU cores, wasm): ${config.steps} steps, checkpoints every ${config.every}, learning rates ${config.lrs.join(', ')}, alpha = rank, ramp T = ${config.rampSteps} (SingLoRA), training seeds ${config.trainSeeds.join(', ')} (every number below is the mean over them); ${config.probes.length} prompts x ${config.seeds.length} seeds per checkpoint (${config.probes.map((p) => `"${p.prompt}"`).join(', ')}), ${config.sampling.scheduler} ${config.sampling.steps} steps, guidance ${config.sampling.guidanceScale}.`,
    '',
    `Base model (no adapter): subject fidelity ${f(base.subject)}, prompt fidelity ${f(base.prompt)}.`,
    '',
    `| method | rank | params | lr | subject fidelity per checkpoint (steps ${rows[0].checkpoints.map((c) => c.step).join(' / ')}) | final subject (per seed) | final prompt | best subject |`,
    '| --- | --- | ---: | ---: | --- | ---: | ---: | ---: |',
  ];
  for (const r of rows) {
    const last = r.checkpoints[r.checkpoints.length - 1];
    lines.push(
      `| ${r.method} | ${r.rank} | ${r.params.toLocaleString('en-US')} | ${r.lr} | ${r.checkpoints.map((c) => f(c.subject)).join(' / ')} | ${f(last.subject)} (${r.finalSubjects.map(f).join(', ')}) | ${f(last.prompt)} | ${f(Math.max(...r.checkpoints.map((c) => c.subject)))} |`,
    );
  }
  lines.push(
    '',
    '**Across learning rates** (final checkpoint, mean over seeds; spread = standard deviation over the learning rates; seed noise = standard deviation over the training seeds, averaged over the learning rates):',
    '',
    '| method | rank | params | mean subject | spread over lr (std) | min - max | seed noise (std) | mean prompt |',
    '| --- | --- | ---: | ---: | ---: | --- | ---: | ---: |',
  );
  const acrossLr = (settings: Setting[]) => {
    for (const method of config.methods) {
      for (const rank of config.ranks) {
        const rs = settings.filter((r) => r.method === method && r.rank === rank);
        const subj = rs.map((r) => r.checkpoints[r.checkpoints.length - 1].subject);
        const prm = rs.map((r) => r.checkpoints[r.checkpoints.length - 1].prompt);
        const noise = mean(rs.map((r) => std(r.finalSubjects)));
        lines.push(
          `| ${method} | ${rank} | ${rs[0].params.toLocaleString('en-US')} | ${f(mean(subj))} | ${f(std(subj))} | ${f(Math.min(...subj))} - ${f(Math.max(...subj))} | ${f(noise)} | ${f(mean(prm))} |`,
        );
      }
    }
  };
  acrossLr(rows);
  lines.push(
    '',
    `**The same checkpoints at guidance ${config.lowGuidance}** (base model: subject fidelity ${f(baseLow.subject)}, prompt fidelity ${f(baseLow.prompt)}):`,
    '',
    '| method | rank | params | mean subject | spread over lr (std) | min - max | seed noise (std) | mean prompt |',
    '| --- | --- | ---: | ---: | ---: | --- | ---: | ---: |',
  );
  acrossLr(low);
  const table = lines.join('\n');
  const doc = existsSync(DOCS)
    ? await readFile(DOCS, 'utf8')
    : '# Experiments\n\n<!-- results:start -->\n<!-- results:end -->\n';
  const start = doc.indexOf('<!-- results:start -->');
  const end = doc.indexOf('<!-- results:end -->');
  if (start < 0 || end < start)
    throw new Error(
      `experiment: ${DOCS} has no <!-- results:start --> ... <!-- results:end --> markers to write the table between`,
    );
  await atomicWriteFile(DOCS, `${doc.slice(0, start)}<!-- results:start -->\n${table}\n${doc.slice(end)}`);
}

await main();
