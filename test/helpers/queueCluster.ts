/**
 * A server and its workers as a user deploys them, on one machine: `node bin/singlora.js serve`
 * and any number of `node bin/singlora.js worker` processes, each with its own temporary cache
 * folder (the local ONNX graph cache) and its own view of one shared folder (a symlink per process
 * stands for the mount point each machine gives the share). The test talks to the server over its
 * HTTP API and WebSocket as the UI does, reads each process's output, SIGKILLs a worker, and
 * `dispose()` kills every process it started, whatever the test did.
 */
import { cpSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { WebSocket } from 'ws';
import type {
  EventData,
  EventName,
  Job,
  Method,
  Params,
  QueueStatus,
  Result,
  RunEvent,
} from '../../src-main/api/contract.ts';
import { startProcess, type TestProcess } from './processes.ts';
import { sleep } from './redis.ts';

export const REPO = resolve(import.meta.dirname, '../..');
export const BIN = join(REPO, 'bin/singlora.js');
export const TOY_MODEL = join(REPO, 'models/toy-sd');
export const TOY_SUBJECT = join(REPO, 'models/toy-sd-subject');
/** Loading the CLI through tsx and opening the engine, on 2 busy cores. */
const START_MS = 90_000;
/** An API call that takes longer has hung. */
const CALL_MS = 60_000;
export const TERMINAL: ReadonlyArray<Job['status']> = ['done', 'failed', 'cancelled'];

/** An API call that answered `{ok: false}`. */
export class ApiCallError extends Error {
  constructor(
    readonly method: string,
    readonly code: string,
    message: string,
    readonly status: number,
  ) {
    super(`${method}: ${code}: ${message}`);
  }
}

export interface WsEvent {
  event: EventName;
  data: unknown;
  /** performance.now() when it arrived. */
  at: number;
}

/** A running `singlora serve`: its API, its WebSocket events and its output. */
export class Served {
  readonly events: WsEvent[] = [];
  #ws: WebSocket | null = null;

  constructor(
    readonly proc: TestProcess,
    readonly url: string,
    readonly token: string,
  ) {}

  async call<M extends Method>(method: M, params: Params<M>): Promise<Result<M>> {
    const res = await fetch(`${this.url}api/${method}`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${this.token}`, 'Content-Type': 'application/json' },
      body: JSON.stringify(params),
      signal: AbortSignal.timeout(CALL_MS),
    }).catch((err: Error) => {
      throw new Error(`${method} on ${this.proc.name}: ${err.message}`);
    });
    const body = (await res.json()) as { ok: boolean; result?: unknown; error?: { code: string; message: string } };
    if (!body.ok) throw new ApiCallError(method, body.error!.code, body.error!.message, res.status);
    return body.result as Result<M>;
  }

  /** Opens the WebSocket; every event from then on lands in `events`. */
  async listen(): Promise<void> {
    const ws = new WebSocket(`${this.url.replace(/^http/, 'ws')}ws?token=${this.token}`);
    ws.on('message', (m) => {
      const { event, data } = JSON.parse(String(m)) as { event: EventName; data: unknown };
      this.events.push({ event, data, at: performance.now() });
    });
    await new Promise((ok, fail) => (ws.once('open', ok), ws.once('error', fail)));
    this.#ws = ws;
  }

  /** Polls `jobs.list` until the job ends (done, failed or cancelled); returns its record. */
  async waitJob(jobId: string, timeoutMs: number): Promise<Job> {
    return this.waitJobs([jobId], timeoutMs).then((jobs) => jobs[0]);
  }

  /** Polls `jobs.list` until every one of `ids` has ended; their records in the order of `ids`. */
  async waitJobs(ids: readonly string[], timeoutMs: number): Promise<Job[]> {
    return this.until(
      async () => {
        const jobs = await this.call('jobs.list', {});
        const ours = ids.map((id) => jobs.find((j) => j.id === id));
        return ours.every((j) => j && TERMINAL.includes(j.status)) ? (ours as Job[]) : null;
      },
      timeoutMs,
      `jobs ${ids.length > 3 ? `${ids.slice(0, 3).join(', ')}, ...` : ids.join(', ')} to end`,
    );
  }

  /** The first WebSocket event (from `from` on) that `pred` takes, once it has come. */
  async waitEvent(pred: (e: WsEvent) => boolean, timeoutMs: number, what: string, from = 0): Promise<WsEvent> {
    return this.until(async () => this.events.slice(from).find(pred) ?? null, timeoutMs, what);
  }

  /** The `train.event`s of `runId` (after `since`, a performance.now() time), with when they came. */
  trainEvents(runId: string, since = 0): Array<{ at: number; event: RunEvent }> {
    return this.events
      .filter((e) => e.event === 'train.event' && e.at > since)
      .map((e) => ({ at: e.at, ...(e.data as EventData<'train.event'>) }))
      .filter((e) => e.runId === runId);
  }

  /** Polls `jobs.queue` until `names` are all listed alive. */
  async waitWorkers(names: readonly string[], timeoutMs = START_MS): Promise<QueueStatus> {
    return this.until(
      async () => {
        const q = await this.call('jobs.queue', {});
        return names.every((n) => q.workers.some((w) => w.name === n && w.alive)) ? q : null;
      },
      timeoutMs,
      `workers ${names.join(', ')} to be listed alive by jobs.queue`,
    );
  }

  /**
   * Calls `probe` every 200 ms until it returns non-null; API errors in between (a Redis restart)
   * are retried. Fails with the last error and the server's output when `timeoutMs` passes.
   */
  async until<T>(probe: () => Promise<T | null>, timeoutMs: number, what: string): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    let last = '';
    while (Date.now() < deadline) {
      try {
        const v = await probe();
        if (v !== null) return v;
        last = '';
      } catch (err) {
        last = (err as Error).message;
      }
      if (!this.proc.isRunning) break;
      await sleep(200);
    }
    throw new Error(
      `waited ${timeoutMs} ms for ${what}${last ? ` (last error: ${last})` : ''}; the server's output ends:\n${this.proc.tail()}`,
    );
  }

  close(): void {
    this.#ws?.close();
    this.#ws = null;
  }
}

/** The temporary root of a cluster: the shared folder, a mount point per process, cache folders. */
export class Cluster {
  readonly root = mkdtempSync(join(tmpdir(), 'singlora-queue-'));
  /** The shared folder: the projects (data dir) and the models folder every machine reads. */
  readonly share = join(this.root, 'share');
  readonly processes: TestProcess[] = [];
  readonly servers: Served[] = [];

  constructor() {
    mkdirSync(join(this.share, 'models'), { recursive: true });
    cpSync(TOY_MODEL, join(this.share, 'models/toy-sd'), { recursive: true });
  }

  /** `<root>/mnt-<name>`: a path of its own to the shared folder, as another machine mounts it. */
  mount(name: string): string {
    const path = join(this.root, `mnt-${name}`);
    symlinkSync(this.share, path, 'dir');
    return path;
  }

  /** The environment of a child: no queue, token or debug variables inherited; its own cache folder. */
  env(name: string, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      SINGLORA_DEBUG: '',
      SINGLORA_CACHE_DIR: this.#cache(name),
      ...extra,
    };
    for (const k of ['SINGLORA_QUEUE', 'SINGLORA_SERVER_TOKEN', 'SINGLORA_DATA_DIR', 'SINGLORA_MODELS_DIR'])
      if (!(k in extra)) delete env[k];
    return env;
  }

  /**
   * Starts `singlora serve --port 0 --json` on the share (through its own mount), with `--queue`
   * when `queue` is given; resolves once it prints where it listens and its WebSocket is open.
   */
  async serve(opts: { queue?: string; name?: string; args?: string[]; env?: NodeJS.ProcessEnv } = {}): Promise<Served> {
    const name = opts.name ?? 'server';
    const mnt = this.mount(name);
    const token = `test-token-${name}-0123456789abcdef`;
    const args = [BIN, 'serve', '--port', '0', '--json', '--token', token, '--data-dir', join(mnt, 'data')];
    args.push(
      '--models-dir',
      join(mnt, 'models'),
      ...(opts.queue ? ['--queue', opts.queue] : []),
      ...(opts.args ?? []),
    );
    const proc = this.#start(name, args, this.env(name, opts.env));
    const m = await proc.waitFor(/\{"event":"listening".*\}/, START_MS, 'the "listening" line');
    const { url } = JSON.parse(m[0]) as { url: string };
    const served = new Served(proc, url, token);
    this.servers.push(served);
    await served.listen();
    return served;
  }

  /** Starts `singlora worker --queue <queue> --data-dir <its mount>/data --name <name>` (and `args`). */
  worker(name: string, queue: string, opts: { args?: string[]; env?: NodeJS.ProcessEnv } = {}): TestProcess {
    const mnt = this.mount(name);
    const args = [BIN, 'worker', '--queue', queue, '--data-dir', join(mnt, 'data'), '--name', name];
    args.push('--models-dir', join(mnt, 'models'), ...(opts.args ?? []));
    return this.#start(name, args, this.env(name, opts.env));
  }

  /** Every process's name, pid and the end of its output (for a failing test's message). */
  report(chars = 2000): string {
    return this.processes.map((p) => `=== ${p.name} (pid ${p.pid}) ===\n${p.tail(chars)}`).join('\n');
  }

  /** Kills every process it started that still runs, and removes the root. */
  async dispose(): Promise<void> {
    for (const s of this.servers) s.close();
    await Promise.all(this.processes.map((p) => p.killHard()));
    rmSync(this.root, { recursive: true, force: true });
  }

  #start(name: string, args: string[], env: NodeJS.ProcessEnv): TestProcess {
    const proc = startProcess(name, process.execPath, args, { cwd: REPO, env });
    this.processes.push(proc);
    return proc;
  }

  #cache(name: string): string {
    const dir = join(this.root, `cache-${name}`);
    mkdirSync(dir, { recursive: true });
    return dir;
  }
}

/** The toy subject's photos as `photos.add` files. */
export function subjectPhotos(): Array<{ name: string; dataBase64: string }> {
  return readdirSync(TOY_SUBJECT)
    .filter((n) => n.endsWith('.png'))
    .map((name) => ({ name, dataBase64: readFileSync(join(TOY_SUBJECT, name)).toString('base64') }));
}

/** A project on the server, with the toy subject's photos when `photos`; its id. */
export async function newProject(served: Served, name: string, photos = false): Promise<string> {
  const { id } = await served.call('projects.create', { name, classWord: 'ball' });
  if (photos) await served.call('photos.add', { projectId: id, files: subjectPhotos() });
  return id;
}

/** Settings of a short toy generation (64 px, `steps` DDIM steps, seed `seed`). */
export function toyImage(seed: number, steps = 6): Params<'generation.start'>['settings'] {
  return { prompt: 'a photo of sks ball', steps, width: 64, height: 64, scheduler: 'ddim', seed };
}
