"""The DINOv2 (and DINOv3) Vision Transformer backbone.

Differences from a plain ViT that matter for DINOv2: LayerScale, efficient stochastic depth,
optional register tokens (Darcet et al. 2023: extra learnable tokens after CLS, no position
embedding), a learnable `mask_token` that replaces masked patch embeddings for iBOT, and bicubic
interpolation of the position embedding so any input resolution works (global, local and
high-resolution crops share one table). The interpolation is DINOv2's: the target grid is reached
through a scale factor `(h + 0.1) / side` (`interpolate_offset`, 0 for the "with registers"
releases, which antialias instead).

DINOv3 (`pos_embed="rope"`) replaces the table with axial RoPE on the patch tokens
(`layers.RopeEmbedding`), calls its registers "storage tokens", uses LayerNorm eps 1e-5 and
masks the key third of the qkv bias (`mask_k_bias`). `training.models.official` maps the
official checkpoints of both families onto this class.

`build_vit(**arch)` is the single constructor; the `arch` dict (its keyword arguments) is what
checkpoints and exported backbones store.
"""
from __future__ import annotations

import inspect
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from training.models.layers import Block, PatchEmbed, RopeEmbedding

# DINOv2 sizes (dim / depth / heads). ViT-g uses SwiGLU; DINOv2's from-scratch ViT-L recipe also
# used SwiGLU but the released (distilled) ViT-L/14 uses the plain MLP, which we follow.
ARCHS: dict[str, dict[str, Any]] = {
    "vit_tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12),
    "vit_large": dict(embed_dim=1024, depth=24, num_heads=16),
    "vit_giant2": dict(embed_dim=1536, depth=40, num_heads=24, ffn_layer="swiglu"),
}


class VisionTransformer(nn.Module):
    """ViT whose `forward(x)` returns the normalised CLS token [B, D]; `forward_features` returns all tokens."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 14,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        ffn_layer: str = "mlp",
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        layerscale_init: float | None = 1e-5,
        drop_path_rate: float = 0.0,
        num_register_tokens: int = 0,
        interpolate_antialias: bool = False,
        interpolate_offset: float = 0.1,
        pos_embed: str = "learned",
        rope_base: float = 100.0,
        rope_rescale_coords: float | None = None,
        norm_eps: float = 1e-6,
        mask_k_bias: bool = False,
        swiglu_align: int = 8,
    ) -> None:
        super().__init__()
        if pos_embed not in ("learned", "rope"):
            raise ValueError(f"pos_embed must be 'learned' or 'rope', got {pos_embed!r}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.num_register_tokens = num_register_tokens
        self.interpolate_antialias = interpolate_antialias
        self.interpolate_offset = float(interpolate_offset)
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        grid = img_size // patch_size
        self.grid = grid
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        if pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, embed_dim))
            self.rope = None
        else:
            self.pos_embed = None
            self.rope = RopeEmbedding(embed_dim // num_heads, rope_base, rope_rescale_coords)
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim)) if num_register_tokens else None
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        # DINOv2 trains with a uniform drop rate in every block (`drop_path_uniform: true`).
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio=mlp_ratio,
                ffn_layer=ffn_layer,
                qkv_bias=qkv_bias,
                proj_bias=proj_bias,
                ffn_bias=ffn_bias,
                layerscale_init=layerscale_init,
                drop_path=drop_path_rate,
                norm_eps=norm_eps,
                mask_k_bias=mask_k_bias,
                swiglu_align=swiglu_align,
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.init_weights()

    def init_weights(self) -> None:
        """timm-style init: truncated normal 0.02 for linear layers and position embedding."""
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        nn.init.zeros_(self.mask_token)
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def init_buffers(self, device: torch.device | str = "cpu") -> None:
        """Recompute the derived (non-persistent) buffers, e.g. after building on the meta device and
        loading the parameters with `assign=True`."""
        for module in self.modules():
            if module is not self and hasattr(module, "init_buffers"):
                module.init_buffers(device)

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    def interpolate_pos_encoding(self, h: int, w: int, dtype: torch.dtype) -> torch.Tensor:
        """Position embedding for an h x w patch grid, bicubically resized from the table's grid as
        DINOv2 does: with `interpolate_offset` the target is reached by the scale factors
        ((h + offset) / side, (w + offset) / side), otherwise by the output size."""
        pos = self.pos_embed
        n = pos.shape[1] - 1
        if h * w == n and h == w:
            return pos.to(dtype)
        side = int(math.sqrt(n))
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        patch_pos = patch_pos.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
        if self.interpolate_offset:
            scale = ((h + self.interpolate_offset) / side, (w + self.interpolate_offset) / side)
            patch_pos = F.interpolate(patch_pos, scale_factor=scale, mode="bicubic", antialias=self.interpolate_antialias)
        else:
            patch_pos = F.interpolate(patch_pos, size=(h, w), mode="bicubic", antialias=self.interpolate_antialias)
        assert patch_pos.shape[-2:] == (h, w), (patch_pos.shape, h, w)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, h * w, -1)
        return torch.cat((cls_pos.float(), patch_pos), dim=1).to(dtype)

    def prepare_tokens(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """Patch-embed, swap masked patches for `mask_token`, prepend CLS, add positions, insert registers."""
        b = x.shape[0]
        tokens, (h, w) = self.patch_embed(x)
        if masks is not None:
            tokens = torch.where(masks.unsqueeze(-1), self.mask_token.to(tokens.dtype).unsqueeze(0), tokens)
        tokens = torch.cat((self.cls_token.expand(b, -1, -1).to(tokens.dtype), tokens), dim=1)
        if self.pos_embed is not None:
            tokens = tokens + self.interpolate_pos_encoding(h, w, tokens.dtype)
        if self.register_tokens is not None:
            regs = self.register_tokens.expand(b, -1, -1).to(tokens.dtype)
            tokens = torch.cat((tokens[:, :1], regs, tokens[:, 1:]), dim=1)
        return tokens

    def forward_features(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """All output tokens after the final norm: `cls` [B, D], `registers` [B, R, D], `patches` [B, N, D]."""
        tokens = self.prepare_tokens(x, masks)
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        # With its coordinate augmentation on (training), DINOv3 draws the RoPE anew for every block.
        per_block = self.rope is not None and self.rope.training and bool(self.rope.rescale_coords)
        rope = self.rope(*grid) if self.rope is not None and not per_block else None
        for block in self.blocks:
            tokens = block(tokens, self.rope(*grid) if per_block else rope)
        r = 1 + self.num_register_tokens
        # Normalising the slices separately (LayerNorm is per token) returns fresh tensors, not views,
        # which FSDP2 needs to attach its pre-backward hooks to a module's outputs safely.
        return {"cls": self.norm(tokens[:, 0]), "registers": self.norm(tokens[:, 1:r]), "patches": self.norm(tokens[:, r:])}

    def forward(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_features(x, masks)["cls"]


def build_vit(arch: str | None = None, **kwargs: Any) -> VisionTransformer:
    """Build a ViT from a named size (`ARCHS`) and/or explicit keyword overrides."""
    params: dict[str, Any] = {}
    if arch is not None:
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}")
        params.update(ARCHS[arch])
    params.update(kwargs)
    return VisionTransformer(**params)


def arch_kwargs(arch: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """The fully resolved keyword arguments `build_vit` would use (what checkpoints store), every
    default included, so a stored arch rebuilds the same network after a default changes."""
    params = {k: p.default for k, p in inspect.signature(VisionTransformer.__init__).parameters.items() if k != "self"}
    if arch is not None:
        params.update(ARCHS[arch])
    params.update(kwargs)
    return params
