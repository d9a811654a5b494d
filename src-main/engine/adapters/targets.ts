/**
 * Which Linears an adapter wraps: name patterns matched against module paths. The default is
 * SingLoRA Studio's: `to_q`, `to_k`, `to_v`, `to_out.0` of every `attn1` and `attn2`, which is
 * 128 layers in the SD 1.5 UNet. It imports only the model layers, so the ONNX executor (which
 * feeds one low-rank side path per target) reads it without the adapters themselves.
 */
import { Linear } from '../models/layers/linear.ts';
import type { Module } from '../models/layers/module.ts';

export const DEFAULT_TARGETS: readonly string[] = [
  'attn1.to_q',
  'attn1.to_k',
  'attn1.to_v',
  'attn1.to_out.0',
  'attn2.to_q',
  'attn2.to_k',
  'attn2.to_v',
  'attn2.to_out.0',
];

/**
 * True when `path` matches `pattern`: the pattern's dot-separated segments equal the path's last
 * segments (`attn1.to_q` matches `down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`).
 * `*` matches one whole segment, `**` any number; a pattern starting with `^` is anchored at the
 * start of the path.
 */
export function matchesTarget(path: string, pattern: string): boolean {
  const anchored = pattern.startsWith('^');
  const pat = (anchored ? pattern.slice(1) : pattern).split('.');
  const segs = path.split('.');
  const match = (pi: number, si: number): boolean => {
    if (pi === pat.length) return si === segs.length;
    if (pat[pi] === '**') {
      for (let k = si; k <= segs.length; k++) if (match(pi + 1, k)) return true;
      return false;
    }
    if (si === segs.length) return false;
    return (pat[pi] === '*' || pat[pi] === segs[si]) && match(pi + 1, si + 1);
  };
  if (anchored) return match(0, 0);
  for (let start = 0; start <= segs.length - pat.length; start++) if (match(0, start)) return true;
  return pat.includes('**') && match(0, 0);
}

/** Every Linear in `model` whose path matches one of `targets`, in walk order. */
export function findTargets(
  model: Module,
  targets: readonly string[],
): Array<{ path: string; parent: Module; key: string; linear: Linear }> {
  const out: Array<{ path: string; parent: Module; key: string; linear: Linear }> = [];
  for (const [modPath, mod] of model.namedModules()) {
    for (const [key, value] of mod.entries()) {
      if (!(value instanceof Linear)) continue;
      const path = modPath ? `${modPath}.${key}` : key;
      if (targets.some((t) => matchesTarget(path, t))) out.push({ path, parent: mod, key, linear: value });
    }
  }
  return out;
}
