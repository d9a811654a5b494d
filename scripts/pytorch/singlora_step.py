"""SingLoRA adapters on a reference UNet (sd_unet.py) and the training step our engine runs.

The step is the one of train/onnxStep.ts (`onnxTrainStep`) and of the PyTorch fixture
(test/fixtures/README.md, "Training-step cases"):

| step | here                                                  | engine                              |
| ---- | ----------------------------------------------------- | ----------------------------------- |
| 1    | x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (DDPM)   | the step graph's noising            |
| 2    | eps_hat = unet(x_t, t, context), adapters as side paths | the emitted forward                 |
| 3    | loss = mean((eps_hat - eps)^2)                        | the graph's loss                    |
| 4    | backward: gradients of the adapter factors only (base frozen) | the emitted backward        |
| 5    | clip to a global L2 norm (1.0 by default)             | JS clipping                         |
| 6    | AdamW (betas 0.9/0.999, eps 1e-8, weight decay 1e-2)  | AdamWArrays                         |

SingLoRA (arXiv:2507.05566): y = W0 x + (alpha / r) u (x A[:d_in]) A[:d_out]^T, A of shape
[max(d_out, d_in), r]: a side path, never merged into W0.
"""

from __future__ import annotations

import json
import os

import torch
from torch import nn

from sd_unet import UNet2DConditionModel

TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


class SingLoRALinear(nn.Module):
    """A frozen Linear plus the SingLoRA side path (alpha / r) u (x A[:d_in]) A[:d_out]^T."""

    def __init__(self, base: nn.Linear, A: torch.Tensor, scale: float):
        super().__init__()
        rows = max(base.in_features, base.out_features)
        if tuple(A.shape[:1]) != (rows,):
            raise ValueError(
                f"SingLoRA A for {base.in_features}->{base.out_features} needs {rows} rows, got {list(A.shape)}"
            )
        self.base = base
        self.A = nn.Parameter(A.clone())
        self.scale = scale

    def forward(self, x):
        down_t = self.A[: self.base.in_features]  # [d_in, r]
        up = self.A[: self.base.out_features]  # [d_out, r]
        return self.base(x) + self.scale * ((x @ down_t) @ up.t())


def adapter_paths(unet: UNet2DConditionModel) -> list:
    """The Linear paths our engine adapts (DEFAULT_TARGETS): to_q/k/v/out.0 of every attn1/attn2, in module order."""
    return [
        name
        for name, m in unet.named_modules()
        if isinstance(m, nn.Linear) and any(name.endswith(f"{a}.{t}") for a in ("attn1", "attn2") for t in TARGETS)
    ]


def inject_singlora(unet: UNet2DConditionModel, rank: int, alpha: float, u: float = 1.0, init=None, seed=0) -> dict:
    """Freeze the UNet, wrap every target Linear; `init` maps path -> A (else N(0, 0.01^2) as our default)."""
    for p in unet.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    adapters = {}
    for path in adapter_paths(unet):
        parent_path, _, leaf = path.rpartition(".")
        parent = unet.get_submodule(parent_path)
        base = parent[int(leaf)] if leaf.isdigit() else getattr(parent, leaf)
        rows = max(base.in_features, base.out_features)
        A = init[path] if init is not None else torch.randn(rows, rank, generator=gen) * 0.01
        wrapped = SingLoRALinear(base, A, alpha / rank * u)
        if leaf.isdigit():
            parent[int(leaf)] = wrapped
        else:
            setattr(parent, leaf, wrapped)
        adapters[path] = wrapped
    return adapters


def alphas_cumprod(scheduler_config: dict) -> torch.Tensor:
    """DDPMScheduler's abar_t (float32, as diffusers computes it) for linear / scaled_linear betas."""
    n = scheduler_config.get("num_train_timesteps", 1000)
    b0, b1 = scheduler_config.get("beta_start", 0.00085), scheduler_config.get("beta_end", 0.012)
    kind = scheduler_config.get("beta_schedule", "scaled_linear")
    if kind == "scaled_linear":
        betas = torch.linspace(b0**0.5, b1**0.5, n, dtype=torch.float32) ** 2
    elif kind == "linear":
        betas = torch.linspace(b0, b1, n, dtype=torch.float32)
    else:
        raise ValueError(f"scheduler config: beta_schedule {kind!r} is not supported (linear or scaled_linear)")
    return torch.cumprod(1.0 - betas, dim=0)


def read_scheduler_config(unet_config_path: str) -> dict:
    """The model's scheduler/scheduler_config.json beside the unet folder, else SD 1.5's values."""
    model = os.path.dirname(os.path.dirname(os.path.abspath(unet_config_path)))
    path = os.path.join(model, "scheduler", "scheduler_config.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


class TrainStep:
    """Steps 1-6 of the file comment; `params` are the adapter factors, in `adapter_paths` order."""

    def __init__(self, unet, adapters: dict, abar: torch.Tensor, lr=1e-4, max_grad_norm=1.0, weight_decay=1e-2):
        self.unet, self.abar, self.max_grad_norm = unet, abar, max_grad_norm
        self.params = [a.A for a in adapters.values()]
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)

    def loss(self, latents, noise, timesteps, context):
        a = self.abar[timesteps.long()].reshape(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        pred = self.unet(noisy, timesteps, context)
        return torch.mean((pred.float() - noise.float()) ** 2)

    def __call__(self, latents, noise, timesteps, context) -> tuple:
        """One optimizer step; returns (loss, global gradient norm before clipping)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(latents, noise, timesteps, context)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.optimizer.step()
        return loss.item(), norm.item()
