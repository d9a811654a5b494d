/**
 * The backend report behind `singlora doctor` and the service's `system.doctor` (which runs it in
 * the engine process): every backend's status and why, the one selected, memory counters.
 */
import { activeBackend, initBackend, memoryCounters, probeBackends, type BackendName } from './backend/tf.ts';

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
    backends,
    selected,
    active: activeBackend(),
    memory: memoryCounters(),
  };
}
