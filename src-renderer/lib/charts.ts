/**
 * uPlot, loaded on demand (its module measures the screen on import, and it is only needed once a
 * chart is on screen). Colours come from the theme's CSS variables and are re-read when the OS
 * switches between light and dark.
 */
import type uPlotType from 'uplot';

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

export function axis(c: ChartColors, extra: Partial<uPlotType.Axis> = {}): uPlotType.Axis {
  return { stroke: c.text, grid: { stroke: c.grid, width: 1 }, ticks: { stroke: c.grid, width: 1 }, ...extra };
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
