/**
 * Symbolic shapes for the gradient executor (gradOps.ts). ONNX values carry a rank but no shape;
 * a vector-Jacobian rule must know, for instance, along which axes an operand was broadcast so
 * that it can sum its gradient back to the operand's shape. So GradOps gives every value it makes
 * a shape whose dims are numbers or symbols:
 *
 *   number        a size known when the graph is emitted (channels, heads, kernel sizes)
 *   'batch'       a symbol: a graph input's named dim, the same size wherever the name appears
 *   '2*height'    a product of symbols with a numeric factor (nearest upsampling, tokens H*W)
 *   '§7'          an interned symbol standing for an expression that is not a product
 *                 (a stride-2 convolution's output size, an inferred reshape dim)
 *
 * Two dims are the same size when they are the same number or the same string; anything else is
 * "unknown", and a rule that needs it asks ONNX Runtime at run time (Shape ops).
 */
export type Dim = number | string;

/** c * f1 * f2 * ... (factors sorted). */
interface Monomial {
  readonly c: number;
  readonly f: readonly string[];
}

function monomial(d: Dim): Monomial {
  if (typeof d === 'number') return { c: d, f: [] };
  let c = 1;
  const f: string[] = [];
  for (const part of d.split('*')) {
    const n = Number(part);
    if (part !== '' && Number.isFinite(n)) c *= n;
    else f.push(part);
  }
  return { c, f: f.sort() };
}

function fromMonomial(m: Monomial): Dim {
  if (m.f.length === 0) return m.c;
  return [...(m.c === 1 ? [] : [String(m.c)]), ...[...m.f].sort()].join('*');
}

export function mulDims(a: Dim, b: Dim): Dim {
  const x = monomial(a);
  const y = monomial(b);
  return fromMonomial({ c: x.c * y.c, f: [...x.f, ...y.f] });
}

/** a / b when it is a whole monomial (b's factors all in a, the coefficient divisible), else null. */
export function divDims(a: Dim, b: Dim): Dim | null {
  const x = monomial(a);
  const y = monomial(b);
  if (y.c === 0 || x.c % y.c !== 0) return null;
  const rest = [...x.f];
  for (const s of y.f) {
    const i = rest.indexOf(s);
    if (i < 0) return null;
    rest.splice(i, 1);
  }
  return fromMonomial({ c: x.c / y.c, f: rest });
}

export function sizeOf(shape: readonly Dim[]): Dim {
  return shape.reduce<Dim>((acc, d) => mulDims(acc, d), 1);
}

export function isStatic(shape: readonly Dim[]): shape is readonly number[] {
  return shape.every((d) => typeof d === 'number');
}

/** Interns expressions as fresh symbols, so that the same expression is the same symbol. */
export class Symbols {
  private readonly interned = new Map<string, string>();
  private count = 0;

  /** A symbol for `key` (the same one for the same key). */
  intern(key: string): string {
    let s = this.interned.get(key);
    if (s === undefined) {
      s = `§${this.count++}`;
      this.interned.set(key, s);
    }
    return s;
  }

  /** A symbol no other dim equals (a value whose shape nobody declared). */
  fresh(): string {
    return `§${this.count++}`;
  }

  /** A caller's dim name as a symbol ('*' would read as a product). */
  static named(name: string): string {
    return name.replace(/\*/g, '_');
  }
}

/** Multidirectional (NumPy) broadcasting of two shapes. */
export function broadcastShapes(a: readonly Dim[], b: readonly Dim[], sym: Symbols): Dim[] {
  const r = Math.max(a.length, b.length);
  const pa = [...Array(r - a.length).fill(1), ...a];
  const pb = [...Array(r - b.length).fill(1), ...b];
  return pa.map((x, i) => {
    const y = pb[i];
    if (x === 1) return y;
    if (y === 1 || x === y) return x;
    if (typeof x === 'number') return x;
    if (typeof y === 'number') return y;
    return sym.intern(`broadcast(${x},${y})`);
  });
}

/**
 * The axes along which an operand of shape `operand` was broadcast to `out`, split into those
 * that are certain (`lead`: axes the operand lacks; `unit`: its size-1 axes, aligned to the
 * operand's rank) and whether some axis is undecidable when emitting (`unknown`).
 */
export function broadcastAxes(
  operand: readonly Dim[],
  out: readonly Dim[],
): { lead: number[]; unit: number[]; unknown: boolean } {
  const shift = out.length - operand.length;
  const lead = Array.from({ length: shift }, (_, i) => i);
  const unit: number[] = [];
  let unknown = false;
  operand.forEach((d, i) => {
    const o = out[i + shift];
    if (d === 1) {
      if (o !== 1) unit.push(i);
    } else if (d !== o && typeof d !== 'number') unknown = true;
  });
  return { lead, unit, unknown };
}

/** ONNX Reshape's output shape: 0 copies the input's dim, -1 is what remains. */
export function reshapeShape(input: readonly Dim[], target: readonly number[], sym: Symbols): Dim[] {
  const out: (Dim | null)[] = target.map((t, i) => (t === 0 ? input[i] : t === -1 ? null : t));
  const at = out.indexOf(null);
  if (at < 0) return out as Dim[];
  const known = out.filter((d): d is Dim => d !== null);
  const rest = divDims(sizeOf(input), sizeOf(known));
  out[at] = rest ?? sym.intern(`reshape(${input.join(',')}|${target.join(',')})`);
  return out as Dim[];
}

/** A convolution's output size along one axis. */
export function convDim(n: Dim, k: number, s: number, p0: number, p1: number, sym: Symbols): Dim {
  if (typeof n === 'number') return Math.floor((n + p0 + p1 - k) / s) + 1;
  if (s === 1 && p0 + p1 === k - 1) return n;
  return sym.intern(`conv(${n},${k},${s},${p0},${p1})`);
}
