"""Building blocks of the DINOv2 / DINOv3 ViT: patch embedding, SDPA attention (optionally with axial
RoPE), MLP / SwiGLU, LayerScale, block."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from training.models.stochastic_depth import drop_add_residual

Rope = tuple[torch.Tensor, torch.Tensor]  # (sin, cos), each [h*w, head_dim]


class PatchEmbed(nn.Module):
    """Non-overlapping `patch_size` convolution; returns tokens [B, h*w, D] and the grid (h, w)."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return x.flatten(2).transpose(1, 2), (h, w)


class RopeEmbedding(nn.Module):
    """DINOv3's axial rotary position embedding (no learned weights).

    Patch centres are placed on [-1, 1] separately along each axis ((i + 0.5) / h * 2 - 1), so any
    grid covers the same range; head dimension d is split in two halves of d/4 frequencies for rows
    and for columns, with periods `base ** (2k / (d/2))`. In training, `rescale_coords` (DINOv3: 2)
    multiplies the coordinates by one log-uniform factor in [1/r, r] per call.
    """

    def __init__(self, head_dim: int, base: float = 100.0, rescale_coords: float | None = None) -> None:
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"RoPE needs a head dimension divisible by 4, got {head_dim}")
        self.head_dim, self.base, self.rescale_coords = head_dim, float(base), rescale_coords
        # Non-persistent: a pure function of (base, head_dim), kept out of checkpoints.
        self.register_buffer("periods", self.compute_periods(), persistent=False)

    def compute_periods(self, device: torch.device | str | None = None) -> torch.Tensor:
        k = torch.arange(self.head_dim // 4, dtype=torch.float32, device=device)
        return self.base ** (2 * k / (self.head_dim // 2))

    def init_buffers(self, device: torch.device | str = "cpu") -> None:
        self.periods = self.compute_periods(device)

    def forward(self, h: int, w: int) -> Rope:
        dd = {"device": self.periods.device, "dtype": torch.float32}
        coords_h = torch.arange(0.5, h, **dd) / h
        coords_w = torch.arange(0.5, w, **dd) / w
        coords = torch.stack(torch.meshgrid(coords_h, coords_w, indexing="ij"), dim=-1).flatten(0, 1)
        coords = 2.0 * coords - 1.0  # [h*w, 2]
        if self.training and self.rescale_coords:
            bound = math.log(self.rescale_coords)
            coords = coords * torch.empty(1, **dd).uniform_(-bound, bound).exp()
        angles = 2 * math.pi * coords.unsqueeze(-1) / self.periods  # [h*w, 2, d/4]
        angles = angles.flatten(-2, -1).tile(2)  # [h*w, d]
        return torch.sin(angles), torch.cos(angles)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, rope: Rope) -> torch.Tensor:
    """Rotate the last h*w tokens of x [B, heads, N, d] (the prefix tokens, CLS and registers, keep
    their values); computed in float32 and cast back."""
    sin, cos = rope
    prefix = x.shape[-2] - sin.shape[-2]
    y = x[:, :, prefix:].float()
    y = y * cos + _rotate_half(y) * sin
    return torch.cat([x[:, :, :prefix], y.to(x.dtype)], dim=-2)


class Attention(nn.Module):
    """Multi-head self-attention through `scaled_dot_product_attention` (flash / memory-efficient on GPU).

    `mask_k_bias` (DINOv3) keeps a qkv bias but zeroes its key third at every forward.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_bias: bool = True,
                 mask_k_bias: bool = False) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        if qkv_bias and mask_k_bias:
            self.register_buffer("bias_mask", self.key_bias_mask(dim), persistent=False)
        else:
            self.bias_mask = None

    @staticmethod
    def key_bias_mask(dim: int, device: torch.device | str | None = None) -> torch.Tensor:
        mask = torch.ones(3 * dim, device=device)
        mask[dim : 2 * dim] = 0.0
        return mask

    def init_buffers(self, device: torch.device | str = "cpu") -> None:
        if self.bias_mask is not None:
            self.bias_mask = self.key_bias_mask(self.qkv.in_features, device)

    def forward(self, x: torch.Tensor, rope: Rope | None = None) -> torch.Tensor:
        b, n, c = x.shape
        bias = self.qkv.bias
        if bias is not None and self.bias_mask is not None:
            bias = bias * self.bias_mask.to(bias.dtype)
        qkv = F.linear(x, self.qkv.weight, bias)
        qkv = qkv.reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2."""

    def __init__(self, dim: int, hidden: int, bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def swiglu_hidden(hidden: int, align: int = 8) -> int:
    """SwiGLU width: 2/3 of the MLP width, rounded up to a multiple of `align` (DINOv2 ViT-g:
    4 * 1536 -> 4096; DINOv3 aligns to 8, and to 64 for ViT-7B), so the parameter count matches the
    plain MLP."""
    d = int(hidden * 2 / 3)
    return d + (-d % align)


class SwiGLUFFN(nn.Module):
    """SwiGLU feed-forward: w3(silu(x W1) * (x W2)), with W1 and W2 fused into one matmul (`w12`,
    DINOv2's layout; DINOv3's separate `w1` / `w2` are its two halves)."""

    def __init__(self, dim: int, hidden: int, bias: bool = True, align: int = 8) -> None:
        super().__init__()
        hidden = swiglu_hidden(hidden, align)
        self.w12 = nn.Linear(dim, 2 * hidden, bias=bias)
        self.w3 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class LayerScale(nn.Module):
    """Per-channel residual scale initialised small (1e-5) so deep ViTs start close to identity.

    The parameter is named `gamma`, which the optimizer's grouping exempts from weight decay.
    """

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale and efficient stochastic depth on both branches."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        ffn_layer: str = "mlp",
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        layerscale_init: float | None = 1e-5,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
        mask_k_bias: bool = False,
        swiglu_align: int = 8,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias, mask_k_bias=mask_k_bias)
        self.ls1 = LayerScale(dim, layerscale_init) if layerscale_init else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        hidden = int(dim * mlp_ratio)
        if ffn_layer == "mlp":
            self.mlp: nn.Module = Mlp(dim, hidden, bias=ffn_bias)
        elif ffn_layer == "swiglu":
            self.mlp = SwiGLUFFN(dim, hidden, bias=ffn_bias, align=swiglu_align)
        else:
            raise ValueError(f"unknown ffn_layer {ffn_layer!r} (mlp | swiglu)")
        self.ls2 = LayerScale(dim, layerscale_init) if layerscale_init else nn.Identity()
        self.drop_path = float(drop_path)

    def _attn_branch(self, x: torch.Tensor, rope: Rope | None = None) -> torch.Tensor:
        return self.ls1(self.attn(self.norm1(x), rope))

    def _ffn_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.ls2(self.mlp(self.norm2(x)))

    def forward(self, x: torch.Tensor, rope: Rope | None = None) -> torch.Tensor:
        if self.training and self.drop_path > 0.0:
            x = drop_add_residual(x, lambda t: self._attn_branch(t, rope), self.drop_path)
            return drop_add_residual(x, self._ffn_branch, self.drop_path)
        x = x + self._attn_branch(x, rope)
        return x + self._ffn_branch(x)
