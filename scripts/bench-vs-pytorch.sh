#!/usr/bin/env bash
# The SingLoRA training step on our ONNX engine (CPU provider) and on PyTorch, in ONE run, on the
# same machine (issue 25's goals): tiny-b and the SD 1.5 shape at 256 px, rank 4, batch 1.
# PyTorch is Debian's python3-torch with OpenBLAS and OPENBLAS_CORETYPE=SkylakeX, at 1 and 2
# threads (the best is compared). Runs alternate (onnx, torch 1, torch 2, then the reverse order)
# so that load from other jobs falls on both. Every run is `nice`, one at a time; each writes its
# JSON, its log, /usr/bin/time's CPU time and peak RSS, and the load average before and after.
#
#   bash scripts/bench-vs-pytorch.sh [out-dir]      (npm run bench:vs-pytorch)
#
#   ROUNDS=2           rounds per case (each round: every engine once)
#   CASES="tiny-b sd15 sd15-ckpt"   which cases (sd15-ckpt: both with gradient checkpointing, one round)
#   SINGLORA_PYTHON    a python3 that imports torch (default: python3, then /usr/bin/python3)
#   OPENBLAS_LIB_DIR   a folder with OpenBLAS's libblas.so.3 (default: Debian's libopenblas0-pthread
#                      folder; if absent, that package is unpacked with `apt-get download` into
#                      ~/.cache/singlora-studio/openblas, without changing the system's BLAS)
#
# The SD 1.5 runs hold about 6.5 GB (onnx) and 4 GB (torch) at their peak: run this alone.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-test-artifacts/bench/vs-pytorch-$(date -u +%Y%m%dT%H%M%SZ)}"
rounds="${ROUNDS:-2}"
cases="${CASES:-tiny-b sd15 sd15-ckpt}"
mkdir -p "$out"

find_python() {
  for p in "${SINGLORA_PYTHON:-}" python3 /usr/bin/python3; do
    if [ -n "$p" ] && "$p" -c 'import torch' 2>/dev/null; then echo "$p"; return; fi
  done
  echo "bench-vs-pytorch: no python3 that imports torch (apt-get install python3-torch, or set SINGLORA_PYTHON)" >&2
  exit 1
}

find_openblas() {
  local system=/usr/lib/x86_64-linux-gnu/openblas-pthread
  local cache="${XDG_CACHE_HOME:-$HOME/.cache}/singlora-studio/openblas"
  if [ -n "${OPENBLAS_LIB_DIR:-}" ]; then echo "$OPENBLAS_LIB_DIR"; return; fi
  if [ -e "$system/libblas.so.3" ]; then echo "$system"; return; fi
  if [ ! -e "$cache$system/libblas.so.3" ]; then
    echo "bench-vs-pytorch: unpacking Debian's libopenblas0-pthread into $cache (the system BLAS is left as it is)" >&2
    mkdir -p "$cache"
    (cd "$cache" && apt-get download -q libopenblas0-pthread >&2 && dpkg-deb -x libopenblas0-pthread_*.deb .)
  fi
  echo "$cache$system"
}

python="$(find_python)"
blas_dir="$(find_openblas)"
# PyTorch's command: OpenBLAS first, its SkylakeX kernels (AVX-512).
torch_cmd=(env OPENBLAS_CORETYPE=SkylakeX "LD_LIBRARY_PATH=$blas_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$python")

# One measured run: name, then the command. Writes $out/name.{json,log,time,load}.
measure() {
  local name="$1"
  shift
  echo "== $name: $*" >&2
  cut -d' ' -f1-3 /proc/loadavg >"$out/$name.load"
  /usr/bin/time -o "$out/$name.time" -f '{"wall_s": %e, "user_s": %U, "sys_s": %S, "max_rss_kb": %M}' \
    nice "$@" >"$out/$name.json" 2>"$out/$name.log"
  cut -d' ' -f1-3 /proc/loadavg >>"$out/$name.load"
}
onnx() { measure "$1" node bin/singlora.js bench train --engine onnx --provider cpu "${@:2}" --json; }
torch() { measure "$1" "${torch_cmd[@]}" scripts/bench-pytorch.py "${@:2}"; }

# Does SkylakeX make torch fast? A 2048^2 matmul (OpenBLAS) and a 3x3 convolution (oneDNN).
for t in 1 2; do nice "${torch_cmd[@]}" scripts/bench-pytorch.py --blas-check --threads "$t" >"$out/blas-check-$t.json"; done
cat "$out"/blas-check-*.json >&2

# One case: name, the common arguments, then how many rounds.
run_case() {
  local name="$1" n="$3" args
  read -r -a args <<<"$2"
  for ((r = 1; r <= n; r++)); do
    if ((r % 2)); then order="onnx t1 t2"; else order="t2 t1 onnx"; fi
    for e in $order; do
      case "$e" in
        onnx) onnx "$name-onnx-r$r" "${args[@]}" ;;
        t1) torch "$name-torch1-r$r" "${args[@]}" --threads 1 ;;
        t2) torch "$name-torch2-r$r" "${args[@]}" --threads 2 ;;
      esac
    done
  done
}

for c in $cases; do
  case "$c" in
    tiny-b) run_case tiny-b "--base test/fixtures/tiny-b/model --resolution 256 --rank 4 --steps 5 --warmup 1" "$rounds" ;;
    sd15) run_case sd15 "--base test/fixtures/sd15_configs/unet --resolution 256 --rank 4 --steps 2 --warmup 1" "$rounds" ;;
    sd15-ckpt)
      run_case sd15-ckpt "--base test/fixtures/sd15_configs/unet --resolution 256 --rank 4 --steps 2 --warmup 1 --gradient-checkpointing" 1
      ;;
    *) echo "bench-vs-pytorch: unknown case $c (tiny-b, sd15, sd15-ckpt)" >&2 && exit 2 ;;
  esac
done
"$python" scripts/pytorch/summarize_vs.py "$out" | tee "$out/summary.md"
