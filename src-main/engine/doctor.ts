/**
 * The backend report behind `singlora doctor` and the service's `system.doctor` (which runs it in
 * the engine process): every ONNX Runtime provider and TensorFlow.js backend, whether it starts
 * and why not, the backend selected, memory counters.
 */
import { activeBackend, initBackend, memoryCounters, probeBackends, type BackendName } from './backend/tf.ts';
import { probeProviders } from './onnx/providers.ts';

export async function doctorReport(backend: BackendName | 'auto' = 'auto') {
  const backends = await probeBackends();
  let selected: { name: string; device?: string } | { error: string };
  try {
    const info = await initBackend(backend);
    selected = { name: info.name, device: info.device };
  } catch (err) {
    selected = { error: (err as Error).message };
  }
  return {
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
    /** ONNX Runtime execution providers: whether each starts (inference) and can run a training step. */
    providers: await probeProviders(),
    /** TensorFlow.js backends (the tfjs engine). */
    backends,
    selected,
    active: activeBackend(),
    memory: memoryCounters(),
  };
}
