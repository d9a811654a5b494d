/**
 * Shared CLI plumbing: global options, JSON vs human output, progress, and the one error path.
 *
 * Every command takes `--json`: it then prints JSON only (one object for a result, one object per
 * line for events), and an error becomes `{"error": "...", "exitCode": n}` on stdout.
 *
 * Errors (see `reportError`):
 *   - a bad command line (unknown option or choice, a value the option's parser refuses, a
 *     missing required option) is a usage error: one line naming the option and what it expects,
 *     exit status 2;
 *   - anything that fails while running: `error: <message>`, exit status 1;
 *   - no stack trace unless `--debug` (or SINGLORA_DEBUG=1).
 *
 * Cancelling (Ctrl-C, SIGINT) ends every command with exit status 130 (SIGTERM: 143), as shells
 * report a process killed by the signal: at once, or, for a command that registered `onCancel`
 * (train keeps a checkpoint), once it has wound down. `serve` is stopped, not cancelled: it exits 0.
 */
import { type Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import cliProgress from 'cli-progress';
import { statSync } from 'node:fs';
import { basename } from 'node:path';
import { ENGINES, type EngineChoice, PROVIDERS, type ProviderChoice, TENSOR_BACKENDS } from '../api/schemas.ts';
import type { BackendInfo, BackendName } from '../engine/backend/tf.ts';

/** `--backend` choices: 'auto' and the API's TENSOR_BACKENDS (checked without loading TensorFlow.js). */
export const BACKEND_CHOICES = ['auto', ...TENSOR_BACKENDS] as const;

export interface GlobalOptions {
  json?: boolean;
  debug?: boolean;
  backend?: BackendName | 'auto';
}

/** Adds the options every command shares. */
export function withCommon(cmd: Command, opts: { backend?: boolean } = {}): Command {
  cmd
    .option('--json', 'machine-readable output: JSON only (events as JSON lines)')
    .option('--debug', 'print stack traces of errors');
  if (opts.backend === false) return cmd;
  return cmd.addOption(
    new Option('--backend <name>', 'force a tensor backend (default: SINGLORA_BACKEND or the best available)').choices([
      ...BACKEND_CHOICES,
    ]),
  );
}

export interface InferenceCliOptions {
  engine?: EngineChoice;
  provider?: ProviderChoice;
}

/** `--engine` and `--provider`, for every command that runs inference. */
export function withInference(cmd: Command): Command {
  return cmd
    .addOption(
      new Option(
        '--engine <name>',
        'inference engine: onnx (ONNX Runtime) or tfjs (TensorFlow.js, the training engine)',
      ).choices([...ENGINES]),
    )
    .addOption(
      new Option(
        '--provider <name>',
        'ONNX Runtime execution provider (default auto: a GPU provider that starts, else the CPU; `singlora doctor` lists which start and which can train)',
      ).choices([...PROVIDERS]),
    );
}

/** The inference options of a command's flags (unset ones fall back to SINGLORA_ENGINE / SINGLORA_PROVIDER, then onnx / auto). */
export function inferenceOptions(o: InferenceCliOptions): {
  engine?: InferenceCliOptions['engine'];
  provider?: InferenceCliOptions['provider'];
} {
  return { ...(o.engine ? { engine: o.engine } : {}), ...(o.provider ? { provider: o.provider } : {}) };
}

/** The largest seed: 2^53 - 1 (Number.MAX_SAFE_INTEGER), what the settings schemas accept. */
export const SEED_MAX = Number.MAX_SAFE_INTEGER;

/** A mistake on the command line: reported in one line, exit status 2. */
export class UsageError extends Error {
  readonly exitCode = 2;
}

/**
 * Option-value parsers for commander. Each refuses what the option cannot take with a message
 * saying what it expects; commander prefixes the option and the value
 * ("option '--steps <n>' argument 'abc' is invalid. expected an integer >= 1").
 */
export const parse = {
  /** An integer in [min, max]. */
  int:
    (min: number, max = Number.MAX_SAFE_INTEGER) =>
    (v: string): number => {
      const n = v.trim() === '' ? NaN : Number(v);
      if (!Number.isInteger(n) || n < min || n > max)
        throw new InvalidArgumentError(
          max === Number.MAX_SAFE_INTEGER
            ? `expected an integer >= ${min}`
            : `expected an integer from ${min} to ${max}`,
        );
      return n;
    },
  /** A finite number in [min, max] (`above`: strictly greater than min). */
  number:
    (min = -Infinity, max = Infinity, { above = false }: { above?: boolean } = {}) =>
    (v: string): number => {
      const n = v.trim() === '' ? NaN : Number(v);
      const low = above ? n > min : n >= min;
      if (!Number.isFinite(n) || !low || n > max) {
        const range = [min !== -Infinity ? `${above ? '>' : '>='} ${min}` : '', max !== Infinity ? `<= ${max}` : '']
          .filter(Boolean)
          .join(' and ');
        throw new InvalidArgumentError(`expected a number${range ? ` ${range}` : ''}`);
      }
      return n;
    },
  /** A seed: an integer from `min` to 2^53 - 1, the largest integer a JSON number holds exactly. */
  seed:
    (min: number) =>
    (v: string): number => {
      const n = v.trim() === '' ? NaN : Number(v);
      if (!Number.isSafeInteger(n) || n < min)
        throw new InvalidArgumentError(`expected an integer from ${min} to ${SEED_MAX} (2^53 - 1)`);
      return n;
    },
  /** A Redis queue URL: redis://host:port, or rediss:// (TLS), either with :password@ (`--queue`). */
  queueUrl: (v: string): string => {
    const url = (() => {
      try {
        return new URL(v.trim());
      } catch {
        return null;
      }
    })();
    if (!url || (url.protocol !== 'redis:' && url.protocol !== 'rediss:') || !url.hostname)
      throw new InvalidArgumentError('expected a Redis URL: redis://host:port or rediss://:password@host:port');
    return v.trim();
  },
  /** Repeatable option: collects every value. */
  collect: (v: string, prev: string[] = []): string[] => [...prev, v],
};

/** Refuses `path` unless it is an existing folder; `option` names the flag in the message. */
export function requireFolder(path: string, option: string): void {
  let isDir: boolean;
  try {
    isDir = statSync(path).isDirectory();
  } catch {
    throw new UsageError(`${option}: the folder ${path} does not exist`);
  }
  if (!isDir) throw new UsageError(`${option}: ${path} is a file; expected a folder`);
}

/** Refuses `path` unless it is an existing file; `option` names the flag in the message. */
export function requireFile(path: string, option: string, what = 'a file'): void {
  let isFile: boolean;
  try {
    isFile = statSync(path).isFile();
  } catch {
    throw new UsageError(`${option}: ${path} does not exist`);
  }
  if (!isFile) throw new UsageError(`${option}: ${path} is a folder; expected ${what}`);
}

/** Refuses `path` unless it exists (a file or a folder). */
export function requireExists(path: string, option: string): void {
  try {
    statSync(path);
  } catch {
    throw new UsageError(`${option}: ${path} does not exist`);
  }
}

/**
 * Refuses a photo folder in which no photo can be read, before any model loads (SD 1.5 takes a
 * minute to load; a folder of non-images was found only after that). Each photo is decoded as
 * training will decode it (engine/train/dataset.ts checkPhoto); the size rules apply when the
 * resolution is known here (`--resolution`), else training applies them with the model's size.
 */
export async function requireUsablePhotos(photos: string, option: string, resolution = 0): Promise<void> {
  const { checkPhoto, listPhotos } = await import('../engine/train/dataset.ts');
  const checks = [];
  for (const file of await listPhotos(photos)) {
    const { check } = await checkPhoto(file, resolution);
    if (check.status !== 'rejected') return;
    checks.push(check);
  }
  const why = checks.map((c) => `${basename(c.file)}: ${c.reason}`).join('; ');
  throw new UsageError(`${option}: no usable subject photos in ${photos} (${why || 'no files'})`);
}

/** Refuses an output folder that exists as a file. */
export function requireNotFile(path: string, option: string): void {
  try {
    if (!statSync(path).isDirectory())
      throw new UsageError(`${option}: ${path} is a file; expected a folder (it is created when missing)`);
  } catch (err) {
    if (err instanceof UsageError) throw err;
  }
}

const SYSTEM_ERRORS: Record<string, string> = {
  ENOENT: 'does not exist',
  EISDIR: 'is a folder, not a file',
  ENOTDIR: 'is a file where a folder was expected (or its path goes through a file)',
  EEXIST: 'already exists',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  ENOSPC: 'the disk is full',
  EROFS: 'the file system is read-only',
};

/** Plain language for Node's file-system errors ("ENOENT: no such file ..., open 'x'"). */
export function plainMessage(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const e = err as NodeJS.ErrnoException & { dest?: string };
  if (e.code && SYSTEM_ERRORS[e.code] && e.path) return `${e.path} ${SYSTEM_ERRORS[e.code]}`;
  return err.message;
}

/** The command line asked for JSON output / stack traces (read before commander has parsed). */
const argvFlag = (flag: string) => process.argv.slice(2).includes(flag);

/**
 * Reports any error the way the CLI promises, and sets the exit status: commander's own
 * (help/version: 0; a usage mistake: 2), a UsageError (2), anything else (1).
 */
export function reportError(err: unknown): void {
  if (err instanceof CommanderError) {
    if (
      err.code === 'commander.helpDisplayed' ||
      err.code === 'commander.version' ||
      err.code === 'commander.help' ||
      err.exitCode === 0
    ) {
      process.exitCode = err.exitCode;
      return;
    }
  }
  const usage = err instanceof CommanderError || err instanceof UsageError;
  const exitCode = usage ? 2 : 1;
  let message = err instanceof CommanderError ? err.message.replace(/^error: /, '') : plainMessage(err);
  if (usage) message = message.replace(/\s*\n\s*/g, ' ').trim();
  if (argvFlag('--json')) writeSafe(process.stdout, `${JSON.stringify({ error: message, exitCode })}\n`);
  else writeSafe(process.stderr, `error: ${message}${usage ? ` (see ${commandPath(err)} --help)` : ''}\n`);
  if ((argvFlag('--debug') || process.env.SINGLORA_DEBUG) && err instanceof Error && !(err instanceof CommanderError))
    writeSafe(process.stderr, `${err.stack}\n`);
  process.exitCode = exitCode;
}

/** Commands that take a subcommand (`singlora bench train`). */
const GROUPS = ['bench', 'models', 'projects'];

/** `singlora <command> [<subcommand>]`, from argv, for the help hint (`singlora` for an unknown command). */
function commandPath(err?: unknown): string {
  const [first, second] = process.argv.slice(2);
  const unknownCommand = err instanceof CommanderError && err.code === 'commander.unknownCommand';
  if (!first || first.startsWith('-') || (unknownCommand && !GROUPS.includes(first))) return 'singlora';
  const sub = GROUPS.includes(first) && !unknownCommand && second && !second.startsWith('-') ? [second] : [];
  return ['singlora', first, ...sub].join(' ');
}

function writeSafe(stream: NodeJS.WriteStream, text: string): void {
  try {
    stream.write(text);
  } catch {
    // a closed stream: nothing to tell
  }
}

/** Why a command is cancelled: a signal, or its stdout closed (`--json | head -1`). */
export type CancelReason = 'SIGINT' | 'SIGTERM' | 'EPIPE';

/**
 * Exit statuses of a cancelled command: 128 + the signal's number, as shells report it; a closed
 * stdout ends the command quietly, with 0.
 */
export const CANCELLED_EXIT_CODE: Readonly<Record<CancelReason, number>> = { SIGINT: 130, SIGTERM: 143, EPIPE: 0 };

let cancelHandler: ((reason: CancelReason) => void) | null = null;
/** stdout was closed: later writes fail, and their errors are expected. */
let stdoutClosed = false;

/**
 * Lets the running command wind down on the first SIGINT / SIGTERM instead of ending at once
 * (a second signal still ends the process). The handler is called once; the command then sets
 * its exit status (`cancelledExitCode`). Returns the function that unregisters it.
 */
export function onCancel(handler: (reason: CancelReason) => void): () => void {
  cancelHandler = handler;
  return () => {
    if (cancelHandler === handler) cancelHandler = null;
  };
}

function cancel(reason: CancelReason): void {
  const handler = cancelHandler;
  cancelHandler = null;
  if (handler) handler(reason);
  else process.exit(reason === 'EPIPE' ? (process.exitCode ?? 0) : CANCELLED_EXIT_CODE[reason]);
}

/**
 * Makes a closed stdout (`singlora ... --json | head -1`) end the process quietly, keeps
 * uncaught errors on the one error path, and ends a cancelled command with 130 (`onCancel`).
 * Installed before any backend loads: the wasm backend adds an uncaught-exception handler that
 * re-throws (printing its minified source).
 */
export function installProcessHandlers(): void {
  process.on('SIGINT', () => cancel('SIGINT'));
  process.on('SIGTERM', () => cancel('SIGTERM'));
  const quietOnEpipe = (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE' || err.code === 'ERR_STREAM_DESTROYED') {
      // The reader is gone: a command that winds down (train keeps a checkpoint) does so; later
      // writes fail the same way and are ignored.
      if (stdoutClosed) return;
      stdoutClosed = true;
      return cancel('EPIPE');
    }
    reportError(err);
    process.exit(process.exitCode ?? 1);
  };
  process.stdout.on('error', quietOnEpipe);
  process.stderr.on('error', (err: NodeJS.ErrnoException) =>
    process.exit(err.code === 'EPIPE' ? (process.exitCode ?? 0) : 1),
  );
  const fatal = (err: unknown) => {
    if ((err as NodeJS.ErrnoException)?.code === 'EPIPE') {
      if (stdoutClosed) return;
      stdoutClosed = true;
      return cancel('EPIPE');
    }
    reportError(err);
    process.exit(process.exitCode ?? 1);
  };
  process.on('uncaughtException', fatal);
  process.on('unhandledRejection', fatal);
}

/** Starts the backend chosen by --backend / SINGLORA_BACKEND / auto. */
export async function startBackend(opts: GlobalOptions): Promise<BackendInfo> {
  const { initBackend } = await import('../engine/backend/tf.ts');
  return initBackend(opts.backend ?? 'auto');
}

/** Prints a result: JSON when --json, otherwise the human text (or pretty JSON). */
export function printResult(opts: GlobalOptions, value: unknown, human?: string | (() => string)): void {
  if (stdoutClosed) return;
  if (opts.json) process.stdout.write(`${JSON.stringify(value)}\n`);
  else process.stdout.write(`${typeof human === 'function' ? human() : (human ?? JSON.stringify(value, null, 2))}\n`);
}

/** One JSON line per event with --json; ignored otherwise (the progress bar shows it). */
export function emitJsonLine(opts: GlobalOptions, event: Record<string, unknown>): void {
  if (opts.json && !stdoutClosed) process.stdout.write(`${JSON.stringify(event)}\n`);
}

/** Wraps a command action: errors go through `reportError` (exit 2 for usage, 1 otherwise). */
export function action<A extends unknown[]>(fn: (...args: A) => Promise<void>): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      await fn(...args);
    } catch (err) {
      reportError(err);
    }
  };
}

export interface Progress {
  /** `rate`: units per second when the caller measures it (else: since the first update). */
  update(i: number, extra?: Record<string, string | number>, rate?: number): void;
  stop(): void;
}

/**
 * Progress of `total` units named `label` (e.g. 'step'), on stderr: a bar (i/N, it/s, ETA) on a
 * terminal; one plain line every `SINGLORA_PROGRESS_SECONDS` (default 10) seconds or 10% of the
 * work, with the rate and ETA, when stderr goes to a file or a pipe; nothing with --json (the
 * JSON events carry it).
 */
export function progressBar(opts: GlobalOptions, label: string, total: number): Progress {
  if (opts.json) return { update() {}, stop() {} };
  // The rate counts from the first update (the first unit often includes compilation and loading).
  let first: { i: number; t: number } | null = null;
  const rate = (i: number) => {
    first ??= { i, t: performance.now() };
    const seconds = (performance.now() - first.t) / 1000;
    return seconds > 0 && i > first.i ? (i - first.i) / seconds : 0;
  };
  const extraText = (extra?: Record<string, string | number>) =>
    extra
      ? Object.entries(extra)
          .map(([k, v]) => `${k} ${v}`)
          .join(' ')
      : '';
  if (!process.stderr.isTTY) return progressLines(label, total, rate, extraText);
  const bar = new cliProgress.SingleBar(
    {
      format: `${label} {value}/{total} |{bar}| {percentage}% | {its} it/s | ETA {eta_formatted} {extra}`,
      stream: process.stderr,
      hideCursor: true,
      etaBuffer: 20,
    },
    cliProgress.Presets.shades_classic,
  );
  bar.start(total, 0, { its: '0.00', extra: '' });
  return {
    update(i, extra, r) {
      bar.update(i, { its: (r ?? rate(i)).toFixed(2), extra: extraText(extra) });
    },
    stop() {
      bar.stop();
    },
  };
}

function progressLines(
  label: string,
  total: number,
  rate: (i: number) => number,
  extraText: (e?: Record<string, string | number>) => string,
): Progress {
  const everyMs = 1000 * (Number(process.env.SINGLORA_PROGRESS_SECONDS) || 10);
  let lastAt = performance.now();
  let lastTenth = 0;
  let done = false;
  return {
    update(i, extra, measured) {
      if (done) return;
      const tenth = total > 0 ? Math.floor((10 * i) / total) : 0;
      const now = performance.now();
      if (i < total && now - lastAt < everyMs && tenth === lastTenth) return;
      lastAt = now;
      lastTenth = tenth;
      const r = measured ?? rate(i);
      const eta = r > 0 ? formatDuration((total - i) / r) : '?';
      const pct = total > 0 ? ` (${Math.floor((100 * i) / total)}%)` : '';
      process.stderr.write(
        `${label} ${i}/${total}${pct}  ${r.toFixed(2)} ${label}s/s  ETA ${eta}${extra ? `  ${extraText(extra)}` : ''}\n`,
      );
      if (i >= total) done = true;
    },
    stop() {
      done = true;
    },
  };
}

/** 75 -> "1m15s", 4000 -> "1h06m". */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '?';
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
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

/** A Redis queue URL without its password, for printing (`serve --queue`, `worker --queue`). */
export function redacted(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return url;
  }
}

/** SINGLORA_QUEUE, checked as --queue is; undefined when unset. */
export function queueFromEnv(): string | undefined {
  const v = process.env.SINGLORA_QUEUE?.trim();
  if (!v) return undefined;
  try {
    return parse.queueUrl(v);
  } catch (err) {
    throw new UsageError(`SINGLORA_QUEUE: ${(err as Error).message}`);
  }
}
