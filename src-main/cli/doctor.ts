/** `singlora doctor`: every ONNX Runtime provider (starts? trains?) and TensorFlow.js backend, why not, and memory counters. */
import type { Command } from 'commander';
import { action, formatBytes, printResult, withCommon, type GlobalOptions } from './common.ts';

export function register(program: Command): void {
  withCommon(
    program
      .command('doctor')
      .description(
        'show which ONNX Runtime providers start here (inference) and which can train, the TensorFlow.js backends, and why not',
      ),
  ).action(
    action(async (opts: GlobalOptions) => {
      const { doctorReport } = await import('../engine/doctor.ts'); // the engine loads only for the command that needs it
      const report = await doctorReport(opts.backend);
      printResult(opts, report, () => {
        const lines = [
          `node ${report.node} on ${report.platform}`,
          '',
          'ONNX Runtime providers, the onnx engine (--provider; auto picks a GPU one that starts, else cpu):',
          '  infer train',
        ];
        for (const p of report.providers)
          lines.push(
            `  ${p.available ? '✓' : '✗'}     ${p.training.ok ? '✓' : '✗'}     ${p.name.padEnd(8)} ${p.detail}${p.available ? `; ${p.training.detail}` : ''}`,
          );
        lines.push('', 'TensorFlow.js backends, the tfjs engine (in order of preference):');
        for (const b of report.backends) {
          const mark = b.available ? (b.software ? '~' : '✓') : '✗';
          const detail = b.available
            ? `${b.device ?? ''}${b.memoryBytes ? `, ${formatBytes(b.memoryBytes)}` : ''}${b.software ? ' (software adapter: used only when forced)' : ''}`
            : b.reason;
          lines.push(`  ${mark} ${b.name.padEnd(10)} ${detail}`);
        }
        lines.push('');
        if ('error' in report.selected) lines.push(`selected: none (${report.selected.error})`);
        else lines.push(`selected: ${report.selected.name} (${report.selected.device ?? ''})`);
        const m = report.memory;
        lines.push(
          `memory: rss ${formatBytes(m.rssBytes)}, tensors ${m.numTensors} (${formatBytes(m.numBytes)})${m.wasmHeapBytes ? `, wasm heap ${formatBytes(m.wasmHeapBytes)}` : ''}`,
        );
        return lines.join('\n');
      });
    }),
  );
}
