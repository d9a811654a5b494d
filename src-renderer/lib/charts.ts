/**
 * uPlot, loaded on demand (its module measures the screen on import, and it is only needed once a
 * chart is on screen). Colours come from the theme's CSS variables and are re-read when the OS
 * switches between light and dark.
 */
import type uPlotType from 'uplot';
import { tickLabels } from './format.ts';

/** False where charts cannot draw (no canvas or matchMedia, e.g. jsdom); the summaries still show. */
export function canDrawCharts(): boolean {
  if (typeof window === 'undefined' || typeof window.matchMedia !== 'function') return false;
  try {
    return !!document.createElement('canvas').getContext('2d');
  } catch {
    return false;
  }
}

export async function loadUplot(): Promise<typeof uPlotType> {
  const [m] = await Promise.all([import('uplot'), import('uplot/dist/uPlot.min.css')]);
  return m.default;
}

export interface ChartColors {
  text: string;
  grid: string;
  raw: string;
  smooth: string;
  second: string;
  baseline: string;
}

export function chartColors(el: Element): ChartColors {
  const cs = getComputedStyle(el);
  const v = (name: string, fallback: string) => cs.getPropertyValue(name).trim() || fallback;
  return {
    text: v('--muted', '#666'),
    grid: v('--chart-grid', '#ddd'),
    raw: v('--chart-raw', '#999'),
    smooth: v('--chart-smooth', '#44c'),
    second: v('--chart-second', '#b50'),
    baseline: v('--chart-baseline', '#c22'),
  };
}

/** Calls `fn` when the OS colour scheme changes; returns the function that stops listening. */
export function onSchemeChange(fn: () => void): () => void {
  const mq = window.matchMedia('(prefers-color-scheme: dark)');
  mq.addEventListener('change', fn);
  return () => mq.removeEventListener('change', fn);
}

/** Tick spacings for a step axis: whole steps only. */
export const STEP_INCREMENTS = [
  1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 2500, 5000, 10_000, 20_000, 50_000, 100_000,
];

export function axis(c: ChartColors, extra: Partial<uPlotType.Axis> = {}): uPlotType.Axis {
  return {
    stroke: c.text,
    grid: { stroke: c.grid, width: 1 },
    ticks: { stroke: c.grid, width: 1 },
    // uPlot's default labels stop at 3 decimals, so close scores (0.6661, 0.6664) would read alike.
    values: (_u, splits, _axis, _space, increment) => tickLabels(splits, increment),
    ...extra,
  };
}

/**
 * The width of a vertical axis: its longest tick label plus the ticks (uPlot's fixed default cuts
 * long labels such as 0.65905, which then run into the axis title).
 */
export function fitToLabels(u: uPlotType, values: string[] | null, axisIndex: number, cycle: number): number {
  const a = u.axes[axisIndex] as uPlotType.Axis & { _size?: number; font?: [string, number] };
  if (cycle > 1 && a._size) return a._size;
  const longest = (values ?? []).reduce((m, v) => (v.length > m.length ? v : m), '');
  const tick = (a.ticks as { size?: number } | undefined)?.size ?? 10;
  let width = 0;
  if (longest && a.font) {
    u.ctx.font = a.font[0];
    width = u.ctx.measureText(longest).width / (globalThis.devicePixelRatio || 1);
  }
  return Math.ceil(Math.max(40, tick + (a.gap ?? 5) + width + 4));
}

/** A y axis over values, as wide as its labels. */
export function valueAxis(c: ChartColors, extra: Partial<uPlotType.Axis> = {}): uPlotType.Axis {
  return axis(c, { size: fitToLabels, ...extra });
}

/** The x axis of a chart over training steps. */
export function stepAxis(c: ChartColors): uPlotType.Axis {
  return axis(c, { label: 'step', incrs: STEP_INCREMENTS });
}

/**
 * Mounts a uPlot in `el` built by `build(colors, width)`, resized with the element and rebuilt on
 * theme changes. Returns the live plot getter and the dispose function.
 */
export function mountChart(
  el: HTMLElement,
  height: number,
  build: (UPlot: typeof uPlotType, colors: ChartColors, width: number) => uPlotType,
): { plot: () => uPlotType | null; dispose: () => void } {
  let plot: uPlotType | null = null;
  let disposed = false;
  const cleanups: Array<() => void> = [];
  if (canDrawCharts()) {
    void loadUplot().then((UPlot) => {
      if (disposed) return;
      const make = () => {
        plot?.destroy();
        plot = build(UPlot, chartColors(el), Math.max(200, el.clientWidth));
      };
      make();
      cleanups.push(onSchemeChange(make));
      if (typeof ResizeObserver === 'function') {
        const ro = new ResizeObserver(() => plot?.setSize({ width: Math.max(200, el.clientWidth), height }));
        ro.observe(el);
        cleanups.push(() => ro.disconnect());
      }
    });
  }
  return {
    plot: () => plot,
    dispose() {
      disposed = true;
      for (const c of cleanups) c();
      plot?.destroy();
      plot = null;
    },
  };
}
