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
 * One pipeline is kept warm for generation (per base model, engine and provider) and dropped
 * before training, evaluation and export, which need the memory.
 *
 * Every request that runs a model carries `compute` (the app's settings or the request's own,
 * service/appSettings.ts): its engine and provider go to `StableDiffusion.load` and to `train`.
 */
import type { ComputeSettings } from '../api/schemas.ts';
import type { StableDiffusion } from '../engine/pipeline/stableDiffusion.ts';
import type { EngineRequests, EngineResult } from './protocol.ts';
import { serveEngine, type WorkerHandlers } from './workerLoop.ts';

type Handlers = WorkerHandlers<EngineRequests>;

let warm: { key: string; sd: StableDiffusion } | null = null;

async function warmPipeline(base: string, compute: ComputeSettings): Promise<StableDiffusion> {
  const key = JSON.stringify([base, compute.engine, compute.provider]);
  if (warm?.key === key) return warm.sd;
  dropWarm();
  const { StableDiffusion } = await import('../engine/pipeline/stableDiffusion.ts');
  const sd = await StableDiffusion.load(base, { engine: compute.engine, provider: compute.provider });
  warm = { key, sd };
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
    const r = await train(
      {
        base: p.base,
        photos: p.photos,
        runDir: p.runDir,
        settings: p.settings,
        resume: p.resume,
        classImagesDir: p.classImagesDir,
        classImagesCacheDir: p.classImagesCacheDir,
        modelsDir: p.modelsDir,
        // The engine trains and samples the previews; the provider runs both (onnx).
        baseOptions: { engine: p.compute.engine, provider: p.compute.provider },
        engine: p.compute.engine,
        provider: p.compute.provider,
      },
      { onEvent: ctx.progress, signal: ctx.signal },
    );
    return { status: r.manifest.status, step: r.manifest.step, error: r.manifest.error, fixedLoss: r.fixedLoss };
  },

  async generate(p, ctx) {
    const { generateImages } = await import('../engine/pipeline/generate.ts');
    const sd = await warmPipeline(p.base, p.compute);
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
      {
        runDir: p.runDir,
        photos: p.photos,
        checkpoints: p.checkpoints,
        subjectType: p.subjectType,
        prompts: p.prompts,
        imagesPerPrompt: p.imagesPerPrompt,
        steps: p.steps,
        dinoModel: p.dinoModel,
        scorer: p.scorer,
        modelsDir: p.modelsDir,
        inference: { engine: p.compute.engine, provider: p.compute.provider },
      },
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
    return {
      node: r.node,
      platform: r.platform,
      providers: r.providers.map((p) => ({ ...p, training: { ...p.training } })),
      backends: r.backends,
      selected: r.selected,
      memory: { ...r.memory },
    };
  },
};

serveEngine(handlers, { onShutdown: dropWarm });
