/**
 * Child processes a test starts (redis-server, `singlora serve`, `singlora worker`): their output
 * kept for the test to read, waits on a line of it, and teardown that leaves none behind. Each is
 * the leader of its own process group, so `killHard()` takes its engine process with it. Every
 * process started here is SIGKILLed (with its group) by its owner's teardown, by `killAll()`, and,
 * as a last resort, when the test process itself exits.
 */
import { spawn, type ChildProcess } from 'node:child_process';

const running = new Set<TestProcess>();
let exitHookInstalled = false;

/** SIGKILLs every process still running; returns their names (what a test forgot). */
export function killAll(): string[] {
  const names: string[] = [];
  for (const p of running) {
    names.push(p.name);
    p.killGroup();
  }
  return names;
}

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // Synchronous, so it runs even when vitest ends the fork with process.exit().
  process.on('exit', () => killAll());
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export class TestProcess {
  /** stdout and stderr as they came, interleaved. */
  output = '';
  stdout = '';
  readonly exited: Promise<Exit>;
  #exit: Exit | null = null;
  #waiters: Array<() => void> = [];

  constructor(
    readonly name: string,
    readonly child: ChildProcess,
  ) {
    running.add(this);
    const take = (isStdout: boolean) => (d: Buffer) => {
      const s = d.toString('utf8');
      this.output += s;
      if (isStdout) this.stdout += s;
      for (const w of [...this.#waiters]) w();
    };
    child.stdout?.on('data', take(true));
    child.stderr?.on('data', take(false));
    this.exited = new Promise((resolve) => {
      child.on('close', (code, signal) => {
        running.delete(this);
        this.#exit = { code, signal };
        for (const w of [...this.#waiters]) w();
        resolve(this.#exit);
      });
      child.on('error', (err) => {
        this.output += `\n[spawn error] ${err.message}\n`;
      });
    });
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  get isRunning(): boolean {
    return this.#exit === null;
  }

  /** Sends `signal` to the process alone (its children, such as an engine process, are left to it). */
  kill(signal: NodeJS.Signals = 'SIGTERM'): void {
    if (this.#exit === null) this.child.kill(signal);
  }

  /**
   * SIGKILLs the process and everything it started (its process group: a machine that dies takes
   * the engine process with it), and waits until the process is gone.
   */
  async killHard(): Promise<Exit> {
    this.killGroup();
    return this.exited;
  }

  /** SIGKILL to the process group (synchronous; teardown and the exit hook). */
  killGroup(): void {
    try {
      process.kill(-this.pid, 'SIGKILL');
    } catch {
      this.kill('SIGKILL'); // the group is gone, or the process was not started as its leader
    }
  }

  /**
   * Waits until the output (`from`: only what came after that offset) matches `re`; fails with the
   * last of the output when the process exits first or `timeoutMs` passes.
   */
  waitFor(re: RegExp, timeoutMs: number, what = String(re), from = 0): Promise<RegExpMatchArray> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const m = this.output.slice(from).match(re);
        if (m) return done(() => resolve(m));
        if (this.#exit) done(() => reject(this.#failure(`exited (${JSON.stringify(this.#exit)}) before ${what}`)));
      };
      const timer = setTimeout(
        () => done(() => reject(this.#failure(`${timeoutMs} ms passed without ${what}`))),
        timeoutMs,
      );
      const done = (settle: () => void) => {
        clearTimeout(timer);
        const i = this.#waiters.indexOf(check);
        if (i < 0) return; // settled already
        this.#waiters.splice(i, 1);
        settle();
      };
      this.#waiters.push(check);
      check();
    });
  }

  /** The last `chars` characters of the output, for failure messages. */
  tail(chars = 3000): string {
    return this.output.slice(-chars);
  }

  #failure(why: string): Error {
    return new Error(`${this.name}: ${why}; its output ends:\n${this.tail()}`);
  }
}

/** Starts `command` with piped output as the leader of its own process group, tracked for teardown. */
export function startProcess(
  name: string,
  command: string,
  args: readonly string[],
  opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {},
): TestProcess {
  installExitHook();
  const child = spawn(command, args, {
    cwd: opts.cwd,
    env: opts.env,
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  return new TestProcess(name, child);
}
