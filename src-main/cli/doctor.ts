/** `singlora doctor`: every backend's status and why, the GPU, and memory counters. */
import type { Command } from 'commander';
import { action, formatBytes, printResult, startBackend, withCommon, type GlobalOptions } from './common.ts';

export async function doctorReport(opts: GlobalOptions) {
  const { activeBackend, memoryCounters, probeBackends } = await import('../engine/backend/tf.ts');
  const backends = await probeBackends();
  let selected: { name: string; device?: string } | { error: string };
  try {
    const info = await startBackend(opts);
    selected = { name: info.name, device: info.device };
  } catch (err) {
    selected = { error: (err as Error).message };
  }
  return {
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
    backends,
    selected,
    active: activeBackend(),
    memory: memoryCounters(),
  };
}

export function register(program: Command): void {
  withCommon(program.command('doctor').description('show which tensor backends can run here, and why not'))
    .action(
      action(async (opts: GlobalOptions) => {
        const report = await doctorReport(opts);
        printResult(opts, report, () => {
          const lines = [`node ${report.node} on ${report.platform}`, '', 'backends (in order of preference):'];
          for (const b of report.backends) {
            const mark = b.available ? (b.software ? '~' : '✓') : '✗';
            const detail = b.available ? `${b.device ?? ''}${b.memoryBytes ? `, ${formatBytes(b.memoryBytes)}` : ''}${b.software ? ' (software adapter: used only when forced)' : ''}` : b.reason;
            lines.push(`  ${mark} ${b.name.padEnd(10)} ${detail}`);
          }
          lines.push('');
          if ('error' in report.selected) lines.push(`selected: none (${report.selected.error})`);
          else lines.push(`selected: ${report.selected.name} (${report.selected.device ?? ''})`);
          const m = report.memory;
          lines.push(`memory: rss ${formatBytes(m.rssBytes)}, tensors ${m.numTensors} (${formatBytes(m.numBytes)})${m.wasmHeapBytes ? `, wasm heap ${formatBytes(m.wasmHeapBytes)}` : ''}`);
          return lines.join('\n');
        });
      }),
    );
}
