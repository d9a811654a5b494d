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
 *   1. y    = conv2d(x, w)                                (the backend's kernel)
 *   2. dx   = conv2d(pad(dy, k-1-p), flip(w)^T)           stride 1: a plain convolution with the
 *                                                         filter flipped and in/out swapped;
 *           = conv2dTranspose(dy, w)                      stride 2 (Conv2DBackpropInput)
 *   3. cols = conv2d(x, E)                                E [kh, kw, Cin, kh*kw*Cin] one-hot: im2col
 *                                                         as one convolution, cols[.., (i*kw+j)*Cin+c]
 *                                                         = xpad[n, s*ho+i, s*wo+j, c]
 *      dw   = (dy^T cols)^T, reshaped to [kh, kw, Cin, Cout]
 * Steps 2 and 3 use only Conv2D and MatMul, the fast (XNNPACK) kernels on wasm: wasm's
 * Conv2DBackpropInput, strided slices and matMul with a transposed operand are several times slower.
 */
import { tf, type Tensor, type Tensor4D } from '../../backend/tf.ts';

export type ExplicitPad = [[number, number], [number, number]];

export function conv2dTrainable(x: Tensor4D, w: Tensor4D, stride: number, pad: ExplicitPad): Tensor4D {
  const [kh, kw, cin, cout] = w.shape;
  if (x.shape[3] !== cin)
    throw new Error(`conv2dTrainable: input has ${x.shape[3]} channels, filter [${w.shape}] expects ${cin}`);
  const explicit: [[number, number], [number, number], [number, number], [number, number]] = [
    [0, 0],
    [...pad[0]],
    [...pad[1]],
    [0, 0],
  ];
  const op = tf.customGrad(((xIn: Tensor, wIn: Tensor, save: tf.GradSaveFunc) => {
    save([xIn, wIn]);
    const value = tf.conv2d(xIn as Tensor4D, wIn as Tensor4D, stride, explicit);
    const gradFunc = (dy: Tensor, saved: Tensor[]): Tensor[] => {
      const [xs, ws] = saved as [Tensor4D, Tensor4D];
      const [n, ho, wo] = dy.shape; // [N, Ho, Wo, Cout]
      return tf.tidy(() => {
        let dx: Tensor;
        if (stride === 1) {
          const flipped = tf.transpose(tf.reverse(ws, [0, 1]), [0, 1, 3, 2]) as Tensor4D; // [kh, kw, Cout, Cin]
          dx = tf.conv2d(dy as Tensor4D, flipped, 1, [
            [0, 0],
            [kh - 1 - pad[0][0], kh - 1 - pad[0][1]],
            [kw - 1 - pad[1][0], kw - 1 - pad[1][1]],
            [0, 0],
          ]);
        } else {
          dx = tf.conv2dTranspose(dy as Tensor4D, ws, xs.shape, stride, explicit as never);
        }
        const cols = tf.conv2d(xs, im2colFilter(kh, kw, cin), stride, explicit).reshape([n * ho * wo, kh * kw * cin]); // [N*Ho*Wo, kh*kw*Cin]
        // dw^T = dy^T cols ([Cout, kh*kw*Cin]): transposing dy costs kh*kw times less than cols.
        const dwT = tf.matMul(tf.transpose(dy.reshape([n * ho * wo, cout])), cols);
        const dw = tf.transpose(dwT).reshape([kh, kw, cin, cout]);
        return [dx, dw];
      });
    };
    return { value, gradFunc };
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  return op(x, w) as Tensor4D;
}

/** E [kh, kw, Cin, kh*kw*Cin]: E[i, j, c, (i*kw + j)*Cin + c] = 1, so conv2d(x, E) is im2col. */
function im2colFilter(kh: number, kw: number, cin: number): Tensor4D {
  const k = kh * kw * cin;
  const e = new Float32Array(k * k);
  for (let r = 0; r < k; r++) e[r * k + r] = 1; // row (i, j, c) flattened in the same order as the output channel
  return tf.tensor4d(e, [kh, kw, cin, k]);
}
