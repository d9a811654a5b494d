"""A PyTorch reference of diffusers' UNet2DConditionModel (v0.27.2) for the SD 1.x family.

Why not diffusers itself: Debian's python3-torch is here, but diffusers' import chain is not
(huggingface_hub, safetensors, filelock, packaging, tqdm and regex are all missing, and there is
no pip). So this file writes out, in plain torch, exactly the modules an SD 1.5 config builds:

| diffusers class             | here                 | what it computes                                          |
| --------------------------- | -------------------- | --------------------------------------------------------- |
| Timesteps + TimestepEmbedding | `time_proj`, `TimestepEmbedding` | flip(sin, cos) sinusoid -> Linear, SiLU, Linear |
| ResnetBlock2D               | `ResnetBlock2D`      | GN, SiLU, conv3x3, + temb, GN, SiLU, conv3x3, + shortcut  |
| Transformer2DModel          | `Transformer2DModel` | GN(eps 1e-6), proj_in, blocks, proj_out, + residual       |
| BasicTransformerBlock       | `BasicTransformerBlock` | LN attn1 (self), LN attn2 (cross), LN GEGLU ff           |
| Attention + AttnProcessor   | `Attention`          | baddbmm(q, k^T)*scale, softmax, bmm (torch < 2's processor) |
| Down/UpBlock2D, CrossAttn*, UNetMidBlock2DCrossAttn | the same names | resnets (+ attentions), down/up-samplers |

Module paths equal the diffusers state-dict keys, so `load_safetensors` is a strict walk: every key
and shape checked, missing and unexpected keys listed. Checked against diffusers' own recorded
output (test/fixtures/tiny-a/cases.safetensors `unet.out`) and against our engine
(test/parity/pytorchReference.test.ts).
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class UNetConfig:
    """The UNet2DConditionModel config fields SD 1.x uses, with diffusers' defaults."""

    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple = (320, 640, 1280, 1280)
    down_block_types: tuple = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    up_block_types: tuple = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    layers_per_block: int = 2
    attention_head_dim: object = 8
    num_attention_heads: object = None
    cross_attention_dim: int = 1280
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    use_linear_projection: bool = False
    extra: dict = field(default_factory=dict)

    @staticmethod
    def read(path: str) -> "UNetConfig":
        with open(path) as f:
            raw = json.load(f)
        return UNetConfig.from_dict(raw, path)

    @staticmethod
    def from_dict(raw: dict, source: str = "config") -> "UNetConfig":
        # Settings this reference does not implement: refuse rather than compute something else.
        unsupported = {
            "act_fn": "silu",
            "mid_block_type": "UNetMidBlock2DCrossAttn",
            "resnet_time_scale_shift": "default",
            "class_embed_type": None,
            "addition_embed_type": None,
            "time_embedding_type": "positional",
            "only_cross_attention": False,
            "upcast_attention": False,
            "center_input_sample": False,
            "transformer_layers_per_block": 1,
            "conv_in_kernel": 3,
            "conv_out_kernel": 3,
            "dual_cross_attention": False,
            "encoder_hid_dim": None,
            "time_cond_proj_dim": None,
        }
        for key, expected in unsupported.items():
            value = raw.get(key, expected)
            if value != expected and not (isinstance(value, list) and all(v == expected for v in value)):
                raise ValueError(
                    f"{source}: {key} = {raw[key]!r} is not supported by this reference (expected {expected!r})"
                )
        known = {f for f in UNetConfig.__dataclass_fields__ if f != "extra"}
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in raw.items() if k in known}
        return UNetConfig(**values, extra={k: v for k, v in raw.items() if k not in known})

    def heads(self) -> list:
        """diffusers' quirk: `attention_head_dim` of SD 1.x configs is the number of heads."""
        h = self.num_attention_heads or self.attention_head_dim
        return list(h) if isinstance(h, (list, tuple)) else [h] * len(self.block_out_channels)


def time_proj(timesteps: torch.Tensor, dim: int, flip_sin_to_cos: bool, shift: float) -> torch.Tensor:
    """diffusers' get_timestep_embedding: [B] -> [B, dim]."""
    half = dim // 2
    exponent = -math.log(10000) * torch.arange(0, half, dtype=torch.float32) / (half - shift)
    emb = timesteps[:, None].float() * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    return emb


class TimestepEmbedding(nn.Module):
    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


class ResnetBlock2D(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int, groups: int, eps: float, scale: float = 1.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=eps)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None
        self.output_scale_factor = scale

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))  # dropout 0
        skip = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return (skip + h) / self.output_scale_factor


class Attention(nn.Module):
    def __init__(self, dim: int, context_dim: int, heads: int, head_dim: int):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.scale = head_dim**-0.5
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(0.0)])

    def split(self, x):  # [B, N, heads*d] -> [B*heads, N, d]
        b, n, c = x.shape
        return x.reshape(b, n, self.heads, c // self.heads).permute(0, 2, 1, 3).reshape(b * self.heads, n, -1)

    def forward(self, x, context=None):
        context = x if context is None else context
        q, k, v = self.split(self.to_q(x)), self.split(self.to_k(context)), self.split(self.to_v(context))
        # AttnProcessor (diffusers' processor on torch < 2): baddbmm with beta 0, softmax, bmm.
        empty = torch.empty(q.shape[0], q.shape[1], k.shape[1], dtype=q.dtype)
        probs = torch.baddbmm(empty, q, k.transpose(-1, -2), beta=0, alpha=self.scale).softmax(dim=-1)
        out = torch.bmm(probs, v)  # [B*heads, N, d]
        b = x.shape[0]
        out = out.reshape(b, self.heads, out.shape[1], -1).permute(0, 2, 1, 3).reshape(b, out.shape[1], -1)
        return self.to_out[0](out)


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x):
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, dim * 4), nn.Dropout(0.0), nn.Linear(dim * 4, dim)])

    def forward(self, x):
        return self.net[2](self.net[0](x))


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, context_dim: int, heads: int, head_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, dim, heads, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, context_dim, heads, head_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x, context):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class Transformer2DModel(nn.Module):
    def __init__(self, channels: int, context_dim: int, heads: int, groups: int, linear: bool):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.linear = linear
        self.proj_in = nn.Linear(channels, channels) if linear else nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(channels, context_dim, heads, channels // heads)])
        self.proj_out = nn.Linear(channels, channels) if linear else nn.Conv2d(channels, channels, 1)

    def forward(self, x, context):
        b, c, h, w = x.shape
        y = self.norm(x)
        if not self.linear:
            y = self.proj_in(y)
        y = y.permute(0, 2, 3, 1).reshape(b, h * w, c)  # [B, HW, C]
        if self.linear:
            y = self.proj_in(y)
        for block in self.transformer_blocks:
            y = block(y, context)
        if self.linear:
            y = self.proj_out(y)
        y = y.reshape(b, h, w, c).permute(0, 3, 1, 2)  # [B, C, H, W]
        if not self.linear:
            y = self.proj_out(y)
        return y + x


class Downsample2D(nn.Module):
    def __init__(self, channels: int, padding: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x):
        return self.conv(x)


class Upsample2D(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, size):
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


def run(module, checkpointed: bool, *args):
    """One module call, recomputed in the backward when checkpointed (diffusers' use_reentrant=False)."""
    if checkpointed and torch.is_grad_enabled():
        return checkpoint(module, *args, use_reentrant=False)
    return module(*args)


class DownBlock(nn.Module):
    """DownBlock2D, or CrossAttnDownBlock2D when `attentions` is given."""

    def __init__(self, cin, cout, temb, n, cfg: UNetConfig, heads, cross: bool, downsample: bool):
        super().__init__()
        g, eps = cfg.norm_num_groups, cfg.norm_eps
        self.resnets = nn.ModuleList([ResnetBlock2D(cin if i == 0 else cout, cout, temb, g, eps) for i in range(n)])
        if cross:
            self.attentions = nn.ModuleList(
                [Transformer2DModel(cout, cfg.cross_attention_dim, heads, g, cfg.use_linear_projection) for _ in range(n)]
            )
        self.downsamplers = nn.ModuleList([Downsample2D(cout, cfg.downsample_padding)]) if downsample else None

    def forward(self, x, temb, context, ckpt):
        states = []
        attns = getattr(self, "attentions", [None] * len(self.resnets))
        for resnet, attn in zip(self.resnets, attns):
            x = run(resnet, ckpt, x, temb)
            if attn is not None:
                x = run(attn, ckpt, x, context)
            states.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            states.append(x)
        return x, states


class UpBlock(nn.Module):
    """UpBlock2D, or CrossAttnUpBlock2D when `cross`."""

    def __init__(self, cin, cout, prev, temb, n, cfg: UNetConfig, heads, cross: bool, upsample: bool):
        super().__init__()
        g, eps = cfg.norm_num_groups, cfg.norm_eps
        self.resnets = nn.ModuleList(
            [
                ResnetBlock2D((prev if i == 0 else cout) + (cin if i == n - 1 else cout), cout, temb, g, eps)
                for i in range(n)
            ]
        )
        if cross:
            self.attentions = nn.ModuleList(
                [Transformer2DModel(cout, cfg.cross_attention_dim, heads, g, cfg.use_linear_projection) for _ in range(n)]
            )
        self.upsamplers = nn.ModuleList([Upsample2D(cout)]) if upsample else None

    def forward(self, x, skips, temb, context, ckpt, up_size):
        attns = getattr(self, "attentions", [None] * len(self.resnets))
        for resnet, attn in zip(self.resnets, attns):
            x = torch.cat([x, skips.pop()], dim=1)
            x = run(resnet, ckpt, x, temb)
            if attn is not None:
                x = run(attn, ckpt, x, context)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, up_size)
        return x


class MidBlock(nn.Module):
    """UNetMidBlock2DCrossAttn: resnet, (attention, resnet)."""

    def __init__(self, c, temb, cfg: UNetConfig, heads):
        super().__init__()
        g, eps, s = cfg.norm_num_groups, cfg.norm_eps, cfg.mid_block_scale_factor
        self.resnets = nn.ModuleList([ResnetBlock2D(c, c, temb, g, eps, s) for _ in range(2)])
        self.attentions = nn.ModuleList(
            [Transformer2DModel(c, cfg.cross_attention_dim, heads, g, cfg.use_linear_projection)]
        )

    def forward(self, x, temb, context, ckpt):
        x = run(self.resnets[0], ckpt, x, temb)
        x = run(self.attentions[0], ckpt, x, context)
        return run(self.resnets[1], ckpt, x, temb)


class UNet2DConditionModel(nn.Module):
    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        ch, heads, n = list(cfg.block_out_channels), cfg.heads(), cfg.layers_per_block
        temb = ch[0] * 4
        self.gradient_checkpointing = False
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(ch[0], temb)
        self.down_blocks = nn.ModuleList()
        for i, kind in enumerate(cfg.down_block_types):
            cross = check_block(kind, "CrossAttnDownBlock2D", "DownBlock2D")
            cin = ch[i - 1] if i > 0 else ch[0]
            self.down_blocks.append(DownBlock(cin, ch[i], temb, n, cfg, heads[i], cross, i < len(ch) - 1))
        self.mid_block = MidBlock(ch[-1], temb, cfg, heads[-1])
        self.up_blocks = nn.ModuleList()
        rch, rheads = ch[::-1], heads[::-1]
        for i, kind in enumerate(cfg.up_block_types):
            cross = check_block(kind, "CrossAttnUpBlock2D", "UpBlock2D")
            cin, prev = rch[min(i + 1, len(ch) - 1)], rch[i - 1] if i > 0 else rch[0]
            self.up_blocks.append(UpBlock(cin, rch[i], prev, temb, n + 1, cfg, rheads[i], cross, i < len(ch) - 1))
        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, ch[0], eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(ch[0], cfg.out_channels, 3, padding=1)

    def forward(self, sample, timesteps, context):
        """sample [B, C, H, W], timesteps [B], context [B, tokens, cross_attention_dim] -> [B, C, H, W]."""
        ckpt = self.gradient_checkpointing
        t = time_proj(timesteps, self.cfg.block_out_channels[0], self.cfg.flip_sin_to_cos, self.cfg.freq_shift)
        temb = self.time_embedding(t.to(sample.dtype))
        x = self.conv_in(sample)
        skips = [x]
        for block in self.down_blocks:
            x, states = block(x, temb, context, ckpt)
            skips += states
        x = self.mid_block(x, temb, context, ckpt)
        for block in self.up_blocks:
            n = len(block.resnets)
            mine, skips = skips[-n:], skips[:-n]
            up_size = skips[-1].shape[2:] if skips else None  # the next block's skip size (diffusers' upsample_size)
            x = block(x, mine, temb, context, ckpt, up_size)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


def check_block(kind: str, cross: str, plain: str) -> bool:
    if kind not in (cross, plain):
        raise ValueError(f"UNet config: block type {kind!r} is not supported by this reference ({cross} or {plain})")
    return kind == cross


# --- safetensors, read by hand (JSON header + raw little-endian bytes; the package is not installed) ---

DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32, "U8": np.uint8}


def read_safetensors(path: str) -> dict:
    """name -> torch tensor (a copy), for every tensor of a .safetensors file."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        base = 8 + n
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in DTYPES:
            raise ValueError(f"{path}: tensor {name} has dtype {info['dtype']}, expected one of {sorted(DTYPES)}")
        start, end = info["data_offsets"]
        arr = np.frombuffer(raw[base + start : base + end], dtype=DTYPES[info["dtype"]]).reshape(info["shape"])
        out[name] = torch.from_numpy(arr.copy())
    return out


def write_safetensors(path: str, tensors: dict) -> None:
    """name -> float32/int64 tensor, written as a .safetensors file."""
    names = {np.float32: "F32", np.int64: "I64", np.int32: "I32"}
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        arr = np.ascontiguousarray(t.detach().cpu().numpy())
        data = arr.tobytes()
        header[name] = {
            "dtype": names[arr.dtype.type],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def load_safetensors(model: nn.Module, path: str) -> None:
    """Strict load: every parameter of `model` from `path`, shapes checked, missing/unexpected listed."""
    tensors = read_safetensors(path)
    params = dict(model.named_parameters())
    missing = sorted(set(params) - set(tensors))
    unexpected = sorted(set(tensors) - set(params))
    if missing or unexpected:
        raise ValueError(
            f"{path}: {len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected {unexpected[:5]}"
        )
    with torch.no_grad():
        for name, p in params.items():
            t = tensors[name]
            if tuple(t.shape) != tuple(p.shape):
                raise ValueError(f"{path}: {name} has shape {list(t.shape)}, the config needs {list(p.shape)}")
            p.copy_(t.to(p.dtype))
