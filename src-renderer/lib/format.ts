/** Small display formatters. */

/** 75 -> "1:15", 3725 -> "1:02:05"; null or non-finite -> "—". */
/** A duration with its units, never a clock-like "16:57": "45 s", "5 min 04 s", "1 h 02 min". */
export function formatDuration(seconds: number | null | undefined): string {
  if (seconds == null || !Number.isFinite(seconds) || seconds < 0) return '—';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = String(s % 60).padStart(2, '0');
  if (h > 0) return `${h} h ${String(m).padStart(2, '0')} min`;
  return m > 0 ? `${m} min ${sec} s` : `${s} s`;
}

export function formatBytes(bytes: number | null | undefined): string {
  if (bytes == null || !Number.isFinite(bytes)) return '—';
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(i === 0 || v >= 100 ? 0 : 1)} ${units[i]}`;
}

/** Iterations per second; below 1 it/s the kohya-style "s/it" reads better. */
export function formatRate(its: number | null | undefined): string {
  if (its == null || !Number.isFinite(its) || its <= 0) return '—';
  return its >= 1 ? `${its.toFixed(2)} it/s` : `${(1 / its).toFixed(2)} s/it`;
}

/** The name of an evaluation's subject-fidelity score: DINO, or the toy world's score (eval/toyFidelity.ts). */
export function scoreName(evaluation: { metric?: 'dino' | 'toy' }): string {
  return evaluation.metric === 'toy' ? 'Toy fidelity' : 'DINO';
}

export function formatScore(v: number | null | undefined, digits = 4): string {
  return v == null || !Number.isFinite(v) ? '—' : v.toFixed(digits);
}

/** A learning rate as trainers write it: 1e-4, 5e-5, 2.5e-4; 0.5 stays 0.5. */
export function formatLearningRate(lr: number): string {
  if (!Number.isFinite(lr)) return '—';
  if (lr === 0 || Math.abs(lr) >= 0.01) return String(lr);
  const [mantissa, exponent] = lr.toExponential().split('e');
  return `${Number(Number(mantissa).toPrecision(3))}e${exponent.replace('+', '')}`;
}

export function formatDate(iso: string): string {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

/** Chart tick labels with as many decimals as the tick spacing needs (0.0001 apart: 4 decimals). */
export function tickLabels(splits: ReadonlyArray<number | null>, increment: number): string[] {
  const decimals = Math.min(8, Math.max(0, Math.ceil(-Math.log10(increment) - 1e-9)));
  return splits.map((v) => (v == null ? '' : v.toFixed(decimals)));
}
