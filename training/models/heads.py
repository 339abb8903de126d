"""DINO / iBOT projection head: 3-layer MLP to a bottleneck, L2-normalise, weight-normalised prototypes."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class WeightNormLinear(nn.Module):
    """Bias-free linear layer with weight normalisation (Salimans & Kingma 2016), as DINOv2's head:
    `weight = weight_g * weight_v / ||weight_v||` per output row.

    As in the official head (`nn.utils.weight_norm(nn.Linear(...))` with `weight_g` filled with 1),
    the gain `weight_g` [out, 1] is a parameter: it starts at 1, is trained, is frozen with the rest
    of the last layer during the first epoch (its name contains `last_layer`, see `training.optim`)
    and is under weight decay. Written out instead of `nn.utils.weight_norm` so FSDP2 sees two plain
    parameters; the names and shapes are those of the official state dict.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1))
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.trunc_normal_(self.weight_v, std=0.02)

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight [out, in] (rows of norm `weight_g`)."""
        v = self.weight_v
        return v * (self.weight_g / torch.linalg.vector_norm(v, dim=1, keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class DINOHead(nn.Module):
    """`in_dim` -> hidden -> ... -> `bottleneck_dim` (GELU between), normalise, -> `out_dim` prototypes."""

    def __init__(self, in_dim: int, out_dim: int, nlayers: int = 3, hidden_dim: int = 2048, bottleneck_dim: int = 256) -> None:
        super().__init__()
        if nlayers < 1:
            raise ValueError("head nlayers must be >= 1")
        dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i in range(nlayers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < nlayers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        # The name `last_layer` is what the optimizer keys on to freeze it during the first epoch.
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        eps = 1e-6 if x.dtype in (torch.float16, torch.bfloat16) else 1e-12
        return self.last_layer(F.normalize(x, dim=-1, eps=eps))
