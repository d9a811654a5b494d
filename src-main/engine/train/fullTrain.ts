/**
 * Full-parameter training: the mode that trains a whole Stable-Diffusion-1.x-shaped model from
 * scratch (the toy model, scripts/build-toy-model.ts), over the same pieces as adapter training:
 * the diffusion loss is `trainStep` (step.ts) with every UNet and text-encoder weight as the
 * trained tensors, and AdamW / gradient clipping are `applyGradients`.
 *
 * Stages, as latent diffusion trains them (Rombach et al., 2022):
 *   1. the VAE alone:  L = mean (D(z) - x)^2 + beta * KL(q(z|x) || N(0, I)),  z = mu + tau sigma eps
 *      (tau = `sampleScale`: 1 samples the posterior as SD's VAE was trained; the toy build uses 0,
 *      decoding the mean, because a small VAE trained for minutes cannot yet shrink sigma and the
 *      sampling noise then hides the colours; the UNet is trained and decodes on means too, and
 *      `collapsePosterior` then saves the posterior as the point mass it was trained as)
 *   2. the UNet and the text encoder on the frozen VAE's latents z_0 = s * mu(x), s = 1 / std(mu)
 *      (the `scaling_factor`, 0.18215 in SD 1.x), with the DDPM loss of step.ts.
 *
 * Ownership: `makeTrainable` turns a module's parameter tensors into tf.Variables the module
 * keeps owning (`module.dispose()` frees them); the functions here free every tensor they make.
 */
import { tf, type Tensor, type Variable } from '../backend/tf.ts';
import { writeSafetensors, type TensorToWrite } from '../io/safetensors.ts';
import type { AutoencoderKL } from '../models/autoencoderKL.ts';
import { hashString, type Module } from '../models/layers/module.ts';
import { Rng } from '../random.ts';
import type { AdamW } from './adamw.ts';
import { applyGradients } from './step.ts';
import type { WeightFileDtype } from '../../api/schemas.ts';

/**
 * Fresh weights for training from scratch, as PyTorch initialises its layers: Linear and Conv
 * weights U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform with a = sqrt(5)), biases 0,
 * norm weights 1, embedding tables N(0, 0.02) (CLIP's initializer_range). Each tensor draws from
 * its own Philox stream (seed, hash of its key), so the result does not depend on load order.
 */
export function initFromScratch(model: Module, seed: number): void {
  for (const [key, p] of model.namedParams()) {
    const n = p.shape.reduce((a, b) => a * b, 1);
    const rng = new Rng(seed, hashString(key));
    const data = new Float32Array(n);
    const isNorm = /norm/.test(key) && p.shape.length === 1;
    if (key.endsWith('.bias')) {
      // zeros
    } else if (isNorm) data.fill(1);
    else if (/embedding/.test(key) && p.shape.length === 2 && p.layout === 'plain') {
      const z = rng.normal(n);
      for (let i = 0; i < n; i++) data[i] = 0.02 * z[i];
    } else {
      const fanIn = n / p.shape[0];
      const bound = 1 / Math.sqrt(fanIn);
      for (let i = 0; i < n; i++) data[i] = bound * (2 * rng.uniform() - 1);
    }
    p.setFromCheckpoint(data);
  }
}

let variableCounter = 0;

/** Replaces every parameter tensor of `model` with a trainable tf.Variable; returns them in key order. */
export function makeTrainable(model: Module, name: string): Variable[] {
  const vars: Variable[] = [];
  const tag = `${name}-${variableCounter++}`;
  for (const [key, p] of model.namedParams()) {
    const v = tf.variable(p.value, true, `${tag}/${key}`);
    p.setValue(v);
    vars.push(v);
  }
  return vars;
}

/** Turns trained variables back into plain tensors (inference does not need the tape). */
export function freeze(model: Module): void {
  for (const [, p] of model.namedParams()) {
    if (p.value instanceof tf.Variable) p.setValue(tf.clone(p.value));
  }
}

/** Writes a module's weights as a diffusers/transformers safetensors file (checkpoint layout). */
export async function saveModule(model: Module, file: string, dtype: WeightFileDtype, source: string): Promise<void> {
  const tensors = new Map<string, TensorToWrite>();
  for (const [key, p] of model.namedParams()) {
    tensors.set(key, {
      dtype,
      shape: p.shape,
      read: async () => {
        const t = p.checkpointValue();
        try {
          return (await t.data()) as Float32Array;
        } finally {
          t.dispose();
        }
      },
    });
  }
  await writeSafetensors(file, tensors, { format: 'pt', source });
}

/** The floor diffusers clamps a VAE's log-variance to: std = exp(-15), about 3e-7. */
export const LOGVAR_FLOOR = -30;

/**
 * Makes the VAE's posterior the point mass it was trained as. A VAE trained on its means
 * (`sampleScale` 0) never learns its log-variance head: the KL term alone pulls sigma towards 1,
 * so an adapter trainer that samples `z = mu + sigma eps`, as diffusers' DreamBooth does, would
 * train on latents buried in noise the UNet never saw. This zeroes the log-variance half of
 * `quant_conv` and sets its bias to the floor, so every image encodes to `logvar = -30`; the
 * means, and so the UNet's latents and every reconstruction, are unchanged.
 */
export async function collapsePosterior(vae: AutoencoderKL): Promise<void> {
  const conv = vae.quant_conv;
  if (!conv?.bias)
    throw new Error(
      'collapsePosterior: the VAE has no quant_conv with a bias (use_quant_conv false); its log-variance comes straight from the encoder',
    );
  const [out, inC, kh, kw] = conv.weight.shape;
  const z = out / 2;
  const w = conv.weight.checkpointValue();
  const b = conv.bias.checkpointValue();
  const [wData, bData] = [(await w.data()) as Float32Array, (await b.data()) as Float32Array].map((d) =>
    Float32Array.from(d),
  );
  tf.dispose([w, b]);
  wData.fill(0, z * inC * kh * kw); // rows [z, 2z) of [out, in, kh, kw]: the log-variance outputs
  bData.fill(LOGVAR_FLOOR, z);
  conv.weight.setFromCheckpoint(wData);
  conv.bias.setFromCheckpoint(bData);
}

export interface VaeStepResult {
  readonly loss: number;
  readonly reconstruction: number;
  readonly kl: number;
}

/**
 * One VAE step (stage 1) on images `x` [B, H, W, 3] in [-1, 1] with reparameterisation noise
 * `eps` [B, h, w, latent] (the caller draws both and owns them).
 */
export async function vaeStep(
  vae: AutoencoderKL,
  optimizer: AdamW,
  x: Tensor,
  eps: Tensor,
  o: { readonly lr: number; readonly klWeight: number; readonly maxGradNorm: number; readonly sampleScale?: number },
): Promise<VaeStepResult> {
  const vars = optimizer.params as Variable[];
  const parts: Tensor[] = [];
  const { value, grads } = tf.tidy(() =>
    tf.variableGrads(() => {
      const { mean, logvar, std } = vae.encode(x);
      const tau = o.sampleScale ?? 1;
      const z = tau === 0 ? mean : tf.add(mean, tf.mul(std, tf.mul(eps, tau)));
      const rec = tf.mean(tf.squaredDifference(vae.decode(z), x));
      // KL(N(mu, sigma^2) || N(0, 1)) per latent element, averaged: 0.5 (mu^2 + sigma^2 - 1 - log sigma^2).
      const kl = tf.mean(tf.mul(tf.sub(tf.add(tf.add(tf.square(mean), tf.exp(logvar)), -1), logvar), 0.5));
      parts.push(tf.keep(rec.clone()), tf.keep(kl.clone()));
      return tf.add(rec, tf.mul(kl, o.klWeight)) as tf.Scalar;
    }, vars),
  );
  const ordered = vars.map((v) => {
    const g = grads[v.name];
    if (!g) throw new Error(`vaeStep: no gradient for ${v.name}; every VAE weight should take part in the loss`);
    return g;
  });
  try {
    const [loss, reconstruction, kl] = await Promise.all([value.data(), parts[0].data(), parts[1].data()]);
    if (!Number.isFinite(loss[0])) return { loss: loss[0], reconstruction: reconstruction[0], kl: kl[0] };
    await applyGradients(optimizer, ordered, o);
    return { loss: loss[0], reconstruction: reconstruction[0], kl: kl[0] };
  } finally {
    tf.dispose([value, ...ordered, ...parts]);
  }
}
