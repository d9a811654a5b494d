/**
 * A real Redis for the queue suites (test/queue): Debian's `redis-server` (SINGLORA_REDIS_SERVER
 * names another binary), started on a free loopback port in a temporary folder, with a password,
 * and with its append-only file on when the test needs what survives a restart. It can be stopped
 * and started again on the same port and folder (a Redis restart as the queue sees it) and is
 * killed after the suite's tests. Without the binary the suite is skipped, tagged
 * `[needs redis-server]`; under CI=true (which installs it, .ci/run) it fails instead.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createConnection, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { skipReason } from './ciRequirements.ts';
import { startProcess, type TestProcess } from './processes.ts';

export const REDIS_SERVER = process.env.SINGLORA_REDIS_SERVER?.trim() || '/usr/bin/redis-server';

/** Why no Redis can be started here, or null. */
export function noRedisServer(): string | null {
  if (existsSync(REDIS_SERVER)) return null;
  return `no redis-server at ${REDIS_SERVER}; install it (\`apt-get install redis-server\`, as .ci/run does) or point SINGLORA_REDIS_SERVER at one`;
}

/**
 * The queue suites' skip reason (`[needs redis-server] ...`, printed), or null when redis-server is
 * here; under CI=true a missing binary throws instead (ciRequirements.ts).
 */
export function redisSkipReason(): string | null {
  const missing = noRedisServer();
  return missing ? skipReason('redis-server', missing) : null;
}

/** A started TestRedis; by default without appendonly (`TestRedis.start` turns it on). */
export function startRedis(o: RedisOptions = {}): Promise<TestRedis> {
  return TestRedis.start({ appendonly: false, ...o });
}

/** A free TCP port on the loopback address (free when asked; the caller binds it at once). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

export interface RedisOptions {
  /** appendonly yes (fsync every second): the queue's keys survive a restart. Default true. */
  appendonly?: boolean;
  /** requirepass; default a random one. null: none. */
  password?: string | null;
}

export type Resp = string | number | null | Resp[];

/** A Redis reply that is an error (`-ERR ...`). */
export class RedisReplyError extends Error {}

export class TestRedis {
  #proc: TestProcess | null = null;
  #logs: string[] = [];

  private constructor(
    readonly port: number,
    readonly dir: string,
    readonly password: string | null,
    readonly appendonly: boolean,
  ) {}

  /** Starts redis-server in a new temporary folder; throws with its output when it does not answer PING. */
  static async start(opts: RedisOptions = {}): Promise<TestRedis> {
    const reason = noRedisServer();
    if (reason) throw new Error(reason);
    const dir = mkdtempSync(join(tmpdir(), 'singlora-redis-'));
    const password = opts.password === undefined ? randomBytes(12).toString('hex') : opts.password;
    const redis = new TestRedis(await freePort(), dir, password, opts.appendonly ?? true);
    await redis.restart();
    return redis;
  }

  /** `redis://:<password>@127.0.0.1:<port>`: what the server and the workers are given. */
  get url(): string {
    return `redis://${this.password ? `:${encodeURIComponent(this.password)}@` : ''}127.0.0.1:${this.port}`;
  }

  get isRunning(): boolean {
    return this.#proc?.isRunning ?? false;
  }

  /** Everything redis-server printed, over all its starts. */
  get log(): string {
    return [...this.#logs, this.#proc?.output ?? ''].join('\n--- restart ---\n');
  }

  /** Starts it (again): same port, folder and options; resolves once it answers PING. */
  async restart(): Promise<void> {
    if (this.#proc?.isRunning) throw new Error(`redis-server on port ${this.port} is already running`);
    if (this.#proc) this.#logs.push(this.#proc.output);
    const args = [
      '--port',
      String(this.port),
      '--bind',
      '127.0.0.1',
      '--dir',
      this.dir,
      '--save',
      '',
      '--appendonly',
      this.appendonly ? 'yes' : 'no',
      '--appendfsync',
      'everysec',
      '--daemonize',
      'no',
      '--protected-mode',
      'yes',
      ...(this.password ? ['--requirepass', this.password] : []),
    ];
    this.#proc = startProcess(`redis-server:${this.port}`, REDIS_SERVER, args, { cwd: this.dir });
    await this.#untilPong(10_000);
  }

  /** Starts it again after `stop()` (the same as `restart()`). */
  start(): Promise<void> {
    return this.restart();
  }

  /** SIGTERM (Redis writes its append-only file and exits), then waits for the exit. */
  async stop(): Promise<void> {
    const proc = this.#proc;
    if (!proc?.isRunning) return;
    proc.kill('SIGTERM');
    const exit = await Promise.race([proc.exited, sleep(10_000).then(() => null)]);
    if (!exit) await proc.killHard();
  }

  /** Kills it and removes its folder (teardown). */
  async dispose(): Promise<void> {
    await this.#proc?.killHard();
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** Sends one command (after AUTH) on a new connection; resolves with its reply. */
  command(...args: string[]): Promise<Resp> {
    return this.commandAs(this.password, args);
  }

  /** Sends one command after AUTH with `password` (null: none) on a new connection. */
  commandAs(password: string | null, args: string[]): Promise<Resp> {
    const commands = [...(password ? [['AUTH', password]] : []), args];
    return new Promise((resolve, reject) => {
      const socket = createConnection({ host: '127.0.0.1', port: this.port });
      let buffer = Buffer.alloc(0);
      const replies: Resp[] = [];
      socket.setTimeout(5000, () => socket.destroy(new Error(`redis ${args[0]}: no answer in 5 s`)));
      socket.on('error', reject);
      socket.on('connect', () => socket.write(commands.map(encodeCommand).join('')));
      socket.on('data', (d) => {
        buffer = Buffer.concat([buffer, d]);
        for (let r = parseReply(buffer, 0); r; r = parseReply(buffer, 0)) {
          buffer = buffer.subarray(r.end);
          if (r.value instanceof RedisReplyError) {
            socket.destroy();
            return reject(r.value);
          }
          replies.push(r.value);
        }
        if (replies.length === commands.length) {
          socket.end();
          resolve(replies[replies.length - 1]);
        }
      });
    });
  }

  async #untilPong(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let last = '';
    while (Date.now() < deadline) {
      if (!this.#proc?.isRunning) break;
      try {
        if ((await this.command('PING')) === 'PONG') return;
      } catch (err) {
        last = (err as Error).message;
      }
      await sleep(50);
    }
    const output = this.#proc?.tail() ?? '';
    await this.#proc?.killHard();
    throw new Error(`redis-server on port ${this.port} did not answer PING (${last}); it printed:\n${output}`);
  }
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

function encodeCommand(args: string[]): string {
  return `*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`;
}

/** One RESP2 reply from `buf` at `at`, or null when it has not all arrived. */
function parseReply(buf: Buffer, at: number): { value: Resp | RedisReplyError; end: number } | null {
  const eol = buf.indexOf('\r\n', at);
  if (eol < 0) return null;
  const line = buf.toString('utf8', at + 1, eol);
  switch (String.fromCharCode(buf[at])) {
    case '+':
      return { value: line, end: eol + 2 };
    case '-':
      return { value: new RedisReplyError(line), end: eol + 2 };
    case ':':
      return { value: Number(line), end: eol + 2 };
    case '$': {
      const n = Number(line);
      if (n < 0) return { value: null, end: eol + 2 };
      if (buf.length < eol + 2 + n + 2) return null;
      return { value: buf.toString('utf8', eol + 2, eol + 2 + n), end: eol + 2 + n + 2 };
    }
    case '*': {
      const n = Number(line);
      if (n < 0) return { value: null, end: eol + 2 };
      const items: Resp[] = [];
      let end = eol + 2;
      for (let i = 0; i < n; i++) {
        const r = parseReply(buf, end);
        if (!r) return null;
        items.push(r.value instanceof RedisReplyError ? r.value.message : r.value);
        end = r.end;
      }
      return { value: items, end };
    }
    default:
      throw new Error(`not a RESP reply: ${JSON.stringify(buf.toString('utf8', at, Math.min(buf.length, at + 40)))}`);
  }
}
