/**
 * Gradient checkpointing per UNet block (Chen et al., 2016, "Training Deep Nets with Sublinear
 * Memory Cost"): the forward pass keeps only each block's inputs; the backward pass runs the
 * block again, with the tape on, to get its gradients. Memory drops from all activations to the
 * block boundaries plus one block's activations, for about one extra forward pass of compute.
 *
 * Built on `tf.customGrad`. Two details of TensorFlow.js shape it:
 *  - customGrad's value must be one tensor, and a down block returns several (its skip
 *    connections), so outputs travel flattened and concatenated, and are split again outside.
 *  - Variables used inside the block (the adapters) must be explicit inputs, or the outer tape
 *    would never route their gradients through this node.
 *  - The recomputation calls `engine.gradients` while the outer backward pass is running. That
 *    inner call ends by clearing the engine's active tape, which the outer pass still needs, so
 *    the tape is saved and put back around it.
 */
import { tf, type Tensor, type Variable } from '../backend/tf.ts';
import type { BlockRunner } from '../models/unet2dCondition.ts';

interface EngineInternals {
  state: { activeTape: unknown };
  gradients(
    f: () => Tensor,
    xs: Tensor[],
    dy?: Tensor,
    allowNoGradients?: boolean,
  ): { value: Tensor; grads: Array<Tensor | undefined> };
}

/** [a, b, ...] -> one flat tensor; and back. */
function flatten(ts: Tensor[]): Tensor {
  return ts.length === 1
    ? ts[0].reshape([-1])
    : tf.concat(
        ts.map((t) => t.reshape([-1])),
        0,
      );
}

function unflatten(flat: Tensor, shapes: number[][]): Tensor[] {
  if (shapes.length === 1) return [flat.reshape(shapes[0])];
  const sizes = shapes.map((s) => s.reduce((a, b) => a * b, 1));
  return tf.split(flat, sizes, 0).map((t, i) => t.reshape(shapes[i]));
}

/**
 * A BlockRunner that checkpoints every block. `variablesFor(name)` gives the trainable variables
 * used inside the block called `name` (e.g. the adapters under `down_blocks.1`).
 */
export function checkpointingRunner(variablesFor: (blockName: string) => readonly Variable[]): BlockRunner {
  return (name, fn, inputs) => {
    const vars = variablesFor(name);
    let shapes: number[][] = [];
    // customGrad's typing wants a fixed-arity function; the engine passes (...inputs, save).
    const customGrad = tf.customGrad as unknown as (
      f: (...args: unknown[]) => unknown,
    ) => (...args: Tensor[]) => Tensor;
    const run = customGrad((...args: unknown[]) => {
      const save = args.pop() as (ts: Tensor[]) => void;
      const ins = args.slice(0, inputs.length) as Tensor[];
      save(ins);
      const outs = fn(ins);
      shapes = outs.map((o) => o.shape as number[]);
      const value = flatten(outs);
      return {
        value,
        gradFunc: (dy: Tensor, saved: Tensor[]) => {
          const engine = tf.engine() as unknown as EngineInternals;
          const outerTape = engine.state.activeTape;
          const xs = [...saved, ...vars];
          let grads: Array<Tensor | undefined>;
          try {
            grads = engine.gradients(() => flatten(fn(saved)), xs, dy, true).grads;
          } finally {
            engine.state.activeTape = outerTape;
          }
          return grads.map((g, i) => g ?? tf.zerosLike(xs[i]));
        },
      };
    });
    const flat = run(...inputs, ...vars);
    return unflatten(flat, shapes);
  };
}

/** The UNet block a module path belongs to: `down_blocks.1`, `mid_block` or `up_blocks.2`. */
export function blockOf(path: string): string {
  const m = /^(down_blocks\.\d+|up_blocks\.\d+|mid_block)\./.exec(path);
  return m ? m[1] : '';
}
