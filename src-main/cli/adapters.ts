/** `singlora export` and `singlora inspect`. */
import { type Command, Option } from 'commander';
import { statSync } from 'node:fs';
import { basename } from 'node:path';
import { EXPORT_FORMATS } from '../api/schemas.ts';
import type { ExportFormat } from '../engine/adapters/exportAdapter.ts';
import {
  action,
  emitJsonLine,
  formatBytes,
  printResult,
  requireExists,
  requireFile,
  requireFolder,
  startBackend,
  UsageError,
  withCommon,
  type GlobalOptions,
} from './common.ts';

interface ExportCliOptions extends GlobalOptions {
  adapter: string;
  format: ExportFormat | 'merged';
  base?: string;
  configDir?: string;
  out: string;
  fp16?: boolean;
  strict?: boolean;
  force?: boolean;
}

const isFolder = (path: string) => {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
};

/**
 * The base model an adapter file records against the one it is merged into: a warning (or,
 * with --strict, the refusal) when the UNet hashes differ; null when they match.
 */
async function baseMismatch(adapter: string, base: string, configDir?: string): Promise<string | null> {
  const { readNativeAdapter } = await import('../engine/adapters/exportAdapter.ts');
  const { openBaseModel, unetSha256 } = await import('../engine/io/modelFiles.ts');
  const file = await readNativeAdapter(adapter);
  const model = await openBaseModel(base, configDir ? { configDir } : undefined);
  try {
    const sha = await unetSha256(model);
    const recorded = file.meta.base_model_unet_sha256;
    return recorded && recorded !== sha
      ? `${basename(adapter)} was trained on '${file.meta.base_model_name}' (UNet sha256 ${recorded.slice(0, 12)}), not on ${base} (${sha.slice(0, 12)}); the merged model may give poor images`
      : null;
  } finally {
    await model.close();
  }
}

export function register(program: Command): void {
  registerExport(program);
  registerInspect(program);
}

function registerExport(program: Command): void {
  withCommon(
    program
      .command('export')
      .description(
        'convert a SingLoRA Studio adapter for other tools (kohya for A1111/ComfyUI, diffusers/PEFT, merged checkpoints)',
      )
      .requiredOption('--adapter <file>', 'native adapter file (a checkpoint adapter.safetensors)')
      .addOption(
        new Option('--format <f>', 'output format').choices([...EXPORT_FORMATS, 'merged']).makeOptionMandatory(),
      )
      .option('--base <model>', 'base model (required by the merged formats)')
      .option('--config-dir <dir>', 'for a single-file --base: a diffusers SD 1.5 folder to take configs from')
      .requiredOption('--out <path>', 'output file (a folder for merged-diffusers)')
      .option('--fp16', 'write float16 tensors (smaller; float32 is exact)')
      .option('--force', 'replace --out when it exists (default: refuse)')
      .option(
        '--strict',
        'refuse to merge into a base model other than the one the adapter was trained on (default: warn)',
      ),
  ).action(action(runExport));
}

async function runExport(o: ExportCliOptions): Promise<void> {
  requireFile(o.adapter, '--adapter', 'an adapter .safetensors file');
  const format: ExportFormat =
    o.format === 'merged' ? (o.out.endsWith('.safetensors') ? 'merged-single-file' : 'merged-diffusers') : o.format;
  const merged = format === 'merged-diffusers' || format === 'merged-single-file';
  if (merged && !o.base)
    throw new UsageError(`--base <model> is required by --format ${o.format} (the model the adapter is folded into)`);
  if (!merged && o.base) throw new UsageError(`--base is only used by the merged formats, not by --format ${o.format}`);
  if (o.base) requireExists(o.base, '--base');
  if (o.configDir) requireFolder(o.configDir, '--config-dir');
  if (format === 'merged-diffusers') {
    if (!isFolder(o.out) && statSafe(o.out))
      throw new UsageError(
        `--out: ${o.out} is a file; --format merged writes a diffusers folder there (or give a name ending in .safetensors for a single file)`,
      );
  } else if (isFolder(o.out)) {
    throw new UsageError(
      `--out: ${o.out} is a folder; expected the output file's path (e.g. ${o.out.replace(/\/$/, '')}/${basename(o.adapter).replace(/\.safetensors$/, '')}.${format}.safetensors)`,
    );
  }
  if (statSafe(o.out) && !o.force)
    throw new UsageError(`--out: ${o.out} already exists; choose another name, or add --force to replace it`);
  await startBackend(o);
  const { exportAdapter } = await import('../engine/adapters/exportAdapter.ts');
  const warnings: string[] = [];
  if (merged) {
    const mismatch = await baseMismatch(o.adapter, o.base!, o.configDir);
    if (mismatch && o.strict) throw new Error(`refused under --strict: ${mismatch}`);
    if (mismatch) {
      warnings.push(mismatch);
      if (o.json) emitJsonLine(o, { event: 'warning', message: mismatch });
      else process.stderr.write(`warning: ${mismatch}\n`);
    }
  }
  const r = await exportAdapter({
    adapter: o.adapter,
    format,
    base: o.base,
    baseOptions: o.configDir ? { configDir: o.configDir } : undefined,
    out: o.out,
    overwrite: o.force,
    dtype: o.fp16 ? 'F16' : 'F32',
    onProgress: (done, total) => {
      if (done === total && !o.json) process.stderr.write(`merged ${total} tensors\n`);
    },
  });
  printResult(o, { ...r, warnings }, () => `${r.format}: ${r.tensors} tensors -> ${r.path}`);
}

function registerInspect(program: Command): void {
  withCommon(
    program
      .command('inspect')
      .description('show what an adapter file holds')
      .argument('<file>', 'adapter .safetensors (native, kohya or diffusers)'),
    { backend: false },
  ).action(
    action(async (file: string, o: GlobalOptions) => {
      requireFile(file, '<file>', 'an adapter .safetensors file');
      const { inspectAdapter } = await import('../engine/adapters/exportAdapter.ts');
      const info = await inspectAdapter(file);
      const adapter = info.targets > 0;
      printResult(o, { ...info, adapter }, () =>
        [
          `${info.file}`,
          ...(adapter
            ? [
                `format:     ${info.format}`,
                `method:     ${info.method}`,
                `rank:       ${info.rank}   alpha: ${info.alpha}`,
                `targets:    ${info.targets} layers`,
              ]
            : [
                `format:     not an adapter (no LoRA or SingLoRA tensors)${info.metadata.merged_adapter ? `: a model checkpoint with ${info.metadata.merged_adapter} merged in` : ''}`,
              ]),
          `${adapter ? 'parameters: ' : 'size:       '}${info.parameters.toLocaleString('en-US')} ${adapter ? '' : ' values'} (${formatBytes(info.bytes)})`,
          'metadata:',
          ...Object.entries(info.metadata).map(([k, v]) => `  ${k}: ${v.length > 100 ? `${v.slice(0, 100)}...` : v}`),
        ].join('\n'),
      );
    }),
  );
}

function statSafe(path: string): boolean {
  try {
    statSync(path);
    return true;
  } catch {
    return false;
  }
}
