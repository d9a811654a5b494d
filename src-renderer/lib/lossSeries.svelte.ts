/**
 * Loss points for the chart, in columns (uPlot's data layout). Appends are O(1): the columns are
 * plain arrays and `version` is the one reactive value a chart watches, so a 100k-step run does not
 * copy or proxy the arrays on every step.
 */
export class LossSeries {
  readonly steps: number[] = [];
  readonly raw: number[] = [];
  readonly smoothed: number[] = [];
  version = $state(0);

  get length(): number {
    return this.steps.length;
  }

  get last(): { step: number; loss: number; smoothed: number } | null {
    const i = this.steps.length - 1;
    return i < 0 ? null : { step: this.steps[i], loss: this.raw[i], smoothed: this.smoothed[i] };
  }

  /** Appends a point; a step at or before the last one (a resumed run) first drops the points from it on. */
  push(step: number, loss: number, smoothed: number): void {
    if (this.steps.length && step <= this.steps[this.steps.length - 1]) {
      const keep = this.steps.findIndex((s) => s >= step);
      this.steps.length = this.raw.length = this.smoothed.length = keep;
    }
    this.steps.push(step);
    this.raw.push(loss);
    this.smoothed.push(smoothed);
    this.version++;
  }

  reset(points: Array<{ step: number; loss: number; smoothed: number }> = []): void {
    this.steps.length = this.raw.length = this.smoothed.length = 0;
    for (const p of points) {
      this.steps.push(p.step);
      this.raw.push(p.loss);
      this.smoothed.push(p.smoothed);
    }
    this.version++;
  }
}
