/**
 * `singlora models [list]`: the evaluation models, present or missing, and where each file goes.
 * `singlora models download <dino|clip> [--url <url>] [--force]`: fetch them (resumable).
 */
import type { Command } from 'commander';
import { existsSync } from 'node:fs';
import { EVAL_MODELS, listModels, modelFilePath, modelSpec, type ModelStatus } from '../engine/eval/modelRegistry.ts';
import { download, type DownloadResult } from '../engine/io/download.ts';
import { defaultModelsDir } from '../engine/paths.ts';
import { action, emitJsonLine, formatBytes, printResult, progressBar, withCommon, type GlobalOptions } from './common.ts';

interface ModelsOptions extends GlobalOptions {
  modelsDir?: string;
  url?: string;
  force?: boolean;
}

const MODELS_DIR_HELP = 'models folder (default: SINGLORA_MODELS_DIR or <repo>/models)';

export function register(program: Command): void {
  const models = program.command('models').description('list the evaluation models (DINO, CLIP), or download one');

  withCommon(models.command('list', { isDefault: true }).description('show which evaluation models are present and where missing files go'))
    .option('--models-dir <dir>', MODELS_DIR_HELP)
    .action(
      action(async (opts: ModelsOptions) => {
        const modelsDir = opts.modelsDir ?? defaultModelsDir();
        const list = await listModels(modelsDir);
        printResult(opts, { modelsDir, models: list }, () => formatList(modelsDir, list));
      }),
    );

  withCommon(models.command('download <name>').description(`download an evaluation model (${EVAL_MODELS.map((m) => m.id).join(', ')}); resumes a partial download`))
    .option('--models-dir <dir>', MODELS_DIR_HELP)
    .option('--url <url>', 'download from this URL instead (single-file models only)')
    .option('--force', 'download again even when the file is present')
    .action(
      action(async (name: string, opts: ModelsOptions) => {
        const spec = modelSpec(name);
        if (opts.url && spec.files.length !== 1) throw new Error(`--url works for single-file models only; '${spec.id}' has ${spec.files.length} files`);
        const modelsDir = opts.modelsDir ?? defaultModelsDir();
        const files: (DownloadResult | { path: string; skipped: string })[] = [];
        for (const f of spec.files) {
          const path = modelFilePath(modelsDir, spec.id, f.file);
          if (existsSync(path) && !opts.force) {
            files.push({ path, skipped: 'already present (use --force to download again)' });
            emitJsonLine(opts, { event: 'skipped', model: spec.id, file: f.file, path });
            continue;
          }
          const url = opts.url ?? f.url;
          emitJsonLine(opts, { event: 'start', model: spec.id, file: f.file, url, path });
          let bar: ReturnType<typeof progressBar> | null = null;
          let lastLine = 0;
          try {
            const r = await download(url, path, {
              sha256: opts.url ? null : f.sha256,
              onProgress: (p) => {
                const mib = (n: number) => Math.round((n / 2 ** 20) * 10) / 10;
                bar ??= progressBar(opts, `${spec.id}/${f.file} MiB`, p.total !== null ? mib(p.total) : 0);
                bar.update(mib(p.bytes), { speed: `${formatBytes(p.bytesPerSecond)}/s`, ...(p.etaSeconds !== null ? { eta: `${Math.round(p.etaSeconds)}s` } : {}) });
                const now = Date.now();
                if (now - lastLine >= 500 || (p.total !== null && p.bytes === p.total)) {
                  lastLine = now;
                  emitJsonLine(opts, { event: 'progress', model: spec.id, file: f.file, ...p });
                }
              },
            });
            files.push(r);
          } finally {
            (bar as ReturnType<typeof progressBar> | null)?.stop();
          }
        }
        printResult(opts, { event: 'done', model: spec.id, modelsDir, files }, () =>
          files
            .map((f) => ('skipped' in f ? `${f.path}: ${f.skipped}` : `${f.path}: ${formatBytes(f.bytes)}, sha256 ${f.sha256}${f.verified ? ' (verified)' : ' (not verified: no known checksum)'}${f.resumes ? `, resumed ${f.resumes}×` : ''}`))
            .join('\n'),
        );
      }),
    );
}

function formatList(modelsDir: string, list: readonly ModelStatus[]): string {
  const lines = [`models folder: ${modelsDir}`, ''];
  for (const m of list) {
    lines.push(`${m.present ? '✓' : m.required ? '✗' : '-'} ${m.id}: ${m.title}${m.required ? '' : ' (optional)'}`);
    lines.push(`    ${m.purpose}`);
    for (const f of m.files) lines.push(`    ${f.file}: ${f.present ? `${formatBytes(f.bytes ?? 0)}, ${f.note}` : f.note}`);
  }
  return lines.join('\n');
}
