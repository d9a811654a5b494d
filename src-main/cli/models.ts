/**
 * `singlora models [list]`: the evaluation models, present or missing, and where each file goes.
 * `singlora models download <dino|clip> [--url <url>] [--force]`: fetch them (resumable).
 */
import { Argument, type Command } from 'commander';
import { existsSync, readdirSync, rmdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { EVAL_MODELS, listModels, modelFilePath, modelSpec, type ModelStatus } from '../engine/eval/modelRegistry.ts';
import { download, type DownloadResult } from '../engine/io/download.ts';
import { defaultModelsDir } from '../engine/paths.ts';
import {
  action,
  emitJsonLine,
  formatBytes,
  printResult,
  progressBar,
  requireNotFile,
  UsageError,
  withCommon,
  type GlobalOptions,
} from './common.ts';

interface ModelsOptions extends GlobalOptions {
  modelsDir?: string;
  url?: string;
  force?: boolean;
}

const MODELS_DIR_HELP = 'models folder (default: SINGLORA_MODELS_DIR or <repo>/models)';

export function register(program: Command): void {
  const models = program.command('models').description('list the evaluation models (DINO, CLIP), or download one');

  withCommon(
    models
      .command('list', { isDefault: true })
      .description('show which evaluation models are present and where missing files go'),
    { backend: false },
  )
    .option('--models-dir <dir>', MODELS_DIR_HELP)
    .action(
      action(async (opts: ModelsOptions) => {
        if (opts.modelsDir) requireNotFile(opts.modelsDir, '--models-dir');
        const modelsDir = opts.modelsDir ?? defaultModelsDir();
        const list = await listModels(modelsDir);
        printResult(opts, { modelsDir, models: list }, () => formatList(modelsDir, list));
      }),
    );

  withCommon(
    models
      .command('download')
      .addArgument(new Argument('<name>', 'the model').choices(EVAL_MODELS.map((m) => m.id)))
      .description(
        `download an evaluation model (${EVAL_MODELS.map((m) => m.id).join(', ')}); resumes a partial download`,
      ),
    { backend: false },
  )
    .option('--models-dir <dir>', MODELS_DIR_HELP)
    .option('--url <url>', 'download from this URL instead (single-file models only)')
    .option('--force', 'download again even when the file is present')
    .action(action(downloadModel));
}

/** Downloads a model's files (resumable; a present file is kept unless --force). */
async function downloadModel(name: string, opts: ModelsOptions): Promise<void> {
  const spec = modelSpec(name);
  if (opts.url && spec.files.length !== 1)
    throw new UsageError(`--url works for single-file models only; '${spec.id}' has ${spec.files.length} files`);
  if (opts.url && !/^https?:\/\/./.test(opts.url))
    throw new UsageError(`--url: expected an http(s) URL, got '${opts.url}'`);
  const modelsDir = opts.modelsDir ?? defaultModelsDir();
  requireNotFile(modelsDir, '--models-dir');
  const folder = modelFilePath(modelsDir, spec.id, spec.files[0].file);
  const folderExisted = existsSync(dirname(folder));
  const files: (DownloadResult | { path: string; skipped: string })[] = [];
  for (const f of spec.files) {
    const path = modelFilePath(modelsDir, spec.id, f.file);
    if (existsSync(path) && !opts.force) {
      files.push({ path, skipped: 'already present (use --force to download again)' });
      emitJsonLine(opts, { event: 'skipped', model: spec.id, file: f.file, path });
      continue;
    }
    try {
      files.push(await downloadFile(opts, spec.id, f, path));
    } catch (err) {
      // A failed first download leaves no empty model folder behind.
      if (!folderExisted && existsSync(dirname(folder)) && !readdirSync(dirname(folder)).length)
        rmdirSync(dirname(folder));
      throw err;
    }
  }
  printResult(opts, { event: 'done', model: spec.id, modelsDir, files }, () =>
    files
      .map((f) =>
        'skipped' in f
          ? `${f.path}: ${f.skipped}`
          : `${f.path}: ${formatBytes(f.bytes)}, sha256 ${f.sha256}${f.verified ? ' (verified)' : ' (not verified: no known checksum)'}${f.resumes ? `, resumed ${f.resumes}×` : ''}`,
      )
      .join('\n'),
  );
}

/** Downloads one file of a model, with a progress bar (or JSON progress lines). */
async function downloadFile(
  opts: ModelsOptions,
  model: string,
  f: { file: string; url: string; sha256: string | null },
  path: string,
): Promise<DownloadResult> {
  const url = opts.url ?? f.url;
  emitJsonLine(opts, { event: 'start', model, file: f.file, url, path });
  let bar: ReturnType<typeof progressBar> | null = null;
  let lastLine = 0;
  try {
    return await download(url, path, {
      sha256: opts.url ? null : f.sha256,
      onProgress: (p) => {
        const mib = (n: number) => Math.round((n / 2 ** 20) * 10) / 10;
        bar ??= progressBar(opts, `${model}/${f.file} MiB`, p.total !== null ? mib(p.total) : 0);
        bar.update(mib(p.bytes), {
          speed: `${formatBytes(p.bytesPerSecond)}/s`,
          ...(p.etaSeconds !== null ? { eta: `${Math.round(p.etaSeconds)}s` } : {}),
        });
        const now = Date.now();
        if (now - lastLine >= 500 || (p.total !== null && p.bytes === p.total)) {
          lastLine = now;
          emitJsonLine(opts, { event: 'progress', model, file: f.file, ...p });
        }
      },
    });
  } finally {
    (bar as ReturnType<typeof progressBar> | null)?.stop();
  }
}

function formatList(modelsDir: string, list: readonly ModelStatus[]): string {
  const lines = [`models folder: ${modelsDir}`, ''];
  for (const m of list) {
    lines.push(`${m.present ? '✓' : m.required ? '✗' : '-'} ${m.id}: ${m.title}${m.required ? '' : ' (optional)'}`);
    lines.push(`    ${m.purpose}`);
    for (const f of m.files)
      lines.push(`    ${f.file}: ${f.present ? `${formatBytes(f.bytes ?? 0)}, ${f.note}` : f.note}`);
  }
  return lines.join('\n');
}
