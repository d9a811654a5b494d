#!/usr/bin/env bash
# Runs the benchmarks quoted in the docs and closing notes, one JSON file each, on the backend
# this machine picks (or SINGLORA_BACKEND). Each JSON carries its backend and configuration.
#   bash scripts/run-benchmarks.sh [out-dir]        (SD15=1 adds the SD 1.5 training-memory runs)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-test-artifacts/bench}"
mkdir -p "$out"
s() { node bin/singlora.js "$@"; }
npx tsx scripts/make-tiny-model.ts >/dev/null
s bench unet --config test/fixtures/tiny-a/model/unet --sizes 32,64 --batch 2 --json > "$out/unet-tiny-a.json"
s bench unet --config test/fixtures/tiny-b/model/unet --sizes 16x12,64 --batch 2 --json > "$out/unet-tiny-b.json"
s bench generate --base test/fixtures/tiny-a/model --steps 20 --images 2 --json > "$out/generate-tiny-a.json"
s bench generate --base test/fixtures/tiny-b/model --steps 20 --images 2 --json > "$out/generate-tiny-b.json"
# The training step on ONNX Runtime (the default engine; docs/performance.md, issue 25).
s bench train --engine onnx --provider cpu --base test/fixtures/tiny-b/model --resolution 256 --json > "$out/train-onnx-tiny-b-256.json"
s bench train --engine onnx --provider cpu --base test/fixtures/tiny-b/model --resolution 256 --gradient-checkpointing --json > "$out/train-onnx-tiny-b-256-ckpt.json"
if [ "${SD15:-0}" = 1 ]; then
  for res in 256 512; do
    s bench train --engine onnx --provider cpu --base test/fixtures/sd15_configs/unet --resolution $res --steps 1 --warmup 0 --json > "$out/train-onnx-sd15-$res.json"
    s bench train --engine onnx --provider cpu --base test/fixtures/sd15_configs/unet --resolution $res --steps 1 --warmup 0 --gradient-checkpointing --json > "$out/train-onnx-sd15-$res-ckpt.json"
  done
fi
# The same steps on TensorFlow.js (--engine tfjs), the figures of the sections before issue 25.
for method in singlora lora; do
  s bench train --engine tfjs --base test/fixtures/tiny-a/model --resolution 64 --steps 5 --method "$method" --json > "$out/train-tiny-a-$method.json"
  s bench train --engine tfjs --base test/fixtures/tiny-b/model --resolution 128 --steps 5 --method "$method" --json > "$out/train-tiny-b-$method.json"
done
s bench train --engine tfjs --base test/fixtures/tiny-a/model --resolution 64 --steps 5 --checkpointing --json > "$out/train-tiny-a-singlora-ckpt.json"
s bench train --engine tfjs --base test/fixtures/tiny-b/model --resolution 128 --steps 5 --checkpointing --json > "$out/train-tiny-b-singlora-ckpt.json"
for res in 256 512; do
  s bench train --engine tfjs --base test/fixtures/tiny-b/model --resolution $res --steps 5 --json > "$out/train-tiny-b-$res.json"
  s bench train --engine tfjs --base test/fixtures/tiny-b/model --resolution $res --steps 5 --checkpointing --json > "$out/train-tiny-b-$res-ckpt.json"
done
s bench train --engine tfjs --base test/fixtures/tiny-b/model --resolution 256 --steps 5 --attention plain --json > "$out/train-tiny-b-256-plain-attention.json"
# SD 1.5 shape (random weights) on the tfjs cpu backend: one step each, for the memory figures (slow: minutes each).
if [ "${SD15:-0}" = 1 ]; then
  for res in 64 128; do
    s bench train --engine tfjs --base test/fixtures/sd15_configs/unet --resolution $res --backend cpu --steps 1 --warmup 0 --json > "$out/train-sd15-$res.json"
    s bench train --engine tfjs --base test/fixtures/sd15_configs/unet --resolution $res --backend cpu --steps 1 --warmup 0 --checkpointing --json > "$out/train-sd15-$res-ckpt.json"
  done
fi
echo "wrote $out"
