/**
 * `singlora bench unet|generate|train`: the speed and memory figures quoted in the docs, each
 * printed with its backend and configuration.
 */
import type { Command } from 'commander';
import { benchGenerate } from '../engine/bench/generate.ts';
import { benchTrain } from '../engine/bench/train.ts';
import { benchUnet, formatBenchUnet } from '../engine/bench/unet.ts';
import { action, printResult, withCommon, type GlobalOptions } from './common.ts';

const num = (v: string) => {
  const n = Number(v);
  if (!Number.isFinite(n)) throw new Error(`expected a number, got '${v}'`);
  return n;
};

export function register(program: Command): void {
  const bench = program.command('bench').description('measure speed and memory on this machine');

  withCommon(
    bench
      .command('unet')
      .description('UNet forward timing with random weights (no file needed): SD 1.5 shape by default')
      .option('--config <path>', 'UNet config.json, unet/ folder or model folder', 'test/fixtures/sd15_configs/unet')
      .option('--sizes <list>', 'latent sizes, e.g. 32,64 or 16x12 (default: the config sample_size)')
      .option('--batch <n>', 'batch size (2 = with classifier-free guidance)', num, 1)
      .option('--iters <n>', 'timed forwards per size', num, 3)
      .option('--warmup <n>', 'warm-up forwards', num, 1),
  ).action(
    action(async (o: GlobalOptions & { config: string; sizes?: string; batch: number; iters: number; warmup: number }) => {
      const latentSizes = o.sizes?.split(',').map((s): [number, number] => {
        const [h, w] = s.split('x').map(Number);
        return [h, w ?? h];
      });
      const report = await benchUnet({ config: o.config.replace(/\/model$/, '/model/unet'), latentSizes, batch: o.batch, iters: o.iters, warmup: o.warmup, backend: o.backend ?? 'auto', log: o.json ? undefined : (l) => process.stderr.write(`${l}\n`) });
      printResult(o, report, () => formatBenchUnet(report));
    }),
  );

  withCommon(
    bench
      .command('generate')
      .description('seconds per image and UNet it/s for a base model')
      .requiredOption('--base <model>', 'base model folder or .safetensors')
      .option('--steps <n>', 'sampling steps', num, 20)
      .option('--images <n>', 'timed images', num, 2)
      .option('--width <px>', 'width (default: native)', num)
      .option('--height <px>', 'height (default: native)', num),
  ).action(
    action(async (o: GlobalOptions & { base: string; steps: number; images: number; width?: number; height?: number }) => {
      const r = await benchGenerate({ base: o.base, steps: o.steps, images: o.images, width: o.width, height: o.height, backend: o.backend ?? 'auto' });
      printResult(o, r, () => `${r.backend}: ${r.s_per_image.toFixed(2)} s/image, UNet ${r.unet_its.toFixed(2)} it/s (CFG batch 2), decode ${r.decode_s.toFixed(2)} s; ${r.config.width}x${r.config.height}, ${r.config.steps} steps ${r.config.scheduler}; load ${r.load_s.toFixed(1)} s`);
    }),
  );

  withCommon(
    bench
      .command('train')
      .description('ms per optimizer step (median after warm-up) and memory, random weights')
      .requiredOption('--base <path>', 'model folder, unet/ folder or UNet config.json (e.g. test/fixtures/sd15_configs/unet)')
      .requiredOption('--resolution <px>', 'training resolution', num)
      .option('--steps <n>', 'timed steps', num, 5)
      .option('--warmup <n>', 'warm-up steps', num, 1)
      .option('--rank <r>', 'adapter rank', num, 8)
      .option('--method <m>', 'singlora | lora', 'singlora')
      .option('--batch <n>', 'batch size', num, 1)
      .option('--checkpointing', 'gradient checkpointing per UNet block')
      .option('--gradient-checkpointing', 'the same as --checkpointing (the train setting\'s name)')
      .option('--attention <mode>', 'memory-efficient (as train uses) | plain (for comparison)', 'memory-efficient')
      .option('--profile', 'also list the step\'s kernels by time'),
  ).action(
    action(async (o: GlobalOptions & { base: string; resolution: number; steps: number; warmup: number; rank: number; method: string; batch: number; checkpointing?: boolean; gradientCheckpointing?: boolean; attention: string; profile?: boolean }) => {
      if (o.method !== 'singlora' && o.method !== 'lora') throw new Error(`--method must be singlora or lora, got ${o.method}`);
      if (o.attention !== 'memory-efficient' && o.attention !== 'plain') throw new Error(`--attention must be memory-efficient or plain, got ${o.attention}`);
      const r = await benchTrain({ base: o.base, resolution: o.resolution, steps: o.steps, warmup: o.warmup, rank: o.rank, method: o.method, batch: o.batch, checkpointing: o.checkpointing || o.gradientCheckpointing, attention: o.attention, profile: o.profile, backend: o.backend ?? 'auto', log: o.json ? undefined : (l) => process.stderr.write(`${l}\n`) });
      printResult(o, r, () =>
        [
          `${r.backend}: ${r.status}${r.error ? ` (${r.error})` : ''}`,
          `  ${r.config.method} rank ${r.config.rank} on ${r.adapterLayers} layers (${r.adapterParameters.toLocaleString('en-US')} params), UNet ${r.unetParameters.toLocaleString('en-US')} params`,
          `  ${r.config.resolution}px (latent ${r.config.latent.join('x')}), batch ${r.config.batch}, checkpointing ${r.config.checkpointing ? 'on' : 'off'}, ${r.config.attention} attention`,
          `  ms/step (median of ${r.ms_steps.length}): ${r.ms_per_step?.toFixed(0) ?? 'n/a'} (CPU time ${r.cpu_ms_per_step?.toFixed(0) ?? 'n/a'}); ${r.gflop_per_step?.toFixed(2) ?? 'n/a'} GFLOP per step (forward + backward), ${r.gflops?.toFixed(2) ?? 'n/a'} GFLOP/s`,
          `  peak RSS ${r.peak_rss_mb} MiB${r.wasm_heap_mb ? `, wasm heap ${r.wasm_heap_mb} MiB` : ''}`,
          `  tensor buffers at the step's peak: ${r.peak_step_buffer_bytes === null ? 'n/a' : `${(r.peak_step_buffer_bytes / 2 ** 20).toFixed(1)} MiB above the ${((r.buffer_bytes_before ?? 0) / 2 ** 20).toFixed(1)} MiB held before the step (weights ${(r.weight_bytes / 2 ** 20).toFixed(1)} MiB)`}; tfjs byte counter (counts shared clones again) ${r.peak_step_bytes === null ? 'n/a' : `${(r.peak_step_bytes / 2 ** 20).toFixed(1)} MiB`}`,
          ...(r.kernels ?? []).map((k) => `    ${k.name.padEnd(24)} ${String(k.calls).padStart(6)} calls ${k.ms.toFixed(1).padStart(9)} ms ${(k.share * 100).toFixed(1).padStart(5)}%`),
        ].join('\n'),
      );
    }),
  );
}
