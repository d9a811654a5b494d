/** `singlora export` and `singlora inspect`. */
import { Command, Option } from 'commander';
import { EXPORT_FORMATS, exportAdapter, inspectAdapter, type ExportFormat } from '../engine/adapters/exportAdapter.ts';
import { action, formatBytes, printResult, progressBar, startBackend, withCommon, type GlobalOptions } from './common.ts';

interface ExportCliOptions extends GlobalOptions {
  adapter: string;
  format: ExportFormat | 'merged';
  base?: string;
  out: string;
  fp16?: boolean;
}

export function register(program: Command): void {
  withCommon(
    program
      .command('export')
      .description('convert a SingLoRA Studio adapter for other tools (kohya for A1111/ComfyUI, diffusers/PEFT, merged checkpoints)')
      .requiredOption('--adapter <file>', 'native adapter file (a checkpoint adapter.safetensors)')
      .addOption(new Option('--format <f>', 'output format').choices([...EXPORT_FORMATS, 'merged']).makeOptionMandatory())
      .option('--base <model>', 'base model (required by the merged formats)')
      .requiredOption('--out <path>', 'output file (a folder for merged-diffusers)')
      .option('--fp16', 'write float16 tensors (smaller; float32 is exact)'),
  ).action(
    action(async (o: ExportCliOptions) => {
      await startBackend(o);
      const format: ExportFormat = o.format === 'merged' ? (o.out.endsWith('.safetensors') ? 'merged-single-file' : 'merged-diffusers') : o.format;
      const bar = progressBar(o, 'tensor', 1);
      let started = false;
      const r = await exportAdapter({
        adapter: o.adapter,
        format,
        base: o.base,
        out: o.out,
        dtype: o.fp16 ? 'F16' : 'F32',
        onProgress: (done, total) => {
          if (!started) {
            bar.stop();
            started = true;
          }
          if (done === total && !o.json) process.stderr.write(`merged ${total} tensors\n`);
        },
      });
      bar.stop();
      printResult(o, r, () => `${r.format}: ${r.tensors} tensors -> ${r.path}`);
    }),
  );

  withCommon(program.command('inspect').description('show what an adapter file holds').argument('<file>', 'adapter .safetensors (native, kohya or diffusers)')).action(
    action(async (file: string, o: GlobalOptions) => {
      const info = await inspectAdapter(file);
      printResult(o, info, () =>
        [
          `${info.file}`,
          `format:     ${info.format}`,
          `method:     ${info.method}`,
          `rank:       ${info.rank}   alpha: ${info.alpha}`,
          `targets:    ${info.targets} layers`,
          `parameters: ${info.parameters.toLocaleString('en-US')} (${formatBytes(info.bytes)})`,
          'metadata:',
          ...Object.entries(info.metadata).map(([k, v]) => `  ${k}: ${v.length > 100 ? `${v.slice(0, 100)}...` : v}`),
        ].join('\n'),
      );
    }),
  );
}
