/**
 * The engine process: the only process of the app that loads TensorFlow.js, the models and
 * onnxruntime. The host (engineHost.ts) starts it with `child_process.fork` (tsx as the loader) or,
 * in the Electron shell, `utilityProcess.fork`; a crash or an out-of-memory here never takes the
 * caller down.
 *
 * Startup: the backend is picked once (`initBackend`, honouring SINGLORA_BACKEND), then `ready`.
 * Requests (protocol.ts) run concurrently as far as JavaScript allows; the host's job runner
 * sends one long job at a time, and short queries (inspect, doctor) may arrive meanwhile.
 * Engine modules load on first use, so a missing or broken one fails its request, not the process.
 *
 * One pipeline is kept warm for generation (per base model) and dropped before training,
 * evaluation and export, which need the memory.
 */
import type { StableDiffusion } from '../engine/pipeline/stableDiffusion.ts';
import type { EngineKind, EngineParams, EngineProgress, EngineResult, HostMessage, WorkerMessage } from './protocol.ts';

/** Messages handed to IPC but not yet written (flushed before exiting). */
let unsent = 0;

interface Port {
  post(msg: WorkerMessage): void;
  onMessage(fn: (msg: HostMessage) => void): void;
  onDisconnect(fn: () => void): void;
}

/** Electron's utilityProcess gives `process.parentPort`; child_process.fork gives `process.send`. */
function connect(): Port {
  const parentPort = (process as unknown as { parentPort?: { postMessage(m: unknown): void; on(e: 'message', fn: (e: { data: unknown }) => void): void } }).parentPort;
  if (parentPort) {
    return {
      post: (m) => parentPort.postMessage(m),
      onMessage: (fn) => parentPort.on('message', (e) => fn(e.data as HostMessage)),
      onDisconnect: () => {}, // a utility process ends with its parent
    };
  }
  if (process.send) {
    return {
      post: (m) => {
        if (!process.connected) return;
        unsent++;
        process.send!(m, undefined, undefined, () => unsent--);
      },
      onMessage: (fn) => process.on('message', (m) => fn(m as HostMessage)),
      onDisconnect: (fn) => process.on('disconnect', fn),
    };
  }
  throw new Error('engineWorker: started without an IPC channel; the engine host starts it (child_process.fork or utilityProcess.fork)');
}

interface Context<K extends EngineKind> {
  signal: AbortSignal;
  progress: (data: EngineProgress<K>) => void;
}
type Handlers = { [K in EngineKind]: (params: EngineParams<K>, ctx: Context<K>) => Promise<EngineResult<K>> };

let warm: { base: string; sd: StableDiffusion } | null = null;

async function warmPipeline(base: string): Promise<StableDiffusion> {
  if (warm?.base === base) return warm.sd;
  dropWarm();
  const { StableDiffusion } = await import('../engine/pipeline/stableDiffusion.ts');
  const sd = await StableDiffusion.load(base);
  warm = { base, sd };
  return sd;
}

function dropWarm(): void {
  warm?.sd.dispose();
  warm = null;
}

const handlers: Handlers = {
  async train(p, ctx) {
    dropWarm();
    const { train } = await import('../engine/train/trainer.ts');
    const r = await train({ base: p.base, photos: p.photos, runDir: p.runDir, settings: p.settings, resume: p.resume, classImagesCacheDir: p.classImagesCacheDir }, { onEvent: ctx.progress, signal: ctx.signal });
    return { status: r.manifest.status, step: r.manifest.step, error: r.manifest.error, fixedLoss: r.fixedLoss };
  },

  async generate(p, ctx) {
    const { generateImages } = await import('../engine/pipeline/generate.ts');
    const sd = await warmPipeline(p.base);
    const files = await generateImages(
      { base: p.base, sd, settings: p.settings, adapters: p.adapters, outDir: p.outDir },
      {
        signal: ctx.signal,
        onStep: (i) => ctx.progress({ type: 'step', image: i.image, images: i.images, step: i.step, steps: i.steps }),
        onImage: (g) => ctx.progress({ type: 'image', file: g.file, sidecar: g.sidecar }),
        onAdapters: (summaries) => ctx.progress({ type: 'adapters', summaries }),
      },
    );
    return { files: files.map((f) => f.file) };
  },

  async evaluate(p, ctx) {
    dropWarm();
    const { evaluateRun } = await import('../engine/eval/evaluateRun.ts');
    return evaluateRun(
      { runDir: p.runDir, photos: p.photos, checkpoints: p.checkpoints, subjectType: p.subjectType, prompts: p.prompts, imagesPerPrompt: p.imagesPerPrompt, steps: p.steps, dinoModel: p.dinoModel, modelsDir: p.modelsDir },
      { signal: ctx.signal, onProgress: (done, total, label) => ctx.progress({ done, total, label }) },
    );
  },

  async export(p, ctx) {
    dropWarm();
    const { exportAdapter } = await import('../engine/adapters/exportAdapter.ts');
    let last = 0;
    const r = await exportAdapter({
      adapter: p.adapter,
      format: p.format,
      out: p.out,
      base: p.base,
      onProgress: (done, total) => {
        if (ctx.signal.aborted) throw new Error('export cancelled');
        const now = Date.now();
        if (now - last > 250 || done === total) {
          last = now;
          ctx.progress({ done, total });
        }
      },
    });
    return { format: r.format, path: r.path, tensors: r.tensors };
  },

  async inspect(p) {
    const { inspectAdapter } = await import('../engine/adapters/exportAdapter.ts');
    const out: EngineResult<'inspect'> = [];
    for (const file of p.files) {
      try {
        out.push({ ok: true, info: await inspectAdapter(file) });
      } catch (err) {
        out.push({ ok: false, error: (err as Error).message });
      }
    }
    return out;
  },

  async doctor() {
    const { doctorReport } = await import('../engine/doctor.ts');
    const r = await doctorReport();
    return { node: r.node, platform: r.platform, backends: r.backends, selected: r.selected, memory: { ...r.memory } };
  },

  async sleep(p, ctx) {
    const t0 = Date.now();
    while (Date.now() - t0 < p.ms) {
      if (ctx.signal.aborted) throw new Error(`sleep cancelled (${String(ctx.signal.reason)})`);
      await new Promise((r) => setTimeout(r, Math.min(p.every ?? 50, p.ms)));
      ctx.progress({ elapsed: Date.now() - t0 });
    }
    return { slept: Date.now() - t0 };
  },
};

const port = connect();
const running = new Map<number, { controller: AbortController; done: Promise<void> }>();
let ready: Promise<boolean>;
let exiting = false;

function start(id: number, kind: EngineKind, params: unknown): void {
  const controller = new AbortController();
  const handler = handlers[kind] as (p: unknown, ctx: Context<EngineKind>) => Promise<unknown>;
  const done = (async () => {
    try {
      if (!handler) throw new Error(`the engine has no request kind '${kind}'`);
      if (!(await ready)) throw new Error('the engine backend did not start');
      const result = await handler(params, { signal: controller.signal, progress: (data) => port.post({ type: 'progress', id, data }) });
      port.post({ type: 'result', id, result });
    } catch (err) {
      const e = err as Error;
      port.post({ type: 'error', id, message: e?.message ?? String(err) });
      if (process.env.SINGLORA_DEBUG) process.stderr.write(`engine: ${kind} #${id} failed: ${e?.stack ?? err}\n`);
    } finally {
      running.delete(id);
    }
  })();
  running.set(id, { controller, done });
}

/** Pauses whatever runs (training checkpoints and stops after its step), then exits. */
async function shutdown(code: number): Promise<never> {
  if (!exiting) {
    exiting = true;
    for (const r of running.values()) r.controller.abort('pause');
    const all = Promise.all([...running.values()].map((r) => r.done));
    await Promise.race([all, new Promise((r) => setTimeout(r, 60_000))]);
    dropWarm();
  }
  for (let i = 0; i < 100 && unsent > 0 && process.connected; i++) await new Promise((r) => setTimeout(r, 10));
  process.exit(code);
}

port.onMessage((msg) => {
  if (msg.type === 'request') start(msg.id, msg.kind, msg.params);
  else if (msg.type === 'cancel') running.get(msg.id)?.controller.abort(msg.reason);
  else if (msg.type === 'shutdown') void shutdown(0);
});
port.onDisconnect(() => void shutdown(0)); // the host is gone: stop cleanly, leave no orphan

ready = (async () => {
  try {
    const { initBackend } = await import('../engine/backend/tf.ts');
    const info = await initBackend();
    port.post({ type: 'ready', backend: { name: info.name, ...(info.device ? { device: info.device } : {}) }, pid: process.pid });
    return true;
  } catch (err) {
    port.post({ type: 'startup-failed', message: (err as Error).message });
    setTimeout(() => process.exit(1), 100);
    return false;
  }
})();
