"""Checks that the PyTorch reference (sd_unet.py, singlora_step.py) computes what diffusers and our engine compute.

  python3 scripts/pytorch/check_reference.py diffusers <fixture folder>
      the reference's UNet forward against diffusers' recorded `unet.out` (cases.safetensors) and,
      where the folder has train_step_cases.*, its SingLoRA step (without and with gradient
      checkpointing) against diffusers' loss, clipped gradients and parameters after AdamW.
      Prints one JSON line of relative errors.
  python3 scripts/pytorch/check_reference.py forward <unet folder> <out.safetensors> [--latent 32] [--batch 2] [--seed 0]
      seeded inputs (sample, timestep, encoder_hidden_states) and the reference's output, written
      to a .safetensors for our engine to run on (test/parity/pytorchReference.test.ts).

Relative errors are max|ours - ref| / max|ref| per tensor (the worst over tensors).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sd_unet import UNet2DConditionModel, UNetConfig, load_safetensors, read_safetensors, write_safetensors  # noqa: E402
from singlora_step import TrainStep, alphas_cumprod, inject_singlora, read_scheduler_config  # noqa: E402


def rel(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def open_unet(unet_folder: str) -> UNet2DConditionModel:
    model = UNet2DConditionModel(UNetConfig.read(os.path.join(unet_folder, "config.json")))
    load_safetensors(model, os.path.join(unet_folder, "diffusion_pytorch_model.safetensors"))
    return model


def check_forward(folder: str) -> dict:
    unet = open_unet(os.path.join(folder, "model", "unet")).eval()
    c = read_safetensors(os.path.join(folder, "cases.safetensors"))
    with torch.no_grad():
        out = unet(c["unet.sample"], c["unet.timestep"], c["unet.encoder_hidden_states"])
    return {"unet_out_rel": rel(out, c["unet.out"])}


def check_train_step(folder: str, checkpointing: bool) -> dict:
    """The SingLoRA case of train_step_cases.* on the reference, with or without gradient checkpointing."""
    with open(os.path.join(folder, "train_step_cases.json")) as f:
        meta = json.load(f)["metadata"]
    c = read_safetensors(os.path.join(folder, "train_step_cases.safetensors"))
    unet = open_unet(os.path.join(folder, "model", "unet"))
    init = {p: c[f"singlora.init.{p}.A"] for p in meta["layers"]}
    adapters = inject_singlora(unet, meta["rank"], meta["alpha"], meta["u"], init=init)
    if sorted(adapters) != sorted(meta["layers"]):
        differ = sorted(set(adapters) ^ set(meta["layers"]))
        raise ValueError(f"{folder}: adapter layers differ from train_step_cases.json's: {differ[:5]}")
    unet.gradient_checkpointing = checkpointing
    adamw = meta["adamw"]
    abar = alphas_cumprod(read_scheduler_config(os.path.join(folder, "model", "unet", "config.json")))
    step = TrainStep(unet, adapters, abar,
                     lr=adamw["lr"], max_grad_norm=meta["clip_grad_norm"], weight_decay=adamw["weight_decay"])
    loss, norm = step(c["inputs.latents"], c["inputs.noise"], c["inputs.timestep"], c["inputs.encoder_hidden_states"])
    grads = [rel(a.A.grad, c[f"singlora.grad.{p}.A"]) for p, a in adapters.items()]
    after = [(a.A.detach() - c[f"singlora.after_adamw.{p}.A"]).abs().max().item() for p, a in adapters.items()]
    ref_loss, ref_norm = c["singlora.loss"].item(), c["singlora.grad_norm"].item()
    suffix = "_checkpointing" if checkpointing else ""
    return {
        f"loss_rel{suffix}": abs(loss - ref_loss) / abs(ref_loss),
        f"grad_norm_rel{suffix}": abs(norm - ref_norm) / abs(ref_norm),
        f"grad_rel_worst{suffix}": max(grads),
        f"after_adamw_abs_worst{suffix}": max(after),
        "layers": len(adapters),
    }


def write_forward(unet_folder: str, out: str, latent: int, batch: int, seed: int) -> dict:
    unet = open_unet(unet_folder).eval()
    cfg = unet.cfg
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, cfg.in_channels, latent, latent, generator=g)
    timestep = torch.tensor([999.0, 10.0, 500.0, 1.0][:batch])
    context = torch.randn(batch, 77, cfg.cross_attention_dim, generator=g)
    with torch.no_grad():
        y = unet(sample, timestep, context)
    write_safetensors(out, {"sample": sample, "timestep": timestep, "encoder_hidden_states": context, "out": y})
    return {"out": out, "max_abs": y.abs().max().item(), "torch": torch.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("diffusers")
    d.add_argument("folder")
    f = sub.add_parser("forward")
    f.add_argument("unet_folder")
    f.add_argument("out")
    f.add_argument("--latent", type=int, default=32)
    f.add_argument("--batch", type=int, default=2)
    f.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.cmd == "diffusers":
        report = {"fixture": a.folder, **check_forward(a.folder)}
        if os.path.exists(os.path.join(a.folder, "train_step_cases.json")):
            report.update(check_train_step(a.folder, checkpointing=False))
            report.update(check_train_step(a.folder, checkpointing=True))
    else:
        report = write_forward(a.unet_folder, a.out, a.latent, a.batch, a.seed)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
