/**
 * A Python interpreter that imports torch, for the PyTorch reference (scripts/pytorch/): the first of
 * SINGLORA_PYTHON, python3 on PATH and /usr/bin/python3 (Debian's python3-torch), or null. A
 * pyenv or venv python3 on PATH often lacks the system's torch, hence the fallback.
 */
import { spawnSync } from 'node:child_process';

export function torchPython(): string | null {
  const candidates = [process.env.SINGLORA_PYTHON, 'python3', '/usr/bin/python3'].filter((c): c is string => !!c);
  for (const c of candidates) {
    const r = spawnSync(c, ['-c', 'import torch'], { stdio: 'ignore', timeout: 60_000 });
    if (r.status === 0) return c;
  }
  return null;
}
