"""Small networks the embedder tests build, export and load (no downloads)."""
from __future__ import annotations

import torch
from torch import nn


class TinyDescriptor(nn.Module):
    """A copy-detection-like descriptor: conv trunk, average pool, projection (24-d)."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU())
        self.proj = nn.Linear(16, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.trunk(x).mean(dim=(2, 3)))
