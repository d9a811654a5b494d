#!/usr/bin/env bash
# Runs the benchmarks quoted in the docs and closing notes, one JSON file each, on the backend
# this machine picks (or SINGLORA_BACKEND). Each JSON carries its backend and configuration.
#   bash scripts/run-benchmarks.sh [out-dir]
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
for method in singlora lora; do
  s bench train --base test/fixtures/tiny-a/model --resolution 64 --steps 5 --method "$method" --json > "$out/train-tiny-a-$method.json"
  s bench train --base test/fixtures/tiny-b/model --resolution 128 --steps 5 --method "$method" --json > "$out/train-tiny-b-$method.json"
done
s bench train --base test/fixtures/tiny-a/model --resolution 64 --steps 5 --checkpointing --json > "$out/train-tiny-a-singlora-ckpt.json"
s bench train --base test/fixtures/tiny-b/model --resolution 128 --steps 5 --checkpointing --json > "$out/train-tiny-b-singlora-ckpt.json"
s bench train --base test/fixtures/tiny-b/model --resolution 256 --steps 3 --json > "$out/train-tiny-b-256.json"
s bench train --base test/fixtures/tiny-b/model --resolution 256 --steps 3 --checkpointing --json > "$out/train-tiny-b-256-ckpt.json"
echo "wrote $out"
