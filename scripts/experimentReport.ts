/**
 * The experiment's plot (docs/experiments/fidelity-vs-lr.png) and its tables between the results
 * markers of docs/experiments.md, from docs/experiments/results.json (scripts/experiment.ts).
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { decodeImage, encodeImage } from '../src-main/engine/image/sharp.ts';
import { atomicWriteFile } from '../src-main/engine/io/atomic.ts';
import {
  type Difference,
  difference,
  type Metric,
  METRICS,
  pairsOf,
  pooled,
  type Results,
  type Setting,
  settingsOf,
} from './experimentStats.ts';

const f3 = (x: number) => x.toFixed(3);
const signed = (x: number) => `${x >= 0 ? '+' : '-'}${Math.abs(x).toFixed(3)}`;
const pct = (x: number) => `${(100 * x).toFixed(0)}%`;
const COLOURS: Record<string, string> = {
  'singlora-4': '#d62728',
  'singlora-8': '#ff7f0e',
  'lora-4': '#1f77b4',
  'lora-8': '#17becf',
};

/** Per subject: best checkpoint's gain (solid; final checkpoint dashed) and background share against the lr. */
export async function writePlot(results: Results, file: string): Promise<void> {
  const settings = settingsOf(results);
  const subjects = results.config.subjects.filter((s) => settings.some((x) => x.subject === s));
  const lrs = results.config.lrs;
  const pw = 360;
  const ph = 200;
  const W = 900;
  const H = 60 + subjects.length * (ph + 70) + 20;
  const gains = settings.flatMap((s) =>
    [s.stats.bestGain, s.stats.finalGain].map((x) => [x.mean - x.sd, x.mean + x.sd]),
  );
  const lo = Math.min(-0.1, ...gains.flat());
  const hi = Math.max(0.1, ...gains.flat());
  const lx = (lr: number, x0: number) =>
    x0 + (lrs.length === 1 ? pw / 2 : (Math.log10(lr / lrs[0]) / Math.log10(lrs[lrs.length - 1] / lrs[0])) * pw);
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12"><rect width="${W}" height="${H}" fill="white"/>`,
  ];
  subjects.forEach((subject, row) => {
    const y0 = 40 + row * (ph + 70);
    const panels = [
      { x0: 60, title: `${subject}: gain over the base model (best; final dashed; ± 1 sd)`, lo, hi },
      { x0: 510, title: `${subject}: background kept (best checkpoint)`, lo: 0, hi: 1 },
    ];
    for (const [i, p] of panels.entries()) {
      const ly = (v: number) => y0 + ph - ((v - p.lo) / (p.hi - p.lo)) * ph;
      parts.push(`<text x="${p.x0 - 40}" y="${y0 - 8}" font-size="12">${p.title}</text>`);
      parts.push(`<rect x="${p.x0}" y="${y0}" width="${pw}" height="${ph}" fill="none" stroke="#888"/>`);
      const ticks = i === 0 ? [p.lo, 0, p.hi] : [0, 0.5, 0.8, 1];
      for (const v of ticks)
        parts.push(
          `<line x1="${p.x0}" x2="${p.x0 + pw}" y1="${ly(v)}" y2="${ly(v)}" stroke="${v === 0 && i === 0 ? '#000' : '#eee'}"/><text x="${p.x0 - 40}" y="${ly(v) + 4}">${v.toFixed(2)}</text>`,
        );
      for (const lr of lrs)
        parts.push(`<text x="${lx(lr, p.x0) - 14}" y="${y0 + ph + 16}">${lr.toExponential(0)}</text>`);
      for (const [name, colour] of Object.entries(COLOURS)) {
        const [method, rank] = name.split('-');
        const ss = settings.filter((s) => s.subject === subject && s.method === method && s.rank === Number(rank));
        const lines: Array<[Metric, string]> =
          i === 0
            ? [
                ['bestGain', ''],
                ['finalGain', '5 4'],
              ]
            : [['bestBg', '']];
        for (const [m, dash] of lines) {
          const pts = ss.map((s) => [
            lx(s.lr, p.x0),
            ly(s.stats[m].mean),
            ly(s.stats[m].mean - s.stats[m].sd),
            ly(s.stats[m].mean + s.stats[m].sd),
          ]);
          if (!pts.length) continue;
          parts.push(
            `<polyline fill="none" stroke="${colour}" stroke-width="2" stroke-dasharray="${dash}" points="${pts.map((q) => `${q[0]},${q[1]}`).join(' ')}"/>`,
          );
          if (dash) continue;
          for (const [x, y, a, b] of pts)
            parts.push(
              `<circle cx="${x}" cy="${y}" r="3" fill="${colour}"/><line x1="${x}" x2="${x}" y1="${a}" y2="${b}" stroke="${colour}"/>`,
            );
        }
      }
    }
  });
  Object.entries(COLOURS).forEach(([name, colour], i) =>
    parts.push(
      `<rect x="${60 + i * 150}" y="${H - 16}" width="12" height="12" fill="${colour}"/><text x="${76 + i * 150}" y="${H - 6}">${name.replace('-', ' rank ')}</text>`,
    ),
  );
  parts.push('</svg>');
  const img = await decodeImage(Buffer.from(parts.join('')), { label: 'experiment plot (SVG)' });
  await atomicWriteFile(file, await encodeImage(img, 'png'));
}

const ms = (s: Setting, m: Metric) =>
  m.endsWith('Bg')
    ? `${pct(s.stats[m].mean)} ± ${pct(s.stats[m].sd)}`
    : `${signed(s.stats[m].mean)} ± ${f3(s.stats[m].sd)}`;
const diffText = (x: Difference, bg: boolean) => {
  const t = bg ? `${x.d >= 0 ? '+' : '-'}${pct(Math.abs(x.d))} ± ${pct(2 * x.se)}` : `${signed(x.d)} ± ${f3(2 * x.se)}`;
  return x.beyond ? `**${t}**` : t;
};

/** The setup paragraph: command, time, load, the defaults used, the probes and base scores. */
function header(results: Results): string[] {
  const c = results.config;
  const load = (xs: number[]) => xs.map((x) => x.toFixed(1)).join(' / ');
  const lines = [
    `Measured by \`nice -n 5 ${results.command}\` (${(results.seconds / 60).toFixed(1)} min of runs on 2 CPU cores shared with other work, backend ${results.backend}; load average (1 / 5 / 15 min) ${load(results.load.start)} at the start, ${results.load.end.length ? load(results.load.end) : '?'} at the end). Subjects ${c.subjects.join(', ')}; methods ${c.methods.join(', ')}; ranks ${c.ranks.join(', ')}; learning rates ${c.lrs.join(', ')}; training seeds ${c.trainSeeds.join(', ')}; ${c.steps} steps, checkpoints every ${c.every}, alpha = ${c.alphaPerRank} x rank. Everything else is the toy model's \`singlora-defaults.json\` as read at the start of the run:`,
    '',
    `    ${JSON.stringify(c.defaults)}`,
    '',
    `Every checkpoint is scored on ${c.seeds.length} evaluation seeds (${c.seeds.join(', ')}) per probe. Gain: the checkpoint's subject fidelity (colour x shape IoU) minus the base model's; bg: share of images with the requested background. Best: the highest-scoring checkpoint that keeps the background in at least min(80%, the base model's share) of its images (the pick rule without its noise band); picked: in how many seeds the evaluation rule picks a checkpoint (beyond the base model's noise band). Each cell: mean ± sample standard deviation over the training seeds.`,
    '',
  ];
  for (const [name, b] of Object.entries(results.base))
    lines.push(
      `* ${name}, base model: subject fidelity ${f3(b.subject)}, background ${pct(b.prompt)}, noise band ${b.noiseBand === null ? '?' : f3(b.noiseBand)}; probes ${b.probes.map((p) => `"${p}"`).join(', ')}.`,
    );
  return lines;
}

function settingsTable(settings: Setting[]): string[] {
  const lines = [
    '| subject | method | rank | params | lr | best: gain | best: bg | final: gain | final: bg | picked | best steps |',
    '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |',
  ];
  for (const s of settings)
    lines.push(
      `| ${s.subject} | ${s.method} | ${s.rank} | ${s.params.toLocaleString('en-US')} | ${s.lr} | ${ms(s, 'bestGain')} | ${ms(s, 'bestBg')} | ${ms(s, 'finalGain')} | ${ms(s, 'finalBg')} | ${s.picks}/${s.stats.bestGain.n} | ${s.bestSteps.join(', ')} |`,
    );
  return lines;
}

/** SingLoRA - LoRA at each subject, rank and learning rate. */
function methodTable(settings: Setting[]): string[] {
  const lines = [
    '| subject | rank | lr | best: gain | best: bg | final: gain | final: bg |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  for (const [a, b] of pairsOf(
    settings,
    (s) => s.method === 'singlora',
    () => ({ method: 'lora' }),
  ))
    lines.push(
      `| ${a.subject} | ${a.rank} | ${a.lr} | ${METRICS.map((m) => diffText(difference(a.stats[m], b.stats[m]), m.endsWith('Bg'))).join(' | ')} |`,
    );
  return lines;
}

/** Pooled comparisons: method, rank and each pair of neighbouring learning rates, per subject and over both. */
function pooledTable(results: Results, settings: Setting[]): string[] {
  const c = results.config;
  const comparisons: Array<{ name: string; isA: (s: Setting) => boolean; partner: (a: Setting) => Partial<Setting> }> =
    [
      { name: 'SingLoRA - LoRA', isA: (s) => s.method === 'singlora', partner: () => ({ method: 'lora' }) },
      { name: 'rank 8 - rank 4', isA: (s) => s.rank === 8, partner: () => ({ rank: 4 }) },
      ...c.lrs.slice(1).map((lr, i) => ({
        name: `lr ${lr} - ${c.lrs[i]}`,
        isA: (s: Setting) => s.lr === lr,
        partner: () => ({ lr: c.lrs[i] }),
      })),
    ];
  const lines = [
    '| comparison | subject | pairs | best: gain | best: bg | final: gain | final: bg | pairs beyond noise (best gain) |',
    '| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |',
  ];
  for (const cmp of comparisons)
    for (const subject of [...c.subjects, 'both']) {
      const pairs = pairsOf(settings, (s) => cmp.isA(s) && (subject === 'both' || s.subject === subject), cmp.partner);
      if (!pairs.length) continue;
      const cells = METRICS.map((m) =>
        diffText(pooled(pairs.map(([a, b]) => difference(a.stats[m], b.stats[m]))), m.endsWith('Bg')),
      );
      const each = pairs.map(([a, b]) => difference(a.stats.bestGain, b.stats.bestGain)).filter((x) => x.beyond);
      const up = each.filter((x) => x.d > 0).length;
      lines.push(
        `| ${cmp.name} | ${subject} | ${pairs.length} | ${cells.join(' | ')} | ${each.length} of ${pairs.length} (${up} higher, ${each.length - up} lower) |`,
      );
    }
  return lines;
}

export async function writeTable(results: Results, docs: string): Promise<void> {
  const settings = settingsOf(results);
  const table = [
    ...header(results),
    '',
    ...settingsTable(settings),
    '',
    '**SingLoRA - LoRA at the same subject, rank and learning rate** (difference of the means ± 2 standard errors from the seed spread; **bold**: larger than that, i.e. beyond the seed noise):',
    '',
    ...methodTable(settings),
    '',
    '**Pooled differences** (the mean over every pair of settings that differ only in the field compared, ± 2 standard errors; **bold**: beyond the seed noise; last column: the single pairs whose best-checkpoint gains differ beyond it):',
    '',
    ...pooledTable(results, settings),
  ].join('\n');
  const doc = existsSync(docs)
    ? await readFile(docs, 'utf8')
    : '# Experiments\n\n<!-- results:start -->\n<!-- results:end -->\n';
  const start = doc.indexOf('<!-- results:start -->');
  const end = doc.indexOf('<!-- results:end -->');
  if (start < 0 || end < start)
    throw new Error(
      `experiment: ${docs} has no <!-- results:start --> ... <!-- results:end --> markers to write the table between`,
    );
  await atomicWriteFile(docs, `${doc.slice(0, start)}<!-- results:start -->\n${table}\n${doc.slice(end)}`);
}
