"""Randomly initialised state dicts in the key layout of the released DINOv2 / DINOv3 backbones.

Written from the official model definitions (facebookresearch/dinov2 `vision_transformer.py` at
`img_size=518`, facebookresearch/dinov3 `DinoVisionTransformer` as its hub builds it), independently of
`training.models.official`. Nothing is downloaded: values are random, shapes and names are the files'.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch

# name -> (family, dim, depth, heads, ffn, ffn ratio, registers, qkv bias, swiglu align)
LAYOUTS = {
    "dinov2_vits14": ("dinov2", 384, 12, 6, "mlp", 4, 0, True, 8),
    "dinov2_vitb14": ("dinov2", 768, 12, 12, "mlp", 4, 0, True, 8),
    "dinov2_vitl14": ("dinov2", 1024, 24, 16, "mlp", 4, 0, True, 8),
    "dinov2_vitg14": ("dinov2", 1536, 40, 24, "swiglu", 4, 0, True, 8),
    "dinov2_vits14_reg4": ("dinov2", 384, 12, 6, "mlp", 4, 4, True, 8),
    "dinov2_vitb14_reg4": ("dinov2", 768, 12, 12, "mlp", 4, 4, True, 8),
    "dinov2_vitl14_reg4": ("dinov2", 1024, 24, 16, "mlp", 4, 4, True, 8),
    "dinov2_vitg14_reg4": ("dinov2", 1536, 40, 24, "swiglu", 4, 4, True, 8),
    "dinov3_vits16": ("dinov3", 384, 12, 6, "mlp", 4, 4, True, 8),
    "dinov3_vits16plus": ("dinov3", 384, 12, 6, "swiglu", 6, 4, True, 8),
    "dinov3_vitb16": ("dinov3", 768, 12, 12, "mlp", 4, 4, True, 8),
    "dinov3_vitl16": ("dinov3", 1024, 24, 16, "mlp", 4, 4, True, 8),
    "dinov3_vith16plus": ("dinov3", 1280, 32, 20, "swiglu", 6, 4, True, 8),
    "dinov3_vit7b16": ("dinov3", 4096, 40, 32, "swiglu", 3, 4, False, 64),
}


def shapes(name: str, dim: int | None = None, depth: int | None = None, heads: int | None = None) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the official file (full size unless dim / depth / heads are given)."""
    family, d0, l0, h0, ffn, ratio, regs, qkv_bias, align = LAYOUTS[name]
    d, depth, heads = dim or d0, depth or l0, heads or h0
    out: dict[str, tuple[int, ...]] = {"cls_token": (1, 1, d), "mask_token": (1, d), "norm.weight": (d,), "norm.bias": (d,)}
    if family == "dinov2":
        patch = 14
        out["pos_embed"] = (1, 1 + 37 * 37, d)
        if regs:
            out["register_tokens"] = (1, regs, d)
    else:
        patch = 16
        out["storage_tokens"] = (1, regs, d)
        out["rope_embed.periods"] = (d // heads // 4,)
        if name == "dinov3_vit7b16":
            out["local_cls_norm.weight"] = out["local_cls_norm.bias"] = (d,)
    out["patch_embed.proj.weight"], out["patch_embed.proj.bias"] = (d, 3, patch, patch), (d,)
    hidden = int(d * ratio)
    for i in range(depth):
        b = f"blocks.{i}."
        for norm in ("norm1", "norm2"):
            out[b + norm + ".weight"] = out[b + norm + ".bias"] = (d,)
        out[b + "attn.qkv.weight"] = (3 * d, d)
        if qkv_bias:
            out[b + "attn.qkv.bias"] = (3 * d,)
            if family == "dinov3":
                out[b + "attn.qkv.bias_mask"] = (3 * d,)
        out[b + "attn.proj.weight"], out[b + "attn.proj.bias"] = (d, d), (d,)
        out[b + "ls1.gamma"] = out[b + "ls2.gamma"] = (d,)
        if ffn == "mlp":
            out[b + "mlp.fc1.weight"], out[b + "mlp.fc1.bias"] = (hidden, d), (hidden,)
            out[b + "mlp.fc2.weight"], out[b + "mlp.fc2.bias"] = (d, hidden), (d,)
        else:
            h = int(hidden * 2 / 3)
            h = h + (-h % align)
            if family == "dinov2":  # fused input layer
                out[b + "mlp.w12.weight"], out[b + "mlp.w12.bias"] = (2 * h, d), (2 * h,)
            else:
                out[b + "mlp.w1.weight"], out[b + "mlp.w1.bias"] = (h, d), (h,)
                out[b + "mlp.w2.weight"], out[b + "mlp.w2.bias"] = (h, d), (h,)
            out[b + "mlp.w3.weight"], out[b + "mlp.w3.bias"] = (d, h), (d,)
    return out


def random_state(name: str, seed: int = 0, device: str = "cpu", **size: int) -> dict[str, torch.Tensor]:
    """Random tensors in the official layout; derived buffers (RoPE periods, key-bias mask) hold their
    true values. Scales keep every block's contribution visible in the output."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes(name, **size).items():
        if device == "meta":
            out[key] = torch.empty(shape, device="meta")
            continue
        if key == "rope_embed.periods":
            k = torch.arange(shape[0], dtype=torch.float32)
            value = 100.0 ** (2 * k / (2 * shape[0]))
        elif key.endswith("bias_mask"):
            value = torch.ones(shape)
            value[shape[0] // 3 : 2 * shape[0] // 3] = 0
        elif key.endswith("gamma"):
            value = 0.2 + 0.3 * torch.rand(shape, generator=g)
        elif "norm" in key and key.endswith(".weight"):
            value = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif key.endswith("weight") and len(shape) >= 2:
            fan_in = math.prod(shape[1:])
            value = torch.randn(shape, generator=g) / math.sqrt(fan_in)
        else:
            value = 0.1 * torch.randn(shape, generator=g)
        out[key] = value
    return out


def save_checkpoints(root: Path, names: Sequence[str], seed: int, suffix: str = ".pth") -> dict[str, Path]:
    """Full-size random state dicts in the official layout, one file per name (as torch.hub's)."""
    paths = {}
    for name in names:
        paths[name] = root / f"{name}{suffix}"
        torch.save(random_state(name, seed=seed), paths[name])
    return paths
