#!/usr/bin/env python3
"""The SingLoRA training step on PyTorch (CPU, float32): the counterpart of
`singlora bench train --engine onnx --json`, with the same configuration and JSON fields.

  OPENBLAS_CORETYPE=SkylakeX /usr/bin/python3 scripts/bench-pytorch.py --base test/fixtures/tiny-b/model \\
      --resolution 256 --rank 4 --threads 1 [--steps 5] [--warmup 1] [--batch 1] [--gradient-checkpointing]

The model is scripts/pytorch/sd_unet.py (diffusers' UNet2DConditionModel written out in torch;
diffusers itself is not installable here), checked against diffusers and our engine by
test/parity/pytorchReference.test.ts. A folder whose unet has a diffusion_pytorch_model.safetensors
is loaded; a bare config (test/fixtures/sd15_configs/unet) gets torch's default random init.
As in bench/trainOnnx.ts: SingLoRA on to_q/k/v/out.0 of every attn1/attn2 (alpha = rank, u = 1),
fixed seeded inputs, timestep 500, 77 tokens, lr 1e-4, clipping to norm 1, AdamW; ms_per_step is
the median of `steps` timed steps after `warmup` untimed ones.

Debian's python3-torch calls whatever libblas.so.3 the system has for Linear layers (its
convolutions use its own oneDNN). With the reference BLAS (libblas3) a matmul runs at about
5 GFLOP/s, so this script refuses it unless --allow-reference-blas: put OpenBLAS first
(LD_LIBRARY_PATH=<dir of OpenBLAS's libblas.so.3>; scripts/bench-vs-pytorch.sh does).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import statistics
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "pytorch"))
from sd_unet import Attention, UNet2DConditionModel, UNetConfig, load_safetensors  # noqa: E402
from singlora_step import TARGETS, TrainStep, alphas_cumprod, inject_singlora, read_scheduler_config  # noqa: E402


def blas_info() -> dict:
    """Which BLAS the process mapped, and OpenBLAS's core type when it is OpenBLAS."""
    with open("/proc/self/maps") as f:
        libs = sorted({line.split()[-1] for line in f if "blas" in line.split()[-1]})
    info = {"blas_libraries": libs, "blas": "reference (netlib)", "blas_core": None}
    if any("openblas" in lib for lib in libs):
        lib = ctypes.CDLL("libopenblas.so.0")
        lib.openblas_get_corename.restype = ctypes.c_char_p
        info.update(blas="OpenBLAS", blas_core=lib.openblas_get_corename().decode())
    return info


def set_threads(n: int) -> None:
    torch.set_num_threads(n)
    try:
        ctypes.CDLL("libopenblas.so.0").openblas_set_num_threads(n)
    except OSError:
        pass


def unet_paths(base: str) -> tuple:
    """(config.json, weights or None) of a model folder, a unet/ folder or a config.json."""
    if os.path.isfile(base):
        config = base
    elif os.path.exists(os.path.join(base, "unet", "config.json")):
        config = os.path.join(base, "unet", "config.json")
    elif os.path.exists(os.path.join(base, "config.json")):
        config = os.path.join(base, "config.json")
    else:
        raise SystemExit(f"bench-pytorch: {base} is not a model folder, a unet/ folder or a config.json")
    weights = os.path.join(os.path.dirname(config), "diffusion_pytorch_model.safetensors")
    return config, weights if os.path.exists(weights) else None


def vae_factor(config_path: str) -> int:
    vae = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(config_path))), "vae", "config.json")
    if not os.path.exists(vae):
        return 8
    with open(vae) as f:
        return 2 ** (len(json.load(f).get("block_out_channels", [0] * 4)) - 1)


def step_flops(unet: UNet2DConditionModel, sample, timesteps, context) -> float:
    """2 x F_weights + 3 x F_attention of one forward (the formula of bench/trainOnnx.ts `trainStepFlops`)."""
    counts = {"weights": 0, "attention": 0}

    def on_conv(m, inp, out):
        counts["weights"] += 2 * out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]

    def on_linear(m, inp, out):
        counts["weights"] += 2 * out.numel() * m.in_features

    def on_attention(m, inp, out):
        q_tokens, kv_tokens = inp[0].shape[1], (inp[1] if len(inp) > 1 else inp[0]).shape[1]
        inner = getattr(m.to_q, "base", m.to_q).out_features
        counts["attention"] += 2 * 2 * inp[0].shape[0] * q_tokens * kv_tokens * inner  # Q K^T and P V

    hooks = []
    for m in unet.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(on_conv))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(on_linear))
        elif isinstance(m, Attention):
            hooks.append(m.register_forward_hook(on_attention))
    with torch.no_grad():
        unet(sample, timesteps, context)
    for h in hooks:
        h.remove()
    return 2 * counts["weights"] + 3 * counts["attention"]


def blas_check(threads: int) -> dict:
    """GFLOP/s of a 2048^2 matmul (the BLAS) and of an SD-sized 3x3 convolution (torch's oneDNN)."""
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    x, conv = torch.randn(1, 320, 32, 32), nn.Conv2d(320, 320, 3, padding=1)

    def rate(fn, flop: float, reps: int = 5) -> float:
        fn()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        return flop / ((time.perf_counter() - t) / reps) / 1e9

    with torch.no_grad():
        return {
            "threads": threads,
            "matmul_2048_gflops": rate(lambda: a @ b, 2 * n**3),
            "conv3x3_320ch_32x32_gflops": rate(lambda: conv(x), 2 * 320 * 320 * 9 * 32 * 32, 20),
        }


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", help="model folder, unet/ folder or UNet config.json")
    ap.add_argument("--resolution", type=int)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--allow-reference-blas", action="store_true")
    ap.add_argument("--blas-check", action="store_true", help="only time a matmul and a convolution")
    a = ap.parse_args()
    if not a.blas_check and (a.base is None or a.resolution is None):
        ap.error("--base and --resolution are required (or --blas-check)")
    return a


def main() -> None:
    a = parse_args()
    set_threads(a.threads)
    blas = blas_info()
    if blas["blas"] != "OpenBLAS" and not a.allow_reference_blas:
        raise SystemExit(
            f"bench-pytorch: torch mapped {blas['blas_libraries']}, the reference BLAS (about 5 GFLOP/s); "
            "put OpenBLAS's libblas.so.3 first (LD_LIBRARY_PATH) or pass --allow-reference-blas"
        )
    if a.blas_check:
        print(json.dumps({**blas_check(a.threads), "torch_version": torch.__version__, **blas}))
        return
    config_path, weights = unet_paths(a.base)
    factor = vae_factor(config_path)
    if a.resolution % factor:
        raise SystemExit(f"bench-pytorch: resolution {a.resolution} is not a multiple of the VAE factor {factor}")
    latent = a.resolution // factor

    t0 = time.perf_counter()
    torch.manual_seed(a.seed)
    unet = UNet2DConditionModel(UNetConfig.read(config_path))
    if weights:
        load_safetensors(unet, weights)
    unet_params = sum(p.numel() for p in unet.parameters())
    adapters = inject_singlora(unet, a.rank, float(a.rank), 1.0, seed=a.seed)
    unet.gradient_checkpointing = a.gradient_checkpointing
    step = TrainStep(unet, adapters, alphas_cumprod(read_scheduler_config(config_path)), lr=1e-4, max_grad_norm=1.0)
    load_s = time.perf_counter() - t0

    g = torch.Generator().manual_seed(a.seed + 2)
    cfg = unet.cfg
    latents = torch.randn(a.batch, cfg.in_channels, latent, latent, generator=g)
    noise = torch.randn(a.batch, cfg.in_channels, latent, latent, generator=g)
    context = torch.randn(a.batch, 77, cfg.cross_attention_dim, generator=g)
    timesteps = torch.full((a.batch,), 500, dtype=torch.int64)

    ms, cpu = [], []
    for i in range(a.warmup + a.steps):
        w0, c0 = time.perf_counter(), time.process_time()
        loss, norm = step(latents, noise, timesteps, context)
        w, c = (time.perf_counter() - w0) * 1000, (time.process_time() - c0) * 1000
        print(f"step {i + 1}/{a.warmup + a.steps}: {w:.0f} ms (cpu {c:.0f} ms), loss {loss:.4f}, grad norm {norm:.3g}"
              + (" (warm-up)" if i < a.warmup else ""), file=sys.stderr)
        if i >= a.warmup:
            ms.append(w)
            cpu.append(c)
    gflop = step_flops(unet, latents, timesteps, context) / 1e9
    ms_per_step = statistics.median_low(ms) if ms else None
    report = {
        "bench": "train",
        "engine": "pytorch",
        "provider": "cpu",
        "dtype": "float32",
        "config": {
            "base": a.base,
            "resolution": a.resolution,
            "latent": [latent, latent],
            "batch": a.batch,
            "method": "singlora",
            "rank": a.rank,
            "targets": list(TARGETS),
            "checkpointing": a.gradient_checkpointing,
            "steps": a.steps,
            "warmup": a.warmup,
            "threads": a.threads,
            "weights": "file" if weights else "random",
        },
        "torch_version": torch.__version__,
        **blas,
        "openblas_coretype_env": os.environ.get("OPENBLAS_CORETYPE"),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "unetParameters": unet_params,
        "adapterParameters": sum(p.numel() for p in step.params),
        "adapterLayers": len(adapters),
        "load_s": load_s,
        "ms_per_step": ms_per_step,
        "ms_steps": ms,
        "cpu_ms_per_step": statistics.median_low(cpu) if cpu else None,
        "gflop_per_step": gflop,
        "gflops": gflop / (ms_per_step / 1000) if ms_per_step else None,
        "weight_bytes": unet_params * 4,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
