/**
 * A small ONNX graph builder: values, nodes, initializers (in-memory or external data pointing
 * into weight files) and the serialized ModelProto (onnx-proto). Opset 17, IR version 8.
 *
 * It knows nothing about models; `onnxOps.ts` uses it to record what a model's `forward` does.
 */
import onnxProto from 'onnx-proto';
import { float32ToFloat16 } from '../io/safetensors.ts';

const { onnx } = onnxProto;
type NodeProto = onnxProto.onnx.INodeProto;
type TensorProto = onnxProto.onnx.ITensorProto;
type ValueInfoProto = onnxProto.onnx.IValueInfoProto;
type AttributeProto = onnxProto.onnx.IAttributeProto;
type OperatorSetIdProto = onnxProto.onnx.IOperatorSetIdProto;

export const OPSET = 17;
export const IR_VERSION = 8;

export type ElemType = 'float32' | 'float16' | 'bfloat16' | 'int32' | 'int64';

export const ONNX_TYPE: Record<ElemType, number> = {
  float32: onnx.TensorProto.DataType.FLOAT,
  float16: onnx.TensorProto.DataType.FLOAT16,
  bfloat16: onnx.TensorProto.DataType.BFLOAT16,
  int32: onnx.TensorProto.DataType.INT32,
  int64: onnx.TensorProto.DataType.INT64,
};

/** safetensors dtype -> ONNX element type of an initializer that reads the bytes in place. */
export function elemTypeOfSafetensors(dtype: string): ElemType | null {
  return dtype === 'F32' ? 'float32' : dtype === 'F16' ? 'float16' : dtype === 'BF16' ? 'bfloat16' : null;
}

/** A value in the graph. `rank` is known for every value this builder makes. */
export class Value {
  constructor(
    readonly name: string,
    readonly type: ElemType,
    readonly rank: number,
  ) {}
}

/** A dimension of a graph input or output: a size, or a symbol (any size). */
export type GraphDim = number | string;

type Attr = number | number[] | string | { float: number };

export interface ExternalRef {
  /** File name relative to the graph file's folder. */
  readonly location: string;
  readonly offset: number;
  readonly length: number;
}

export class GraphBuilder {
  private readonly nodes: NodeProto[] = [];
  private readonly initializers: TensorProto[] = [];
  private readonly inputs: ValueInfoProto[] = [];
  private readonly outputs: ValueInfoProto[] = [];
  private readonly constants = new Map<string, Value>();
  private counter = 0;
  private usesMicrosoftDomain = false;

  constructor(readonly name: string) {}

  get nodeCount(): number {
    return this.nodes.length;
  }

  private fresh(prefix: string): string {
    return `${prefix}_${this.counter++}`;
  }

  input(name: string, type: ElemType, dims: readonly GraphDim[]): Value {
    this.inputs.push(valueInfo(name, type, dims));
    return new Value(name, type, dims.length);
  }

  /** Marks `v` as a graph output named `name` (an Identity when the names differ). */
  output(v: Value, name: string, dims: readonly GraphDim[]): void {
    const out = v.name === name ? v : this.node('Identity', [v], {}, { name })[0];
    this.outputs.push(valueInfo(out.name, out.type, dims));
  }

  /**
   * Adds a node. `outputs` gives the output count (default 1), and optionally the type and rank
   * of each output when they differ from the first input's.
   */
  node(
    op: string,
    inputs: readonly (Value | null)[],
    attrs: Record<string, Attr> = {},
    out: { count?: number; type?: ElemType; rank?: number; name?: string; domain?: string } = {},
  ): Value[] {
    const first = inputs.find((v): v is Value => v !== null);
    const type = out.type ?? first?.type ?? 'float32';
    const rank = out.rank ?? first?.rank ?? 0;
    const count = out.count ?? 1;
    const outs = Array.from(
      { length: count },
      (_, _i) => new Value(count === 1 && out.name ? out.name : this.fresh(op.toLowerCase()), type, rank),
    );
    if (out.domain === 'com.microsoft') this.usesMicrosoftDomain = true;
    this.nodes.push(
      onnx.NodeProto.create({
        opType: op,
        domain: out.domain ?? '',
        name: this.fresh(`n_${op}`),
        input: inputs.map((v) => (v ? v.name : '')),
        output: outs.map((v) => v.name),
        attribute: Object.entries(attrs).map(([k, a]) => attribute(k, a)),
      }),
    );
    return outs;
  }

  /** One-output node. */
  op(
    op: string,
    inputs: readonly (Value | null)[],
    attrs: Record<string, Attr> = {},
    out: { type?: ElemType; rank?: number } = {},
  ): Value {
    return this.node(op, inputs, attrs, out)[0];
  }

  /** An initializer whose bytes stay in a weight file (ONNX external data). */
  external(name: string, type: ElemType, dims: readonly number[], ref: ExternalRef): Value {
    this.initializers.push(
      onnx.TensorProto.create({
        name,
        dims: [...dims],
        dataType: ONNX_TYPE[type],
        dataLocation: onnx.TensorProto.DataLocation.EXTERNAL,
        externalData: [
          { key: 'location', value: ref.location },
          { key: 'offset', value: String(ref.offset) },
          { key: 'length', value: String(ref.length) },
        ],
      }),
    );
    return new Value(name, type, dims.length);
  }

  /** A constant initializer stored in the graph (small tensors: norms' ones, masks, frequencies). */
  constant(
    data: Float32Array | readonly number[],
    dims: readonly number[],
    type: ElemType = 'float32',
    name?: string,
  ): Value {
    const key = name ? null : `${type}|${dims.join(',')}|${data.length <= 16 ? Array.from(data).join(',') : ''}`;
    if (key && data.length <= 16) {
      const hit = this.constants.get(key);
      if (hit) return hit;
    }
    const tensorName = name ?? this.fresh('const');
    const proto = onnx.TensorProto.create({ name: tensorName, dims: [...dims], dataType: ONNX_TYPE[type] });
    if (type === 'float32') proto.rawData = bytesOf(Float32Array.from(data));
    else if (type === 'float16') proto.rawData = bytesOf(Uint16Array.from(data, (v) => float32ToFloat16(v)));
    else if (type === 'int64') proto.rawData = bytesOf(BigInt64Array.from(data, (v) => BigInt(v)));
    else if (type === 'int32') proto.rawData = bytesOf(Int32Array.from(data));
    else throw new Error(`GraphBuilder.constant: ${type} constants are not supported`);
    this.initializers.push(proto);
    const v = new Value(tensorName, type, dims.length);
    if (key && data.length <= 16) this.constants.set(key, v);
    return v;
  }

  /** An int64 1-D constant (shapes, axes, indices). */
  ints(values: readonly number[]): Value {
    return this.constant(values, [values.length], 'int64');
  }

  /** The serialized ModelProto. */
  toBytes(docString = ''): Uint8Array {
    const opsetImport: OperatorSetIdProto[] = [{ domain: '', version: OPSET }];
    if (this.usesMicrosoftDomain) opsetImport.push({ domain: 'com.microsoft', version: 1 });
    const model = onnx.ModelProto.create({
      irVersion: IR_VERSION,
      opsetImport,
      producerName: 'singlora-studio',
      docString,
      graph: onnx.GraphProto.create({
        name: this.name,
        node: this.nodes,
        initializer: this.initializers,
        input: this.inputs,
        output: this.outputs,
      }),
    });
    return onnx.ModelProto.encode(model).finish();
  }
}

function bytesOf(a: Float32Array | Uint16Array | BigInt64Array | Int32Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

function valueInfo(name: string, type: ElemType, dims: readonly GraphDim[]): ValueInfoProto {
  return onnx.ValueInfoProto.create({
    name,
    type: {
      tensorType: {
        elemType: ONNX_TYPE[type],
        shape: { dim: dims.map((d) => (typeof d === 'string' ? { dimParam: d } : { dimValue: d })) },
      },
    },
  });
}

function attribute(name: string, a: Attr): AttributeProto {
  const T = onnx.AttributeProto.AttributeType;
  if (typeof a === 'number') return Number.isInteger(a) ? { name, type: T.INT, i: a } : { name, type: T.FLOAT, f: a };
  if (typeof a === 'string') return { name, type: T.STRING, s: new TextEncoder().encode(a) };
  if (Array.isArray(a)) return { name, type: T.INTS, ints: a };
  return { name, type: T.FLOAT, f: (a as { float: number }).float };
}
