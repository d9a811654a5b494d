/**
 * Shared CLI plumbing: global options, JSON vs human output, progress, and errors.
 *
 * Every command takes `--json`: it then prints JSON only (one object for a result, one object per
 * line for events), and an error becomes `{"error": "..."}` on stdout with exit code 1.
 */
import { Command, Option } from 'commander';
import cliProgress from 'cli-progress';
import { BACKEND_NAMES, initBackend, type BackendInfo, type BackendName } from '../engine/backend/tf.ts';
import { PROVIDER_CHOICES, type ProviderChoice } from '../engine/onnx/providers.ts';
import { INFERENCE_ENGINES, type InferenceEngine, type InferenceOptions } from '../engine/pipeline/stableDiffusion.ts';

export interface GlobalOptions {
  json?: boolean;
  backend?: BackendName | 'auto';
}

/** Adds the options every command shares. */
export function withCommon(cmd: Command): Command {
  return cmd
    .option('--json', 'machine-readable output: JSON only (events as JSON lines)')
    .addOption(new Option('--backend <name>', 'force a tensor backend (default: SINGLORA_BACKEND or the best available)').choices(['auto', ...BACKEND_NAMES]));
}

export interface InferenceCliOptions {
  engine?: InferenceEngine;
  provider?: ProviderChoice;
}

/** `--engine` and `--provider`, for every command that runs inference. */
export function withInference(cmd: Command): Command {
  return cmd
    .addOption(new Option('--engine <name>', 'inference engine: onnx (ONNX Runtime) or tfjs (TensorFlow.js, the training engine)').choices([...INFERENCE_ENGINES]).default('onnx'))
    .addOption(new Option('--provider <name>', 'ONNX Runtime execution provider (auto: a GPU provider that starts, else the CPU)').choices([...PROVIDER_CHOICES]).default('auto'));
}

/** The inference options of a command's parsed flags. */
export function inferenceOptions(o: InferenceCliOptions): InferenceOptions {
  return { engine: o.engine ?? 'onnx', provider: o.provider ?? 'auto' };
}

/** Starts the backend chosen by --backend / SINGLORA_BACKEND / auto. */
export async function startBackend(opts: GlobalOptions): Promise<BackendInfo> {
  return initBackend(opts.backend ?? 'auto');
}

/** Prints a result: JSON when --json, otherwise the human text (or pretty JSON). */
export function printResult(opts: GlobalOptions, value: unknown, human?: string | (() => string)): void {
  if (opts.json) process.stdout.write(JSON.stringify(value) + '\n');
  else process.stdout.write((typeof human === 'function' ? human() : human ?? JSON.stringify(value, null, 2)) + '\n');
}

/** One JSON line per event with --json; ignored otherwise (the progress bar shows it). */
export function emitJsonLine(opts: GlobalOptions, event: Record<string, unknown>): void {
  if (opts.json) process.stdout.write(JSON.stringify(event) + '\n');
}

/** Wraps a command action: errors print clearly (or as JSON) and exit with status 1. */
export function action<A extends unknown[]>(fn: (...args: A) => Promise<void>): (...args: A) => Promise<void> {
  return async (...args: A) => {
    const cmd = args[args.length - 1] as Command;
    const opts = (cmd?.optsWithGlobals?.() ?? {}) as GlobalOptions;
    try {
      await fn(...args);
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      if (opts.json) process.stdout.write(JSON.stringify({ error: message }) + '\n');
      else process.stderr.write(`error: ${message}\n`);
      if (process.env.SINGLORA_DEBUG && err instanceof Error) process.stderr.write(`${err.stack}\n`);
      process.exitCode = 1;
    }
  };
}

/**
 * A terminal progress bar (step i/N, it/s, ETA) when stdout is a TTY and not --json; otherwise a
 * no-op. `label` names the unit (e.g. 'step').
 */
export function progressBar(opts: GlobalOptions, label: string, total: number): { update(i: number, extra?: Record<string, string | number>): void; stop(): void } {
  if (opts.json || !process.stderr.isTTY) return { update() {}, stop() {} };
  const bar = new cliProgress.SingleBar(
    {
      format: `${label} {value}/{total} |{bar}| {percentage}% | {its} it/s | ETA {eta_formatted} {extra}`,
      stream: process.stderr,
      hideCursor: true,
      etaBuffer: 20,
    },
    cliProgress.Presets.shades_classic,
  );
  const t0 = performance.now();
  bar.start(total, 0, { its: '0.00', extra: '' });
  return {
    update(i, extra) {
      const its = i / Math.max(1e-9, (performance.now() - t0) / 1000);
      bar.update(i, { its: its.toFixed(2), extra: extra ? Object.entries(extra).map(([k, v]) => `${k} ${v}`).join(' ') : '' });
    },
    stop() {
      bar.stop();
    },
  };
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}
