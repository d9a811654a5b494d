/**
 * conv2dTrainable(x, w, stride, pad): `tf.conv2d` whose filter gradient is computed by im2col and
 * one matMul, so convolution weights train on every backend (the wasm backend registers no
 * Conv2DBackpropFilter kernel). Used by the TensorFlow.js executor when a conv weight is a
 * trainable variable (full-parameter training, `train/fullTrain.ts`); inference and adapter
 * training keep the plain op.
 *
 * | code    | meaning                                  | shape                 |
 * | ------- | ---------------------------------------- | --------------------- |
 * | `x`     | input, NHWC                              | [N, H, W, Cin]        |
 * | `w`     | filter (compute layout)                  | [kh, kw, Cin, Cout]   |
 * | `dy`    | dL/dy                                    | [N, Ho, Wo, Cout]     |
 * | `cols`  | im2col of the padded input               | [N*Ho*Wo, kh*kw*Cin]  |
 *
 *   1. y  = conv2d(x, w)                                  (the backend's kernel)
 *   2. dx = conv2dTranspose(dy, w)                        (Conv2DBackpropInput, as tf's own gradient)
 *   3. dw = cols^T dy, reshaped to [kh, kw, Cin, Cout]    cols[n,ho,wo][i,j,c] = xpad[n, s*ho+i, s*wo+j, c]
 */
import { tf, type Tensor, type Tensor4D } from '../../backend/tf.ts';

export type ExplicitPad = [[number, number], [number, number]];

export function conv2dTrainable(x: Tensor4D, w: Tensor4D, stride: number, pad: ExplicitPad): Tensor4D {
  const [kh, kw, cin, cout] = w.shape;
  if (x.shape[3] !== cin) throw new Error(`conv2dTrainable: input has ${x.shape[3]} channels, filter [${w.shape}] expects ${cin}`);
  const explicit: [[number, number], [number, number], [number, number], [number, number]] = [[0, 0], [...pad[0]], [...pad[1]], [0, 0]];
  const op = tf.customGrad(((xIn: Tensor, wIn: Tensor, save: tf.GradSaveFunc) => {
    save([xIn, wIn]);
    const value = tf.conv2d(xIn as Tensor4D, wIn as Tensor4D, stride, explicit);
    const gradFunc = (dy: Tensor, saved: Tensor[]): Tensor[] => {
      const [xs, ws] = saved as [Tensor4D, Tensor4D];
      const [n, ho, wo] = dy.shape; // [N, Ho, Wo, Cout]
      const dx = tf.conv2dTranspose(dy as Tensor4D, ws, xs.shape, stride, explicit as never);
      const dw = tf.tidy(() => {
        const xp = tf.pad(xs, explicit); // [N, H+pt+pb, W+pl+pr, Cin]
        const patches: Tensor[] = [];
        for (let i = 0; i < kh; i++) {
          for (let j = 0; j < kw; j++) {
            patches.push(tf.stridedSlice(xp, [0, i, j, 0], [n, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, cin], [1, stride, stride, 1])); // [N, Ho, Wo, Cin]
          }
        }
        const cols = tf.stack(patches, 3).reshape([n * ho * wo, kh * kw * cin]); // [N*Ho*Wo, kh*kw*Cin]
        return tf.matMul(cols, dy.reshape([n * ho * wo, cout]), true, false).reshape([kh, kw, cin, cout]);
      });
      return [dx, dw];
    };
    return { value, gradFunc };
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  return op(x, w) as Tensor4D;
}
