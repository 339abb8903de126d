"""The published DINOv2 and DINOv3 backbones, mapped onto `training.models.vit.VisionTransformer`.

Names (torch.hub's, with the spellings of the papers as aliases):

    dinov2_vit{s,b,l,g}14        patch 14, learned position table (37 x 37, built for 518 px),
    dinov2_vit{s,b,l,g}14_reg4   interpolated with offset 0.1 (no antialias); the "_reg" releases
                                 add 4 registers and interpolate with antialias, offset 0
    dinov3_vit{s,s+,b,l,h+,7b}16 patch 16, axial RoPE, 4 storage tokens, LayerNorm eps 1e-5, masked
                                 key bias (hub names dinov3_vits16plus / dinov3_vith16plus / dinov3_vit7b16)

Checkpoint files are read in the official key layout (what `torch.hub.load(...).state_dict()`
returns, or a training checkpoint's teacher backbone): DINOv2's keys are ours, except chunked
blocks (`blocks.<chunk>.<i>.`) of FSDP training checkpoints; DINOv3 calls registers
`storage_tokens`, splits SwiGLU's input layer into `w1` / `w2` (our fused `w12` is their
concatenation) and stores two derived buffers (`rope_embed.periods`, `attn.qkv.bias_mask`), checked
here and then dropped. ViT-7B's `local_cls_norm` (applied only to local crops during its training)
is dropped too: no inference path uses it.

`to_official` writes the inverse mapping, which `lvd export --format dinov2|dinov3` uses.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from curation.core.errors import UserError
from training.models.vit import VisionTransformer, build_vit

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Both families' own evaluation transform: resize the shorter side to 256 (bicubic), centre-crop 224.
EVAL_PREPROCESSING = {"input_size": 224, "crop_pct": 224 / 256, "interpolation": "bicubic",
                      "mean": IMAGENET_MEAN, "std": IMAGENET_STD}


@dataclass(frozen=True)
class OfficialModel:
    name: str  # torch.hub entry point
    family: str  # dinov2 | dinov3
    arch: dict[str, Any]  # keyword arguments of build_vit
    timm_name: str  # timm's implementation of the same architecture (the parity reference)
    aliases: tuple[str, ...] = ()
    preprocessing: dict[str, Any] = field(default_factory=lambda: dict(EVAL_PREPROCESSING))


def _dinov2(size: str, dim: int, depth: int, heads: int, timm_size: str, registers: bool, **extra: Any) -> OfficialModel:
    arch = dict(img_size=518, patch_size=14, embed_dim=dim, depth=depth, num_heads=heads, layerscale_init=1e-5,
                num_register_tokens=4 if registers else 0, interpolate_antialias=registers,
                interpolate_offset=0.0 if registers else 0.1, **extra)
    name = f"dinov2_vit{size}14" + ("_reg4" if registers else "")
    aliases = (f"dinov2_vit{size}14_reg",) if registers else ()
    return OfficialModel(name, "dinov2", arch, f"vit_{timm_size}_patch14_{'reg4_' if registers else ''}dinov2", aliases)


def _dinov3(name: str, dim: int, depth: int, heads: int, timm_name: str, aliases: tuple[str, ...] = (),
            ffn_layer: str = "mlp", mlp_ratio: float = 4.0, qkv_bias: bool = True, swiglu_align: int = 8) -> OfficialModel:
    arch = dict(img_size=224, patch_size=16, embed_dim=dim, depth=depth, num_heads=heads, layerscale_init=1e-5,
                num_register_tokens=4, pos_embed="rope", rope_base=100.0, norm_eps=1e-5, mask_k_bias=True,
                qkv_bias=qkv_bias, ffn_layer=ffn_layer, mlp_ratio=mlp_ratio, swiglu_align=swiglu_align)
    return OfficialModel(name, "dinov3", arch, timm_name, aliases)


_MODELS = [
    *(_dinov2(s, d, n, h, t, reg, **x) for reg in (False, True) for s, d, n, h, t, x in (
        ("s", 384, 12, 6, "small", {}), ("b", 768, 12, 12, "base", {}), ("l", 1024, 24, 16, "large", {}),
        ("g", 1536, 40, 24, "giant", {"ffn_layer": "swiglu"}))),
    _dinov3("dinov3_vits16", 384, 12, 6, "vit_small_patch16_dinov3_qkvb"),
    _dinov3("dinov3_vits16plus", 384, 12, 6, "vit_small_plus_patch16_dinov3_qkvb", ("dinov3_vits+16", "dinov3_vits16+"),
            ffn_layer="swiglu", mlp_ratio=6.0),
    _dinov3("dinov3_vitb16", 768, 12, 12, "vit_base_patch16_dinov3_qkvb"),
    _dinov3("dinov3_vitl16", 1024, 24, 16, "vit_large_patch16_dinov3_qkvb"),
    _dinov3("dinov3_vith16plus", 1280, 32, 20, "vit_huge_plus_patch16_dinov3_qkvb", ("dinov3_vith+16", "dinov3_vith16+"),
            ffn_layer="swiglu", mlp_ratio=6.0),
    _dinov3("dinov3_vit7b16", 4096, 40, 32, "vit_7b_patch16_dinov3", ("dinov3_vit7b",),
            ffn_layer="swiglu", mlp_ratio=3.0, qkv_bias=False, swiglu_align=64),
]
OFFICIAL: dict[str, OfficialModel] = {m.name: m for m in _MODELS}
_ALIASES = {alias: m.name for m in _MODELS for alias in m.aliases}


def is_official(name: str | None) -> bool:
    return name is not None and (name in OFFICIAL or name in _ALIASES)


def official_model(name: str) -> OfficialModel:
    if not is_official(name):
        raise UserError(f"unknown official model {name!r}; known: {', '.join(OFFICIAL)}")
    return OFFICIAL[_ALIASES.get(name, name)]


def split_init_spec(spec: str) -> tuple[OfficialModel, str]:
    """`NAME:PATH` (lvd train --init, lvd embed --model) -> (model, path)."""
    name, sep, path = spec.partition(":")
    if not sep or not path:
        raise UserError(f"--init wants NAME:PATH, e.g. dinov2_vitb14:/weights/dinov2_vitb14_pretrain.pth (got {spec!r})")
    return official_model(name), path


_CHUNKED = re.compile(r"^blocks\.\d+\.(\d+)\.")


def _dinov3_to_ours(state: dict[str, torch.Tensor], arch: dict[str, Any]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    head_dim = arch["embed_dim"] // arch["num_heads"]
    for key, value in state.items():
        if value.is_meta and (key == "rope_embed.periods" or key.endswith("bias_mask")):
            continue  # shapes only (a layout check): nothing to verify
        if key == "rope_embed.periods":
            k = torch.arange(head_dim // 4, dtype=torch.float32)
            expected = float(arch.get("rope_base", 100.0)) ** (2 * k / (head_dim // 2))
            if value.shape != expected.shape or not torch.allclose(value.float(), expected, rtol=1e-4):
                raise UserError("rope_embed.periods of the checkpoint are not RoPE base 100 periods: not a released DINOv3 backbone")
            continue
        if key.endswith("attn.qkv.bias_mask"):
            dim = value.shape[0] // 3
            if not (torch.all(value[:dim] == 1) and torch.all(value[dim : 2 * dim] == 0) and torch.all(value[2 * dim :] == 1)):
                raise UserError(f"{key} is not the key-bias mask (1, 0, 1 by thirds) of DINOv3")
            continue
        if key.startswith("local_cls_norm."):
            continue
        if key.startswith("cls_norm."):
            raise UserError("this DINOv3 checkpoint unties the CLS and patch norms (cls_norm), which no released backbone does")
        if key == "storage_tokens":
            key = "register_tokens"
        if ".mlp.w1." in key:
            w2 = state[key.replace(".mlp.w1.", ".mlp.w2.")]
            out[key.replace(".mlp.w1.", ".mlp.w12.")] = torch.cat([value, w2], dim=0)
            continue
        if ".mlp.w2." in key:
            continue
        out[key] = value
    return out


def from_official(name: str, state: Mapping[str, torch.Tensor], **overrides: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(arch, state dict) of our VisionTransformer for an official checkpoint's tensors.

    `overrides` change the architecture (tests build reduced-depth copies); the position table's
    grid sets `img_size`. Float tensors become float32. Raises a UserError naming the keys that do
    not fit.
    """
    spec = official_model(name)
    arch = dict(spec.arch, **overrides)
    state = {_CHUNKED.sub(r"blocks.\1.", k): v for k, v in state.items()}
    if spec.family == "dinov3":
        state = _dinov3_to_ours(state, arch)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    if "pos_embed" in state:
        side = math.isqrt(state["pos_embed"].shape[1] - 1)
        arch["img_size"] = side * arch["patch_size"]
    with torch.device("meta"):
        expected = build_vit(**arch).state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong[:3])
        raise UserError(f"the weights do not fit {spec.name}: {len(missing)} missing {missing[:3]}, {len(unexpected)} "
                        f"unexpected {unexpected[:3]}, {len(wrong)} of wrong shape {detail}; is the model name right?")
    return arch, state


def build_official(name: str, state: Mapping[str, torch.Tensor], **overrides: Any) -> VisionTransformer:
    """The backbone of an official checkpoint, in eval mode (parameters share the file's memory when
    it was memory-mapped: nothing is initialised and then overwritten)."""
    arch, ours = from_official(name, state, **overrides)
    with torch.device("meta"):
        model = build_vit(**arch)
    model.load_state_dict(ours, strict=True, assign=True)
    model.init_buffers()
    return model.eval()


#: The patch grid of the released DINOv2 position tables: torch.hub builds them for 518 px at patch 14.
DINOV2_GRID = 37


def official_grid(model: VisionTransformer) -> int | None:
    """The position-table grid the released DINOv2 builders expect for this backbone's patch size
    (37 at patch 14), or None where no released model has the patch size."""
    return DINOV2_GRID if model.patch_embed.patch_size == 14 else None


def to_official(model: VisionTransformer, family: str, grid: int | None = None) -> dict[str, torch.Tensor]:
    """Our backbone's tensors in the official layout of `family` (dinov2: torch.hub's DINOv2 keys;
    dinov3: DINOv3's, with its derived buffers), float32 on CPU.

    `grid` (dinov2): the side of the position table written, resampled from ours exactly as DINOv2
    resamples it for that grid at inference (`interpolate_pos_encoding`: bicubic, its offset and
    antialias), so at `grid * patch` px the file gives the features our model gives there. A backbone
    trained from scratch at 224 px has a 16 x 16 table; torch.hub's builders (518 px) need 37 x 37."""
    state = {k: v.detach().to("cpu", torch.float32).clone() for k, v in model.state_dict().items()}
    if family == "dinov2":
        if model.pos_embed is None:
            raise UserError("a RoPE backbone has no DINOv2 layout (no position table): export it with --format dinov3")
        if grid is not None and grid * grid != state["pos_embed"].shape[1] - 1:
            with torch.no_grad():
                state["pos_embed"] = model.interpolate_pos_encoding(grid, grid, torch.float32).detach().to("cpu").clone()
        return state
    if family != "dinov3":
        raise ValueError(f"unknown family {family!r}")
    if model.rope is None:
        raise UserError("a backbone with a learned position table has no DINOv3 layout: export it with --format dinov2")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key == "register_tokens":
            key = "storage_tokens"
        if ".mlp.w12." in key:
            w1, w2 = value.chunk(2, dim=0)
            out[key.replace(".mlp.w12.", ".mlp.w1.")], out[key.replace(".mlp.w12.", ".mlp.w2.")] = w1.clone(), w2.clone()
            continue
        out[key] = value
    out["rope_embed.periods"] = model.rope.compute_periods()
    for i, block in enumerate(model.blocks):
        if block.attn.bias_mask is not None:
            out[f"blocks.{i}.attn.qkv.bias_mask"] = block.attn.bias_mask.detach().cpu().float().clone()
    return out
